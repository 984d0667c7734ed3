"""Runs: the stages that evaluate a suite over variants and write one report."""
