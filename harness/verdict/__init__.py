"""Promotion gates, the champion alias and the sign-off ledger."""
