"""Scorers and their registry: format, fields, tone, safety, the optional judge; one module per scorer."""
