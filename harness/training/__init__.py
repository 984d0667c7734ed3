"""Training configuration, data loading and hygiene, and the doctor."""
