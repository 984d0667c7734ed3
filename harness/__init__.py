"""Evaluation-first regression harness for LoRA/QLoRA fine-tunes."""

__version__ = "0.1.0"
REPORT_SCHEMA_VERSION = 1
