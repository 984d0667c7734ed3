"""The champion alias: which run is the current baseline, and moving it only when every gate passed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.errors import HarnessInputError, Problem
from harness.io import atomic_write_json, read_jsonl
from harness.verdict.gates import GatePolicy, evaluate_gates
from harness.verdict.ledger import run_report_path

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
        raise HarnessInputError(
            Problem(
                str(alias), "is not a champion alias file", "delete it and promote a run again (harness promote RUN)"
            )
        ) from None
    return str(run_id)


def load_run(reports_dir: Path, run_id: str) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """A pipeline run's folder, report and per-case rows; a broken cases.jsonl is an input error."""
    run_dir = run_dir_of(reports_dir, run_id)
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    if report.get("kind") not in ("pipeline", "compare"):
        raise HarnessInputError(
            Problem(
                str(run_dir / "report.json"),
                f"is a {report.get('kind')!r} report",
                "gates compare variants: pass a `harness pipeline` or `harness compare` run",
            )
        )
    problems: list[Problem] = []
    rows = [obj for _, obj in read_jsonl(run_dir / "cases.jsonl", problems)]
    if problems:
        raise HarnessInputError(problems)
    return run_dir, report, rows


def champion_variant(reports_dir: Path) -> str | None:
    """Which variant of the champion run was promoted (None for aliases written before variants had names)."""
    alias = reports_dir / ALIAS_FILE
    if not alias.is_file():
        return None
    try:
        value = json.loads(alias.read_text(encoding="utf-8")).get("variant")
    except (json.JSONDecodeError, AttributeError):
        return None
    return str(value) if value else None


def champion_rows(
    reports_dir: Path, exclude: str | None = None
) -> tuple[str | None, list[dict[str, Any]] | None, str | None]:
    """The champion's id, rows and promoted variant; none when there is no champion or it is the run being judged."""
    run_id = champion(reports_dir)
    if run_id is None or run_id == exclude:
        return None, None, None
    return run_id, load_run(reports_dir, run_id)[2], champion_variant(reports_dir)


def regate(reports_dir: Path, run_id: str, policy: GatePolicy) -> tuple[Path, dict[str, Any]]:
    """Apply a gate policy to an existing run (against the current champion); the report is not written."""
    run_dir, report, rows = load_run(reports_dir, run_id)
    champ_id, champ_rows, champ_variant = champion_rows(reports_dir, exclude=run_id)
    report["gates"] = evaluate_gates(policy, report, rows, champ_rows, champ_id, champ_variant)
    return run_dir, report


def promoted_variant(report: dict[str, Any], asked: str | None, where: str) -> str:
    """The variant that becomes the champion: the one asked for, else the run's only adapter."""
    order = report.get("variant_order") or ["base", "adapter", "merged"]
    kinds = {n: (report.get("variants") or {}).get(n, {}).get("kind", n) for n in order}
    if asked is not None:
        if asked not in order:
            raise HarnessInputError(
                Problem(f"--variant {asked}", f"is not a variant of {where}", f"use one of: {', '.join(order)}")
            )
        return asked
    adapters = [n for n in order if kinds[n] == "adapter"]
    if len(adapters) != 1:
        raise HarnessInputError(
            Problem(
                where,
                f"has {len(adapters)} adapter variants",
                f"say which one becomes the champion: --variant NAME ({', '.join(order)})",
            )
        )
    return adapters[0]


def promote(reports_dir: Path, run_id: str, variant: str | None = None) -> dict[str, Any]:
    """Move the alias to run_id (and one of its variants) only if its report has gates and every one passed."""
    run_dir = run_dir_of(reports_dir, run_id)
    report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
    gates = report.get("gates")
    if not gates:
        raise HarnessInputError(
            Problem(
                str(run_dir / "report.json"),
                "has no gate results",
                "run the pipeline with a gates.yaml next to the suite",
            )
        )
    if gates["verdict"] != "pass":
        bad = [c["id"] for c in gates["checks"] if c["verdict"] not in ("pass", "not_applicable")]
        raise HarnessInputError(
            Problem(
                f"run {run_id}",
                f"gates verdict is {gates['verdict']} ({', '.join(bad[:6])})",
                "only a run whose every gate passed can become the champion",
            )
        )
    previous = champion(reports_dir)
    name = promoted_variant(report, variant, f"run {run_id}")
    block = (report.get("variants") or {}).get(name, {})
    entry = {
        "run_id": run_id,
        "variant": name,
        "previous": previous,
        "suite": report["suite"],
        "adapter_sha256": block.get("adapter_sha256") or (report.get("adapter") or {}).get("sha256"),
    }
    atomic_write_json(reports_dir / ALIAS_FILE, entry)
    return entry
