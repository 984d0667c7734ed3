"""The champion alias: which run is the current baseline, and moving it only when every gate passed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessInputError, Problem
from harness.gates import GatePolicy, evaluate_gates
from harness.io import atomic_write_json, read_jsonl
from harness.ledger import run_report_path

ALIAS_FILE = "champion.json"


def run_dir_of(reports_dir: Path, run_id: str) -> Path:
    """The run folder, with the ledger's path checks (one place decides what a run id may be)."""
    return run_report_path(reports_dir, run_id).parent


def champion(reports_dir: Path) -> str | None:
    alias = reports_dir / ALIAS_FILE
    if not alias.is_file():
        return None
    try:
        run_id = json.loads(alias.read_text(encoding="utf-8"))["run_id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HarnessInputError(Problem(str(alias), "is not a champion alias file", "delete it and promote a run again (harness promote RUN)")) from None
    return str(run_id)


def load_run(reports_dir: Path, run_id: str) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """A pipeline run's folder, report and per-case rows; a broken cases.jsonl is an input error."""
    run_dir = run_dir_of(reports_dir, run_id)
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    if report.get("kind") != "pipeline":
        raise HarnessInputError(Problem(str(run_dir / "report.json"), f"is a {report.get('kind')!r} report", "gates compare variants: pass a `harness pipeline` run"))
    problems: list[Problem] = []
    rows = [obj for _, obj in read_jsonl(run_dir / "cases.jsonl", problems)]
    if problems:
        raise HarnessInputError(problems)
    return run_dir, report, rows


def champion_rows(reports_dir: Path, exclude: str | None = None) -> tuple[str | None, list[dict[str, Any]] | None]:
    """The champion's id and rows; none when there is no champion or it is the run being judged."""
    run_id = champion(reports_dir)
    if run_id is None or run_id == exclude:
        return None, None
    return run_id, load_run(reports_dir, run_id)[2]


def regate(reports_dir: Path, run_id: str, policy: GatePolicy) -> tuple[Path, dict[str, Any]]:
    """Apply a gate policy to an existing run (against the current champion); the report is not written."""
    run_dir, report, rows = load_run(reports_dir, run_id)
    champ_id, champ_rows = champion_rows(reports_dir, exclude=run_id)
    report["gates"] = evaluate_gates(policy, report, rows, champ_rows, champ_id)
    return run_dir, report


def promote(reports_dir: Path, run_id: str) -> dict[str, Any]:
    """Move the alias to run_id only if its report has gates and every one passed."""
    run_dir = run_dir_of(reports_dir, run_id)
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    gates = report.get("gates")
    if not gates:
        raise HarnessInputError(Problem(str(run_dir / "report.json"), "has no gate results", "run the pipeline with a gates.yaml next to the suite"))
    if gates["verdict"] != "pass":
        bad = [c["id"] for c in gates["checks"] if c["verdict"] != "pass"]
        raise HarnessInputError(Problem(f"run {run_id}", f"gates verdict is {gates['verdict']} ({', '.join(bad[:6])})", "only a run whose every gate passed can become the champion"))
    previous = champion(reports_dir)
    entry = {"run_id": run_id, "previous": previous, "suite": report["suite"], "adapter_sha256": (report.get("adapter") or {}).get("sha256")}
    atomic_write_json(reports_dir / ALIAS_FILE, entry)
    return entry
