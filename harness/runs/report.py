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
        f"weights `{report['model']['weights_sha256'][:12]}` · {report['generation']['device']} {report['generation']['precision']}",
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
    run_dir = reports_dir / report["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(run_dir / "cases.jsonl", records)
    atomic_write_text(run_dir / "summary.md", summary_markdown(report))
    atomic_write_json(run_dir / "report.json", report)
    return run_dir
