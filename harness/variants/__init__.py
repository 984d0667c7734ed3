"""Variants: what a run compares, their prompt formats, and the checks of derived variants."""
