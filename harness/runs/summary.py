"""summary.md: the report as a reviewer reads it, one column per variant."""

from __future__ import annotations

from typing import Any

from harness.variants.prompts import PromptFormat


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _moves(before: dict[str, float | None], after: dict[str, float | None]) -> tuple[list[str], list[str]]:
    """Headline metrics that rose and fell by at least half a point, as 'metric a -> b'."""
    up: list[str] = []
    down: list[str] = []
    for k, b in before.items():
        a = after.get(k)
        if a is None or b is None or abs(a - b) < 0.005:
            continue
        (up if a > b else down).append(f"{k} {_fmt(b)} -> {_fmt(a)}")
    return up, down


def decision(report: dict[str, Any]) -> list[str]:
    """The lines a reviewer reads first: the verdict, the checks that decided it, what moved, how to look closer."""
    g = report.get("gates")
    names = report["variant_order"]
    verdict = g["verdict"] if g else "not gated"
    lines = [f"## Decision: **{verdict.upper()}**", ""]
    if g:
        checks = g["checks"]
        applied = [c for c in checks if c["verdict"] != "not_applicable"]
        deciding = [c for c in applied if c["verdict"] == verdict] if verdict != "pass" else []
        if verdict == "pass":
            lines.append(f"Every check that applies passed ({len(applied)} of {len(checks)}; the rest do not apply).")
        else:
            lines.append(f"Decided by {len(deciding)} {verdict} check(s) of {len(applied)} that apply:")
            lines += [f"- `{c['id']}`: {c['explanation']}" for c in deciding[:8]]
            if len(deciding) > 8:
                lines.append(f"- … and {len(deciding) - 8} more in the Gates table below")
    errors = [f for f in report.get("findings", []) if f["level"] == "error"]
    lines += [f"- finding `{f['code']}` ({f.get('variant', 'run')}): {f['message']}" for f in errors]
    h = report["headline"]
    base = next((n for n in names if report["variants"][n].get("kind") == "base"), None)
    lines.append("")
    for n in names:
        if n == base or base is None:
            continue
        up, down = _moves(h[base], h[n])
        lines.append(
            f"- {n} vs {base}: improved {', '.join(up) or 'nothing'}; regressed {', '.join(down) or 'nothing'}"
        )
    champ = [c for c in (g or {}).get("checks", []) if c.get("baseline") == "champion" and c.get("n")]
    for c in champ:
        lines.append(
            f"- {c['id']}: {_fmt(c.get('value'))} vs champion {g['champion']} {_fmt(c.get('baseline_value'))} "
            f"({c['verdict']})"
        )
    if g and not g.get("champion"):
        lines.append("- no champion yet: after `harness promote`, the next candidate is also compared with this one")
    lines += ["", f"Open this run in the app: `make app`, then http://localhost:8501/?run={report['run_id']}", ""]
    return lines


def summary(report: dict[str, Any]) -> str:
    """summary.md: one column per variant, a parity line per derived variant, the gates and the findings."""
    names = report["variant_order"]
    h = report["headline"]
    kinds = report["variants"]
    lines = [
        f"# {report['suite']['name']} v{report['suite']['version']}: " + " vs ".join(names),
        "",
        *decision(report),
        f"run `{report['run_id']}` · {report['suite']['n_cases']} cases · base `{report['model']['spec']}`"
        + (f" (weights `{report['model']['weights_sha256'][:12]}`)" if report["model"].get("weights_sha256") else ""),
        "",
        "| variant | kind | derived from | prompt format |",
        "|---|---|---|---|",
    ]
    for n in names:
        v = kinds[n]
        fmt = PromptFormat(**v["prompt_format"]).describe() if v.get("prompt_format") else "chat"
        kind = v.get("kind") + (f" ({v['lora_method']['label']})" if v.get("lora_method") else "")
        lines.append(f"| {n} | {kind} | {v.get('derived_from') or ''} | {fmt} |")
    lines += ["", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in h[names[0]]:
        lines.append(f"| {k} | " + " | ".join(_fmt(h[n].get(k)) for n in names) + " |")
    for n, p in report.get("relations", {}).items():
        lines += ["", f"Parity {n} vs {p['source']}: **{p['verdict']}** ({p['explanation']}). {p['merge']}."]
        lines += [f"- {f['level']} {f['code']}: {f['message']}" for f in p.get("diagnosis", []) if f["level"] != "info"]
        lines += [f"- {f['message']}" for f in p.get("diagnosis", []) if f["level"] == "info"]
    lines.append("")
    for n in names:
        f = report["variants"][n]["metrics"]["overall"]["failures"]
        lines.append(f"- {n} format failures: " + ", ".join(f"{k} {c}" for k, c in f.items()))
    ret = report.get("retention")
    if ret:
        lines += [
            "",
            "## Capability retention (lm-eval)",
            "",
            "| task | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        first = next(iter(ret["variants"].values()), {})
        for task in first:
            lines.append(
                f"| {task} | "
                + " | ".join(_fmt(ret["variants"].get(n, {}).get(task, {}).get("value")) for n in names)
                + " |"
            )
    g = report.get("gates")
    if g:
        lines += [
            "",
            f"## Gates: **{g['verdict']}**",
            "",
            "| check | verdict | value | interval | explanation |",
            "|---|---|---|---|---|",
        ]
        for c in g["checks"]:
            ci = c.get("delta_ci95") or c.get("ci95")
            val = c.get("delta") if c.get("delta") is not None else c.get("value")
            lines.append(
                f"| {c['id']} | {c['verdict']} | {'' if val is None else f'{val:.3f}'} | "
                f"{'' if not ci else f'[{ci[0]:.3f}, {ci[1]:.3f}]'} | {c['explanation']} |"
            )
        lines += [f"- {n}" for n in g.get("notes", [])]
    if report["findings"]:
        lines += ["", "## Findings", ""] + [
            f"- **{f['level']}** {f['code']}" + (f" ({f['variant']})" if f.get("variant") else "") + f": {f['message']}"
            for f in report["findings"]
        ]
    tr = report.get("training") or {}
    if tr:
        lines += [
            "",
            (
                f"Training: {tr.get('steps')} steps, {tr.get('tokens_per_s')} tokens/s, "
                f"precision {tr.get('precision')}, train loss {tr.get('train_loss')}"
            ),
        ]
    t = {n: report["variants"][n]["timings"] for n in names}
    worker = report["timings"].get("base_worker") or {}
    lines += [
        "",
        f"Evaluation: {report['timings']['total_s']} s in all; generation seconds: "
        + ", ".join(
            f"{n} {t[n].get('generate_s')}" + (f" (+ replay {t[n]['replay_s']})" if t[n].get("replay_s") else "")
            for n in names
        )
        + f". Base: {worker.get('reason', 'decoded in this process')}.",
        "",
    ]
    return "\n".join(lines)
