"""Report files: report.json (versioned), cases.jsonl (one record per case) and summary.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.io import atomic_write_json, atomic_write_jsonl, atomic_write_text


def _pct(block: dict[str, Any]) -> str:
    if block.get("value") is None:
        return "n/a (0 scored)"
    lo, hi = block["ci95"]
    return f"{100 * block['value']:.1f}% ({block['passed']}/{block['n']}; 95% CI {100 * lo:.1f}-{100 * hi:.1f})"


def summary_markdown(report: dict[str, Any]) -> str:
    m = report["metrics"]["overall"]
    lines = [
        f"# {report['suite']['name']} v{report['suite']['version']} on {report['model']['spec']}",
        "",
        f"run `{report['run_id']}` · {report['created_at']} · {report['suite']['n_cases']} cases · "
        f"weights `{report['model']['weights_sha256'][:12]}` · "
        f"{report['generation']['device']} {report['generation']['precision']}",
        "",
        "| metric | value |",
        "|---|---|",
        f"| format (strict) | {_pct(m['format_strict'])} |",
        f"| format (lenient) | {_pct(m['format_lenient'])} |",
    ]
    for label, f in m["fields"].items():
        macro = "n/a" if f["macro_f1"] is None else f"{f['macro_f1']:.3f}"
        lines.append(f"| {label} accuracy | {_pct(f['accuracy'])} |")
        lines.append(f"| {label} macro-F1 | {macro} |")
    lines += ["", "Format failures (strict): " + ", ".join(f"{k} {v}" for k, v in m["failures"].items()), ""]
    lines += ["| slice | n | strict | lenient |", "|---|---|---|---|"]
    for name, s in report["metrics"]["slices"].items():
        lines.append(f"| {name} | {s['n_cases']} | {_pct(s['format_strict'])} | {_pct(s['format_lenient'])} |")
    t = report["timings"]
    lines += [
        "",
        f"Generation: {t['generate_s']} s, {t['cases_per_s']} cases/s, {t['generated_tokens_per_s']} tokens/s.",
        "",
    ]
    return "\n".join(lines)


def write_report(reports_dir: Path, report: dict[str, Any], records: list[dict[str, Any]]) -> Path:
    """Write the run folder; cases first and report.json last, so a complete report.json means a complete run."""
    run_dir = new_run_dir(reports_dir, report["run_id"])
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(run_dir / "cases.jsonl", records)
    atomic_write_text(run_dir / "summary.md", summary_markdown(report))
    atomic_write_json(run_dir / "report.json", report)
    return run_dir


RUN_FILES = ("report.json", "cases.jsonl", "summary.md")


def check_reports_dir(reports_dir: Path) -> None:
    """--reports-dir must be a folder (or not exist yet); a file there is an input error, never a traceback."""
    from harness.errors import HarnessInputError, Problem
    from harness.io import blocking_file

    blocked = blocking_file(reports_dir)
    if blocked is not None:
        raise HarnessInputError(
            Problem(
                f"--reports-dir {reports_dir}",
                f"{blocked} is a file, not a folder",
                "pass a folder for --reports-dir (default: reports)",
            )
        )


def new_run_dir(reports_dir: Path, run_id: str) -> Path:
    """The folder a new run writes: the run id is one safe path component, and an existing run is never replaced.

    The one place eval, pipeline and compare check a --run-id (gate and promote read runs through the same
    path checks, harness.verdict.ledger.resolve_run_dir). A folder left by a killed run (no report files yet)
    may be reused, so that a rerun resumes from the result cache.
    """
    from harness.errors import HarnessInputError, Problem
    from harness.verdict.ledger import resolve_run_dir

    check_reports_dir(reports_dir)
    if isinstance(run_id, str) and run_id.strip() != run_id:
        raise HarnessInputError(
            Problem(
                f"--run-id {run_id!r}",
                "starts or ends with white space",
                "pass a plain folder name, e.g. --run-id my-run-1",
            )
        )
    try:
        run_dir = resolve_run_dir(reports_dir, run_id)
    except HarnessInputError as exc:
        p = exc.problems[0]
        raise HarnessInputError(
            Problem(f"--run-id {run_id!r}", p.what if isinstance(p, Problem) else str(p), "pass a plain folder name")
        ) from None
    if run_dir.exists() and not run_dir.is_dir():
        raise HarnessInputError(
            Problem(f"--run-id {run_id!r}", f"{run_dir} exists and is a file", "pick another --run-id")
        )
    written = [f for f in RUN_FILES if (run_dir / f).exists()]
    if written:
        raise HarnessInputError(
            Problem(
                f"--run-id {run_id!r}",
                f"{run_dir} already holds a report of a run ({', '.join(written)}); a run folder is never replaced",
                "pick another --run-id, or leave it out for a fresh one",
            )
        )
    return run_dir
