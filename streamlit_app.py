"""Report viewer: a thin, cached, read-only view over the run folders in the reports directory.

    .venv/bin/streamlit run streamlit_app.py        # http://localhost:8501, bound to 127.0.0.1

Every number comes from the report files; nothing is scored here. The one write is a sign-off, made
through harness.verdict.signoff, the same code the CLI uses: signed with the key file named in the form
(default $HARNESS_SIGNING_KEY), checked against $HARNESS_ALLOWED_SIGNERS (default golden/allowed_signers).
HARNESS_REPORTS_DIR points the app at another reports folder (default: ./reports).

A run compares any number of named variants, laid out in the report's `variant_order`; a report written
before variants had names shows the base, adapter and merged it holds, its merge parity as merged vs adapter.
"""

from __future__ import annotations

import difflib
import html
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitAPIException

from harness import REPORT_SCHEMA_VERSION
from harness.errors import HarnessInputError, Problem
from harness.io import read_jsonl, sha256_file
from harness.verdict.checklist import Item, build_checklist
from harness.verdict.gates import SignoffPolicy
from harness.verdict.ledger import (
    DECISIONS,
    HEAD_FILE,
    LEDGER_FILE,
    entry_lines,
    resolve_run_dir,
    run_report_path,
)
from harness.verdict.signing import SIGNING_KEY_ENV, allowed_signers_path, load_signing_key
from harness.verdict.signoff import SETTING, Audit, PolicySource, audit_ledger, policy_for, sign_off

REPORTS_ENV = "HARNESS_REPORTS_DIR"
REPORT_KINDS = ("pipeline", "compare")
LEGACY_VARIANTS = ("base", "adapter", "merged")  # what a report without variant_order compares, in this order
# Altair's tableau20 with its grey moved first: the first variant (usually the base) stays grey and the older
# three-variant reports keep their grey/blue/orange; a run with more than 20 variants reuses colours.
PALETTE = (
    "#7f7f7f",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#c7c7c7",
    "#dbdb8d",
    "#9edae5",
)
SIDE_BY_SIDE = 3  # a case shows up to this many variants' outputs at once
VARIANT_COLUMNS = ("variant", "kind", "derived from", "prompt format", "sources (sha256)", "tokenizer", "paths")
VERDICT_COLOR = {"pass": "green", "fail": "red", "inconclusive": "orange", "blocked": "red", "not_applicable": "gray"}
ABSENT = "not in this report"
REGENERATE = (
    f"regenerate it with `harness pipeline` or `harness compare` (this app reads their reports, "
    f"schema version {REPORT_SCHEMA_VERSION})"
)
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|$<>~:])")
REWRITE_BELOW = 0.25
_WORD = re.compile(r"\s+|\w+|[^\w\s]")
_INS = "background:#c8f0c8;text-decoration:none"
_DEL = "background:#f8c8c8;text-decoration:line-through"
_BOX = (
    "white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:0.85rem;line-height:1.4;"
    "border:1px solid #ddd;border-radius:4px;padding:6px"
)


class SectionError(Exception):
    """An optional section of a report exists but has the wrong shape."""


# ---------------------------------------------------------------- reading (cached on path + mtime)


def reports_root() -> Path:
    return Path(os.environ.get(REPORTS_ENV) or "reports").expanduser().resolve()


def _stat_key(path: Path) -> tuple[str, int, int]:
    """Cache key for a file: an edited or replaced file gets a new mtime and so a fresh read."""
    info = path.stat()
    return str(path), info.st_mtime_ns, info.st_size


@st.cache_data(show_spinner=False, max_entries=256)
def _read_json(path: str, mtime_ns: int, size: int) -> tuple[Any, str]:
    """(parsed JSON, "") or (None, why it cannot be read); a broken file is cached like a good one."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8")), ""
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return None, f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"


@st.cache_data(show_spinner=False, max_entries=32)
def _read_cases(path: str, mtime_ns: int, size: int) -> tuple[list[dict[str, Any]], list[str]]:
    problems: list[Problem] = []
    rows = [obj for _, obj in read_jsonl(Path(path), problems)]
    return rows, [str(p) for p in problems]


@st.cache_data(show_spinner=False, max_entries=256)
def _sha256(path: str, mtime_ns: int, size: int) -> str:
    return sha256_file(Path(path))


@st.cache_data(show_spinner=False, max_entries=8)
def _audit(root: str, signers: str, fingerprint: tuple[tuple[str, int, int], ...]) -> tuple[Audit | None, str]:
    """The ledger's chain, reports and signatures checked; (None, why) when the ledger files cannot be read."""
    try:
        return audit_ledger(Path(root), Path(signers)), ""
    except HarnessInputError as exc:
        return None, exc.render()


def _dig(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    created_at: str
    verdict: str | None
    readable: bool


def list_runs(root: Path) -> list[RunInfo]:
    """Real run folders directly inside root that hold a report.json, newest first (unreadable ones last)."""
    runs: list[RunInfo] = []
    for child in root.iterdir():
        if child.name.startswith(".") or not child.is_dir():
            continue
        try:
            path = run_report_path(root, child.name)
            obj, why = _read_json(*_stat_key(path))
        except (HarnessInputError, OSError):
            continue
        created = obj.get("created_at") if isinstance(obj, dict) and isinstance(obj.get("created_at"), str) else ""
        verdict = _dig(obj, "gates", "verdict")
        runs.append(RunInfo(child.name, created, verdict if isinstance(verdict, str) else None, not why))
    return sorted(runs, key=lambda r: (r.created_at, r.run_id), reverse=True)


def report_problems(report: Any, path: Path) -> list[Problem]:
    """Why this app cannot show a report.json; an empty list means it can."""
    where = str(path)
    if not isinstance(report, dict):
        return [Problem(where, f"is a JSON {type(report).__name__}, not a report object", REGENERATE)]
    problems: list[Problem] = []
    if report.get("kind") not in REPORT_KINDS:
        problems.append(
            Problem(
                f"{where}: kind",
                f"is {report.get('kind')!r}, not 'pipeline' or 'compare': this view compares variants",
                "open a run written by `harness pipeline` or `harness compare`; "
                "an eval-only run is summarised in its summary.md",
            )
        )
    if report.get("schema_version") != REPORT_SCHEMA_VERSION:
        problems.append(
            Problem(
                f"{where}: schema_version",
                f"is {report.get('schema_version')!r}, this app reads version {REPORT_SCHEMA_VERSION}",
                "open it with the harness version that wrote it, or regenerate it",
            )
        )
    for key, kind in (("run_id", str), ("created_at", str), ("suite", dict), ("variants", dict)):
        if key not in report:
            problems.append(Problem(f"{where}: {key}", "is missing", REGENERATE))
        elif not isinstance(report[key], kind):
            problems.append(
                Problem(f"{where}: {key}", f"is a {type(report[key]).__name__}, expected a {kind.__name__}", REGENERATE)
            )
    if isinstance(report.get("variants"), dict):
        problems += _order_problems(report, where)
    return problems


def _order_problems(report: dict[str, Any], where: str) -> list[Problem]:
    """Every variant the order names must be in `variants` with metrics: the whole view is laid out by it."""
    order = report.get("variant_order")
    if order is not None and not (isinstance(order, list) and all(isinstance(v, str) and v for v in order)):
        return [
            Problem(
                f"{where}: variant_order",
                f"is {type(order).__name__} {json.dumps(order)[:80]}, expected a list of variant names",
                REGENERATE,
            )
        ]
    if order is not None and len(set(order)) < len(order):
        dupes = sorted(v for v, n in Counter(order).items() if n > 1)
        return [Problem(f"{where}: variant_order", f"names {', '.join(map(repr, dupes))} more than once", REGENERATE)]
    names = variant_order(report)
    if not names:
        what = (
            "is empty" if order is not None else f"is missing and variants holds none of {', '.join(LEGACY_VARIANTS)}"
        )
        return [Problem(f"{where}: variant_order", what, REGENERATE)]
    problems: list[Problem] = []
    for v in names:
        if v not in report["variants"]:
            problems.append(
                Problem(f"{where}: variant_order", f"names variant {v!r}, which is not in variants", REGENERATE)
            )
        elif not isinstance(_dig(report, "variants", v, "metrics", "overall"), dict):
            problems.append(Problem(f"{where}: variants.{v}.metrics.overall", "is missing", REGENERATE))
    return problems


def variant_order(report: dict[str, Any]) -> list[str]:
    """The run's variants in display order; a report from before variant_order has the fixed three it holds."""
    order = report.get("variant_order")
    if isinstance(order, list):
        return [v for v in order if isinstance(v, str)]
    variants = report.get("variants")
    return [v for v in LEGACY_VARIANTS if isinstance(variants, dict) and v in variants]


def open_run(root: Path, run_id: str) -> tuple[dict[str, Any], Path]:
    """The validated report of one run; HarnessInputError says which file and what is wrong."""
    path = run_report_path(root, run_id)
    report, why = _read_json(*_stat_key(path))
    if why:
        raise HarnessInputError(Problem(str(path), why, REGENERATE))
    problems = report_problems(report, path)
    if problems:
        raise HarnessInputError(problems)
    return report, path


def load_cases(run_dir: Path) -> tuple[list[dict[str, Any]] | None, list[str]]:
    path = run_dir / "cases.jsonl"
    if not path.is_file() or path.resolve().parent != run_dir:
        return None, []
    rows, problems = _read_cases(*_stat_key(path))
    good = [r for r in rows if isinstance(r.get("id"), str) and isinstance(r.get("variants"), dict)]
    if len(good) < len(rows):
        lacking = len(rows) - len(good)
        problems = problems + [f"{path}: {lacking} row(s) lack an id or variants and are not shown (fix: {REGENERATE})"]
    return good, problems


def rows_lacking(rows: list[dict[str, Any]], order: list[str]) -> dict[str, list[str]]:
    """Variant -> ids of the case rows without it: every row should carry every variant of the order."""
    out: dict[str, list[str]] = {}
    for v in order:
        ids = [r["id"] for r in rows if not isinstance(r["variants"].get(v), dict)]
        if ids:
            out[v] = ids
    return out


# ---------------------------------------------------------------- pure helpers (tested without a browser)


def md(text: Any) -> str:
    """Report text shown as literal markdown: no emphasis, links, LaTeX or Streamlit directives."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def code(text: Any) -> str:
    """Report text as inline code; backticks inside would end the span early."""
    return "`" + str(text).replace("`", "'") + "`"


def badge(verdict: Any) -> str:
    color = VERDICT_COLOR.get(str(verdict), "gray")
    return f":{color}-badge[{md(str(verdict).upper())}]"


def pct(value: Any) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{100 * value:.1f}%"


def interval(ci: Any, points: bool = False) -> str:
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)):
        return ""
    if points:
        return f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}] pp"
    return f"[{100 * ci[0]:.1f}%, {100 * ci[1]:.1f}%]"


def human_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def diff_html(before: str, after: str) -> str:
    """Word-level diff as HTML: <del> what `before` had, <ins> what `after` has; all model text escaped.

    When the two share almost no words an interleaved diff is unreadable noise, so the new text is
    shown whole, marked as a rewrite.
    """
    a, b = _WORD.findall(before), _WORD.findall(after)
    words_a, words_b = [t for t in a if t[0].isalnum() or t[0] == "_"], [t for t in b if t[0].isalnum() or t[0] == "_"]
    shared = difflib.SequenceMatcher(None, words_a, words_b, autojunk=False).ratio()
    if words_a and words_b and shared < REWRITE_BELOW:
        note = f'<div style="font-size:0.8rem;color:#666">rewritten: {shared:.0%} of words shared</div>'
        return f'{note}<div style="{_BOX}"><ins style="{_INS}">{html.escape(after)}</ins></div>'
    parts: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(html.escape("".join(b[j1:j2])))
            continue
        if i2 > i1:
            parts.append(f'<del style="{_DEL}">{html.escape("".join(a[i1:i2]))}</del>')
        if j2 > j1:
            parts.append(f'<ins style="{_INS}">{html.escape("".join(b[j1:j2]))}</ins>')
    return f'<div style="{_BOX}">{"".join(parts) or "<em>(empty output)</em>"}</div>'


def plain_html(text: str) -> str:
    return f'<div style="{_BOX}">{html.escape(text) or "<em>(empty output)</em>"}</div>'


def rates_of(block: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every pass-rate in a metrics block; falls back to the format and field blocks of older reports."""
    if isinstance(block.get("scores"), dict):
        return {k: v for k, v in block["scores"].items() if isinstance(v, dict)}
    out = {k: block[k] for k in ("format_strict", "format_lenient") if isinstance(block.get(k), dict)}
    for label, f in (block.get("fields") or {}).items():
        if isinstance(_dig(f, "accuracy"), dict):
            out[f"field:{label}"] = f["accuracy"]
    return out


def palette(names: list[str]) -> list[str]:
    """One colour per variant, by its place in the order, so a variant keeps its colour in every chart."""
    return [PALETTE[i % len(PALETTE)] for i in range(len(names))]


def metric_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per variant x scope (overall or slice) x metric, with its value and 95% interval."""
    rows: list[dict[str, Any]] = []
    for v in variant_order(report):
        metrics = report["variants"][v]["metrics"]
        slices = [(k, b) for k, b in (metrics.get("slices") or {}).items() if isinstance(b, dict)]
        scopes = [("overall", metrics["overall"]), *slices]
        for scope, block in scopes:
            for metric, r in rates_of(block).items():
                ci = r.get("ci95") if isinstance(r.get("ci95"), (list, tuple)) and len(r["ci95"]) == 2 else [None, None]
                rows.append(
                    {
                        "variant": v,
                        "scope": scope,
                        "metric": metric,
                        "value": r.get("value"),
                        "lo": ci[0],
                        "hi": ci[1],
                        "n": r.get("n"),
                        "passed": r.get("passed"),
                        "unscored": r.get("unscored"),
                    }
                )
    return pd.DataFrame(rows, columns=["variant", "scope", "metric", "value", "lo", "hi", "n", "passed", "unscored"])


def interval_chart(df: pd.DataFrame, category: str, title: str, order: list[str]) -> alt.LayerChart:
    """Point per variant with a rule for its 95% interval, one row per category; variants in the run's order."""
    data = df.dropna(subset=["value"])
    domain = list(order) + sorted(set(data["variant"]) - set(order))
    enc = {
        "y": alt.Y(f"{category}:N", title=None, sort=None, axis=alt.Axis(labelLimit=260)),
        "yOffset": alt.YOffset("variant:N", sort=domain),
        "color": alt.Color(
            "variant:N",
            scale=alt.Scale(domain=domain, range=palette(domain)),
            legend=alt.Legend(orient="top", title=None),
        ),
    }
    x = alt.X("value:Q", title="value with 95% interval", scale=alt.Scale(domain=[0, 1]), axis=alt.Axis(format="%"))
    tooltip = [
        alt.Tooltip(f"{category}:N"),
        alt.Tooltip("variant:N"),
        alt.Tooltip("value:Q", format=".1%"),
        alt.Tooltip("lo:Q", format=".1%"),
        alt.Tooltip("hi:Q", format=".1%"),
        alt.Tooltip("n:Q"),
    ]
    rules = (
        alt.Chart(data)
        .mark_rule(strokeWidth=2)
        .encode(x=alt.X("lo:Q", scale=alt.Scale(domain=[0, 1])), x2="hi:Q", **enc)
    )
    points = alt.Chart(data).mark_point(filled=True, size=70).encode(x=x, tooltip=tooltip, **enc)
    return alt.layer(rules, points).properties(title=title, height=alt.Step(14))  # per variant: yOffset bands


def case_slices(row: dict[str, Any]) -> list[str]:
    """The slice names a case belongs to, spelled as in the report (tag=…, label=value)."""
    tags = [f"tag={t}" for t in row.get("tags") if isinstance(t, str)] if isinstance(row.get("tags"), list) else []
    expected = row.get("expected") if isinstance(row.get("expected"), dict) else {}
    return tags + [f"{k}={v}" for k, v in expected.items() if isinstance(v, (str, int, float, bool))]


def scores_of(row: dict[str, Any], variant: str) -> list[dict[str, Any]]:
    """The well-formed score entries of one variant of a case (a named scorer, passed true/false/null)."""
    scores = _dig(row, "variants", variant, "scores")
    if not isinstance(scores, list):
        return []
    return [
        s
        for s in scores
        if isinstance(s, dict) and isinstance(s.get("scorer"), str) and s.get("passed") in (True, False, None)
    ]


def passed_on(row: dict[str, Any], variant: str, scorer: str) -> bool | None:
    return next((s.get("passed") for s in scores_of(row, variant) if s["scorer"] == scorer), None)


def is_regression(row: dict[str, Any], scorer: str, order: list[str]) -> bool:
    """Passed on a variant earlier in the run's order and failed on a later one (unscored steps are skipped)."""
    seq = [passed_on(row, v, scorer) for v in order]
    return any(seq[i] is True and any(later is False for later in seq[i + 1 :]) for i in range(len(seq) - 1))


def failed_scorers(row: dict[str, Any], order: list[str]) -> set[str]:
    return {s["scorer"] for v in order for s in scores_of(row, v) if s.get("passed") is False}


def relations_of(report: dict[str, Any]) -> dict[str, Any]:
    """Derived variant -> its parity block with a "source"; an older report's one merge parity is merged vs adapter."""
    if report.get("relations") is not None:
        return {k: _need(v, dict, f"relations.{k}") for k, v in _need(report["relations"], dict, "relations").items()}
    if report.get("parity") is None:
        return {}
    return {"merged": {"source": "adapter", **_need(report["parity"], dict, "parity")}}


def safe_relations(report: dict[str, Any]) -> dict[str, Any]:
    """relations_of for the views that only annotate with it: a malformed block is reported in its own section."""
    try:
        return relations_of(report)
    except SectionError:
        return {}


def case_relations(row: dict[str, Any]) -> dict[str, Any]:
    """Derived variant -> this case's parity figures; older rows hold the merge parity as `parity`."""
    if isinstance(row.get("relations"), dict):
        return {k: v for k, v in row["relations"].items() if isinstance(v, dict)}
    return {"merged": row["parity"]} if isinstance(row.get("parity"), dict) else {}


def prompt_format_text(fmt: Any) -> str:
    """A prompt format in one line: its kind, then its settings; a template as written, newlines shown as \\n."""
    if not isinstance(fmt, dict):
        return "n/a" if fmt is None else str(fmt)

    def text(v: Any) -> str:
        return json.dumps(v, ensure_ascii=False)[1:-1] if isinstance(v, str) else json.dumps(v, ensure_ascii=False)

    rest = [text(v) if k == "template" else f"{k}={text(v)}" for k, v in fmt.items() if k != "kind"]
    return f"{fmt.get('kind', 'n/a')}: " + " · ".join(rest) if rest else str(fmt.get("kind", "n/a"))


def short_sha(value: Any) -> str:
    return str(value)[:12] if isinstance(value, str) and value else "n/a"


def _sources(var: dict[str, Any]) -> tuple[str, str]:
    """(role and short sha256 of each file the variant was built from, their paths); older reports: the hashes."""
    sources = var.get("sources")
    if not isinstance(sources, list):
        hashes = [
            f"{k.removesuffix('_sha256')} {short_sha(var[k])}"
            for k in ("weights_sha256", "adapter_sha256")
            if var.get(k)
        ]
        return " · ".join(hashes) or "n/a", str(var.get("path") or "")
    files = [s if isinstance(s, dict) else {"path": str(s)} for s in sources]
    shas = [f"{s.get('role') or Path(str(s.get('path', '?'))).name} {short_sha(s.get('sha256'))}" for s in files]
    return " · ".join(shas) or "n/a", " · ".join(str(s.get("path", "?")) for s in files)


def variant_table(report: dict[str, Any]) -> pd.DataFrame:
    """What each variant is: kind, what it claims to reproduce, prompt format, and the files it was built from.

    Older reports carry none of this: their variants' names are their kinds and merged derives from adapter.
    """
    derived = {name: rel.get("source") for name, rel in safe_relations(report).items()}
    rows = []
    for v in variant_order(report):
        var = report["variants"][v]
        var = var if isinstance(var, dict) else {}
        shas, paths = _sources(var)
        tok = var.get("tokenizer") if isinstance(var.get("tokenizer"), dict) else {}
        tok_text = " · ".join(
            f"{k.removesuffix('_sha256')} {short_sha(x) if k.endswith('sha256') else x}" for k, x in tok.items()
        )
        kind = var.get("kind", v if v in LEGACY_VARIANTS else None)
        derived_from = var.get("derived_from", derived.get(v))
        rows.append(
            {
                "variant": v,
                "kind": None if kind is None else str(kind),
                "derived from": None if derived_from is None else str(derived_from),
                "prompt format": prompt_format_text(var.get("prompt_format")),
                "sources (sha256)": shas,
                "tokenizer": tok_text or "n/a",
                "paths": paths,
            }
        )
    return pd.DataFrame(rows, columns=list(VARIANT_COLUMNS))


def refusal(root: Path, run_id: str) -> str:
    """Why a requested run id cannot be opened."""
    try:
        resolve_run_dir(root, run_id)
        run_report_path(root, run_id)
    except HarnessInputError as exc:
        return str(exc)
    return f"run {run_id!r}: has no readable report.json in {root} (fix: pick a run from the sidebar)"


@contextmanager
def section(name: str, path: Path) -> Iterator[None]:
    """Show a malformed optional section as an error naming the file and key, not as a traceback."""
    try:
        yield
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, SectionError, StreamlitAPIException) as exc:
        st.error(
            f"{md(path)}: the {code(name)} section does not have the expected shape "
            f"({md(type(exc).__name__)}: {md(exc)}). Fix: {REGENERATE}."
        )


def _need(obj: Any, kind: type, what: str) -> Any:
    if not isinstance(obj, kind):
        raise SectionError(f"{what} is a {type(obj).__name__}, expected a {kind.__name__}")
    return obj


# ---------------------------------------------------------------- rendering


def render_gates(report: dict[str, Any], path: Path) -> None:
    gates = report.get("gates")
    if gates is None:
        st.info(f"Gates: {ABSENT}.")
        return
    with section("gates", path):
        gates = _need(gates, dict, "gates")
        checks = _need(gates.get("checks", []), list, "gates.checks")
        counts = Counter(str(c.get("verdict")) for c in checks)
        st.markdown(f"### Gates {badge(gates['verdict'])}")
        st.caption(
            f"policy {md(gates.get('policy', 'n/a'))} · "
            f"sha256 {md(str(gates.get('policy_sha256', ''))[:12])} · "
            + " · ".join(f"{n} {md(k)}" for k, n in counts.most_common())
        )
        for note in gates.get("notes") or []:
            st.caption(md(note))
        order = {"fail": 0, "inconclusive": 1, "pass": 2, "not_applicable": 3}  # an unknown verdict sorts first
        for c in sorted(checks, key=lambda c: order.get(str(_dig(c, "verdict")), -1)):
            c = _need(c, dict, "a gate check")
            against = f" vs {md(c['baseline'])}" if c.get("baseline") else ""
            who = f"{md(c['variant'])}{against}" if c.get("variant") else against.strip()
            metric = f"{md(c['metric'])} " if c.get("metric") else ""
            facts = [
                " · ".join(x for x in (md(c.get("kind", "")), who) if x)
                + f" · {metric}{pct(c.get('value'))} {md(interval(c.get('ci95')))} · n {c.get('n', 'n/a')}"
            ]
            if isinstance(c.get("delta"), (int, float)):
                facts.append(f"Δ {100 * c['delta']:+.1f} pp {md(interval(c.get('delta_ci95'), points=True))}")
            if isinstance(c.get("p_value"), (int, float)):
                facts.append(f"p {c['p_value']:.3g} ({md(c.get('test', ''))})")
            if isinstance(c.get("threshold"), (int, float)):
                facts.append(f"threshold {pct(c['threshold'])}")
            if isinstance(c.get("margin"), (int, float)):
                facts.append(f"margin {100 * c['margin']:.1f} pp")
            st.markdown(
                f"{badge(c.get('verdict'))} **{md(c.get('id', '?'))}** {md(c.get('title', ''))}  \n" + " · ".join(facts)
            )
            if c.get("explanation"):
                st.caption(md(c["explanation"]))
            worst = c.get("worst_cases") or []
            if worst:
                with st.expander(f"worst cases for {c.get('id')} ({len(worst)})"):
                    st.dataframe(pd.DataFrame(worst), hide_index=True)


def render_hygiene(report: dict[str, Any], path: Path) -> None:
    h = report.get("hygiene")
    if h is None:
        st.info(f"Data hygiene: {ABSENT}.")
        return
    with section("hygiene", path):
        h = _need(h, dict, "hygiene")
        st.markdown(f"### Data hygiene {badge(h.get('verdict'))}")
        st.caption(f"{md(h.get('file', 'n/a'))} · {h.get('examples', 'n/a')} examples")
        dups, leak = h.get("duplicates") or {}, h.get("leakage") or {}
        cols = st.columns(6)
        figures = (
            ("problems", len(h.get("problems") or [])),
            ("PII hits", len(h.get("pii") or [])),
            ("exact duplicates", len(dups.get("exact") or [])),
            ("near duplicates", len(dups.get("near") or [])),
            ("leaked cases (exact)", len(leak.get("exact") or [])),
            ("leaked cases (near)", len(leak.get("near") or [])),
        )
        for col, (label, value) in zip(cols, figures):
            col.metric(label, value)
        lengths = h.get("token_lengths")
        if isinstance(lengths, dict):
            st.caption("token lengths: " + " · ".join(f"{md(k)} {v}" for k, v in lengths.items()))
        for title, rows in (
            ("Problems", h.get("problems")),
            ("PII in the training data (masked)", h.get("pii")),
            ("Golden cases leaked into training (exact)", leak.get("exact")),
            ("Golden cases leaked into training (near)", leak.get("near")),
        ):
            if rows:
                st.markdown(f"**{title}**")
                st.dataframe(pd.DataFrame(rows), hide_index=True)


def render_training(report: dict[str, Any], path: Path) -> None:
    tr = report.get("training")
    if not tr:
        st.info(f"Training metadata: {ABSENT}.")
        return
    with section("training", path):
        tr = _need(tr, dict, "training")
        st.markdown("### Training")
        cols = st.columns(5)
        cols[0].metric("tokens/s", tr.get("tokens_per_s", "n/a"))
        cols[1].metric("peak memory", human_bytes(tr.get("peak_memory_bytes")))
        cols[2].metric("steps", tr.get("steps", "n/a"))
        for col, key in ((cols[3], "train_loss"), (cols[4], "validation_loss")):
            value = tr.get(key)
            col.metric(key.replace("_", " "), f"{value:.4f}" if isinstance(value, (int, float)) else "n/a")
        precision = tr.get("precision")
        if isinstance(precision, dict):
            st.markdown("Precision that ran: " + " · ".join(f"{md(k)} {code(v)}" for k, v in precision.items()))
        curve = pd.DataFrame(tr.get("loss_curve") or [], columns=["step", "loss"]).dropna()
        if curve.empty:
            st.caption(f"loss curve: {ABSENT}")
        else:
            chart = (
                alt.Chart(curve)
                .mark_line(point=True)
                .encode(
                    x=alt.X("step:Q"),
                    y=alt.Y("loss:Q", scale=alt.Scale(zero=False)),
                    tooltip=["step", alt.Tooltip("loss:Q", format=".4f")],
                )
            )
            st.altair_chart(chart.properties(title="training loss", height=260), width="stretch")


def render_findings(report: dict[str, Any], path: Path) -> None:
    with section("findings", path):
        findings = _need(report.get("findings") or [], list, "findings")
        for f in findings:
            level = str(f.get("level"))
            where = f"{md(f['variant'])} · " if f.get("variant") else ""
            (st.error if level == "error" else st.warning)(f"{where}{md(f.get('code'))}: {md(f.get('message'))}")


def render_overview(report: dict[str, Any], path: Path) -> None:
    render_gates(report, path)
    render_findings(report, path)
    st.divider()
    render_hygiene(report, path)
    st.divider()
    render_training(report, path)


def render_variants(report: dict[str, Any], path: Path) -> None:
    order = variant_order(report)
    with section("variants", path):
        st.markdown(f"### {len(order)} variants")
        st.dataframe(variant_table(report), hide_index=True, key="variant_table")
        table = metric_table(report)
        if table.empty:
            st.warning(f"{md(path)}: no pass-rates in any variant's metrics (fix: {REGENERATE})")
            return
        overall = table[table["scope"] == "overall"]
        st.altair_chart(interval_chart(overall, "metric", "every metric, overall", order), width="stretch")
        metrics = list(dict.fromkeys(table["metric"]))
        default = metrics.index("format_strict") if "format_strict" in metrics else 0
        metric = st.selectbox("Metric per slice", metrics, index=default, key="slice_metric")
        per_slice = table[(table["metric"] == metric) & (table["scope"] != "overall")]
        if per_slice.empty:
            st.caption(f"slices: {ABSENT}")
        else:
            st.altair_chart(interval_chart(per_slice, "scope", f"{metric} per slice", order), width="stretch")
        with st.expander("all numbers"):
            wide = table.assign(
                cell=[
                    f"{pct(v)} {interval([lo, hi])} n={n}"
                    for v, lo, hi, n in zip(table["value"], table["lo"], table["hi"], table["n"])
                ]
            )
            cells = wide.pivot_table(
                index=["scope", "metric"], columns="variant", values="cell", aggfunc="first", sort=False
            )
            st.dataframe(cells[[v for v in order if v in cells.columns]])
    with section("headline", path):
        headline = report.get("headline")
        if isinstance(headline, dict) and headline:
            st.markdown("**Headline** (%)")
            names = [v for v in order if v in headline] + [v for v in headline if v not in order]
            st.dataframe(
                pd.DataFrame({v: _need(headline[v], dict, f"headline.{v}") for v in names}).map(
                    lambda x: None if x is None else round(100 * x, 1)
                )
            )
    with section("comparisons", path):
        comparisons = report.get("comparisons")
        if isinstance(comparisons, dict) and comparisons:
            st.markdown("**Headline deltas** (points)")
            st.dataframe(pd.DataFrame(comparisons).map(lambda d: None if d is None else round(100 * d, 1)))
    render_retention(report, path)


def render_retention(report: dict[str, Any], path: Path) -> None:
    st.markdown("### Retention (general skills)")
    retention = report.get("retention")
    if retention is None:
        st.info(f"Retention: {ABSENT}.")
        return
    with section("retention", path):
        rows = []
        for v, tasks in _need(_need(retention, dict, "retention").get("variants"), dict, "retention.variants").items():
            for task, r in _need(tasks, dict, f"retention.variants.{v}").items():
                ci = r.get("ci95") or [None, None]
                rows.append(
                    {
                        "variant": v,
                        "task": f"{task} ({r.get('metric', '')})",
                        "value": r.get("value"),
                        "lo": ci[0],
                        "hi": ci[1],
                        "n": r.get("n"),
                    }
                )
        df = pd.DataFrame(rows, columns=["variant", "task", "value", "lo", "hi", "n"])
        if df.empty:
            st.caption("no retention tasks were run")
        else:
            st.altair_chart(interval_chart(df, "task", "retention tasks", variant_order(report)), width="stretch")


def render_cases(report: dict[str, Any], path: Path) -> None:
    with section("cases.jsonl", path.parent / "cases.jsonl"):
        _render_cases(report, path)


def _render_cases(report: dict[str, Any], path: Path) -> None:
    rows, problems = load_cases(path.parent)
    if rows is None:
        st.info(f"Cases (cases.jsonl): {ABSENT}.")
        return
    for p in problems[:5]:
        st.warning(md(p))
    if not rows:
        st.warning(f"{md(path.parent / 'cases.jsonl')}: holds no cases")
        return
    order = variant_order(report)
    for v, ids in rows_lacking(rows, order).items():
        more = f" and {len(ids) - 5} more" if len(ids) > 5 else ""
        st.error(
            f"{md(path.parent / 'cases.jsonl')}: variant {code(v)}, named in report.json's variant order, "
            f"is missing from {len(ids)} of {len(rows)} case rows ({', '.join(md(i) for i in ids[:5])}{more}); "
            f"they show it as unscored. Fix: {REGENERATE}."
        )
    scorers = sorted({s["scorer"] for r in rows for v in order for s in scores_of(r, v)})
    slices = sorted({s for r in rows for s in case_slices(r)})
    c1, c2, c3, c4 = st.columns([1.2, 1, 1.3, 1.3])
    scorer = c1.selectbox(
        "Scorer",
        scorers or ["format_strict"],
        index=scorers.index("format_strict") if "format_strict" in scorers else 0,
        key="case_scorer",
    )
    regressions_only = c2.checkbox(
        "Regressions only",
        key="case_regressions",
        help=f"passed on a variant and failed on a later one in the order {' → '.join(order)}, for the chosen scorer",
    )
    chosen_slices = c3.multiselect("Slice / tag", slices, key="case_slices")
    chosen_failed = c4.multiselect("Failed scorer (any variant)", scorers, key="case_failed")
    shown = [
        r
        for r in rows
        if (not regressions_only or is_regression(r, scorer, order))
        and (not chosen_slices or set(chosen_slices) & set(case_slices(r)))
        and (not chosen_failed or set(chosen_failed) & failed_scorers(r, order))
    ]
    mark = {True: "✓", False: "✗", None: "–"}
    table = pd.DataFrame(
        [
            {
                "id": r["id"],
                "slices": ", ".join(case_slices(r)),
                **{v: mark[passed_on(r, v, scorer)] for v in order},
                "regression": is_regression(r, scorer, order),
                "failed scorers": ", ".join(sorted(failed_scorers(r, order))),
            }
            for r in shown
        ],
        columns=["id", "slices", *order, "regression", "failed scorers"],
    )
    st.caption(f"{len(shown)} of {len(rows)} cases · ✓/✗ = {md(scorer)} passed/failed on that variant, – = unscored")
    st.dataframe(table, hide_index=True, key="case_table")
    if not shown:
        st.info("No case matches these filters.")
        return
    case_id = st.selectbox("Case", [r["id"] for r in shown], key="case_pick")
    render_case(next(r for r in shown if r["id"] == case_id), path, order, safe_relations(report))


def compared_variants(order: list[str]) -> tuple[str, list[str]]:
    """The reference for the word diff (default the first variant) and the variants shown beside it.

    Up to SIDE_BY_SIDE variants are all shown; with more, the reader picks two or three of them.
    """
    c1, c2 = st.columns([1, 3])
    reference = c1.selectbox(
        "Diff against",
        order,
        index=0,
        key="case_reference",
        help="each other output is shown as its changes from this one",
    )
    if len(order) <= SIDE_BY_SIDE:
        return reference, list(order)
    picked = c2.multiselect(
        "Compare",
        order,
        default=order[:SIDE_BY_SIDE],
        max_selections=SIDE_BY_SIDE,
        key="case_compare",
        help=f"two or three of the {len(order)} variants, side by side",
    )
    return reference, [v for v in order if v in picked]


def render_case(row: dict[str, Any], path: Path, order: list[str], relations: dict[str, Any]) -> None:
    with section(f"cases.jsonl case {row.get('id')}", path.parent / "cases.jsonl"):
        messages = row.get("messages") or []
        prompt = next(
            (m.get("content", "") for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), ""
        )
        st.markdown(f"#### {md(row['id'])}")
        if prompt:
            st.html(f"<div><strong>Prompt</strong></div>{plain_html(str(prompt))}")
        left, right = st.columns(2)
        left.markdown("**Expected**")
        left.json(row.get("expected") or {}, expanded=True)
        right.markdown("**Reference**")
        right.json(row.get("reference") or {}, expanded=False)
        reference, shown = compared_variants(order)
        if not shown:
            st.info("Pick two or three variants to compare.")
            return
        outputs = {v: str(_dig(row, "variants", v, "output") or "") for v in order}
        for col, v in zip(st.columns(len(shown)), shown):
            with col:
                var = _dig(row, "variants", v)
                if not isinstance(var, dict):
                    st.markdown(f"**{md(v)}**")
                    st.caption(f"{md(v)}: not in this case row")
                    continue
                st.markdown(f"**{md(v)}** · " + ("reference" if v == reference else f"changes vs {md(reference)}"))
                st.html(plain_html(outputs[v]) if v == reference else diff_html(outputs[reference], outputs[v]))
                ext = var.get("extraction") if isinstance(var.get("extraction"), dict) else {}
                st.caption(
                    f"stop {md(var.get('stop_reason', 'n/a'))} · {var.get('new_tokens', 'n/a')} new tokens · "
                    f"JSON {'found' if ext.get('found') else 'not found'}"
                    f"{' (strict)' if ext.get('strict') else ''}"
                    + (f" · {md(ext.get('problem'))}" if ext.get("problem") else "")
                )
                for s in scores_of(row, v):
                    mark = {True: ":green[✓]", False: ":red[✗]"}.get(s.get("passed"), ":gray[–]")
                    st.markdown(f"{mark} **{md(s.get('scorer'))}** {md(s.get('explanation', ''))}")
        for name, figures in case_relations(row).items():
            source = _dig(relations, name, "source")
            against = f" vs {md(source)}" if isinstance(source, str) else ""
            with st.expander(f"parity on this case: {md(name)}{against}"):
                st.json(figures)


def _figure(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def render_flips(report: dict[str, Any], path: Path) -> None:
    st.markdown("### Flip matrix")
    flips = report.get("flips")
    if flips is None:
        st.info(f"Flips: {ABSENT}.")
    else:
        with section("flips", path):
            flips = _need(flips, dict, "flips")
            if not flips:
                st.caption("no comparisons in this report")
            else:
                _render_flips(flips)
    st.divider()
    render_relations(report, path)
    st.divider()
    st.markdown("### Safety findings")
    findings = report.get("safety_findings")
    if findings is None:
        st.info(f"Safety findings: {ABSENT}.")
    else:
        with section("safety_findings", path):
            findings = _need(findings, list, "safety_findings")
            if findings:
                st.dataframe(pd.DataFrame(findings), hide_index=True, key="safety_table")
            else:
                st.success("No safety findings on any variant.")


def _render_flips(flips: dict[str, Any]) -> None:
    """Every compared pair at a glance (fixed / broken per scorer), then one pair's counts and broken cases."""
    per_pair = {pair: _need(per, dict, f"flips.{pair}") for pair, per in flips.items()}
    scorers = list(dict.fromkeys(s for per in per_pair.values() for s in per))

    def cell(per: dict[str, Any], scorer: str) -> str:
        if scorer not in per:
            return ""
        return f"+{len(_dig(per, scorer, 'fixed') or [])} / −{len(_dig(per, scorer, 'broken') or [])}"

    rows = [{"comparison": pair, **{s: cell(per, s) for s in scorers}} for pair, per in per_pair.items()]
    matrix = pd.DataFrame(rows, columns=["comparison", *scorers])
    st.caption("every comparison in the report: +fixed / −broken cases per scorer")
    st.dataframe(matrix, hide_index=True, key="flip_matrix")
    pair = st.selectbox("Comparison", list(per_pair), key="flip_pair")
    per_scorer = per_pair[pair]
    before, after = pair.split("->", 1) if "->" in pair else ("before", "after")
    counts = pd.DataFrame(
        [
            {
                "scorer": s,
                "fixed": len(g.get("fixed") or []),
                "broken": len(g.get("broken") or []),
                "still passing": len(g.get("still_passing") or []),
                "still failing": len(g.get("still_failing") or []),
            }
            for s, g in per_scorer.items()
        ]
    )
    st.caption(
        f"fixed = failed on {md(before)}, passes on {md(after)}; broken = passed on {md(before)}, fails on {md(after)}"
    )
    st.dataframe(counts, hide_index=True, key="flip_table")
    broken = {s: g.get("broken") for s, g in per_scorer.items() if g.get("broken")}
    for s, ids in broken.items():
        st.markdown(f":red-badge[broken] **{md(s)}**: " + ", ".join(md(i) for i in ids))


def render_relations(report: dict[str, Any], path: Path) -> None:
    """Each derived variant against the variant it claims to reproduce: verdict, figures, the harness's diagnosis."""
    st.markdown("### Parity of derived variants")
    key = "relations" if report.get("relations") is not None else "parity"
    with section(key, path):
        relations = relations_of(report)
        order = variant_order(report)
        claimed = {v: _dig(report, "variants", v, "derived_from") for v in order}
        unmeasured = [v for v in order if isinstance(claimed[v], str) and v not in relations]
        if not relations and not unmeasured:
            st.info(f"Parity: {ABSENT}.")
            return
        for name, rel in relations.items():
            with section(f"{key}.{name}" if key == "relations" else key, path):  # one bad block hides only itself
                _render_relation(name, rel, claimed.get(name), name in order)
        for v in unmeasured:
            st.markdown(f"#### {md(v)} vs {md(claimed[v])}")
            st.warning(f"{md(v)} is derived from {md(claimed[v])}, but its parity is {ABSENT}.")


def _render_relation(name: str, rel: dict[str, Any], claimed: Any, in_order: bool) -> None:
    source = rel.get("source")
    st.markdown(f"#### {md(name)} vs {md(source if source else 'n/a')} {badge(rel.get('verdict'))}")
    if not in_order:
        st.warning(f"{md(name)} has a parity block but is not one of this run's variants.")
    if isinstance(claimed, str) and source != claimed:
        st.warning(f"{md(name)} is derived from {md(claimed)} but its parity was measured against {md(source)}.")
    st.markdown(md(rel.get("explanation", "")))
    if rel.get("merge"):
        st.caption(md(rel["merge"]))
    cols = st.columns(4)
    cols[0].metric("token agreement", _figure(rel.get("token_agreement"), ".4f"))
    cols[1].metric("mean KL", _figure(rel.get("mean_kl"), ".2e"))
    cols[2].metric("max |logit diff|", _figure(rel.get("max_abs_logit_diff"), ".3g"))
    cols[3].metric("identical outputs", f"{rel.get('identical_outputs', 'n/a')}/{rel.get('n_cases', 'n/a')}")
    show = {"error": st.error, "warning": st.warning}
    for d in _need(rel.get("diagnosis") or [], list, f"relations.{name}.diagnosis"):
        d = _need(d, dict, f"relations.{name}.diagnosis[]")
        show.get(str(d.get("level")), st.info)(f"{md(d.get('code'))}: {md(d.get('message'))}")
    if rel.get("worst_cases"):
        with st.expander(f"{md(name)}: cases with the largest divergence"):
            worst = _need(rel["worst_cases"], list, f"relations.{name}.worst_cases")
            st.dataframe(pd.DataFrame(worst), hide_index=True, key=f"worst_{name}")


def _ledger_fingerprint(root: Path, signers: Path) -> tuple[tuple[str, int, int], ...]:
    files = [root / LEDGER_FILE, root / HEAD_FILE, signers, *sorted(root.glob("*/report.json"))]
    return tuple(_stat_key(f) for f in files if f.is_file())


CHECKLIST_COLUMNS = ("item", "status", "detail", "evidence")


def _policy(report: dict[str, Any]) -> tuple[PolicySource, str]:
    """The run's sign-off policy; a broken gate policy file is shown, and the strict defaults apply."""
    try:
        return policy_for(report), ""
    except HarnessInputError as exc:
        return PolicySource(SignoffPolicy(), "defaults (the suite's gates.yaml cannot be read)"), exc.render()


def render_checklist(items: list[Item]) -> None:
    st.markdown("### Release checklist")
    counts = Counter(i.status for i in items)
    st.caption(
        " · ".join(f"{n} {md(k)}" for k, n in counts.most_common())
        + " · evidence paths are relative to where the app runs"
    )
    st.dataframe(
        pd.DataFrame(
            [
                {
                    "item": i.title,
                    "status": i.status,
                    "detail": i.detail,
                    "evidence": ", ".join(str(e) for e in i.evidence),
                }
                for i in items
            ],
            columns=list(CHECKLIST_COLUMNS),
        ),
        hide_index=True,
        key="checklist_table",
    )


def _signoff_form(root: Path, run_id: str, source: PolicySource, signers: Path) -> None:
    policy = source.policy
    with st.form("signoff", clear_on_submit=True):
        by = st.text_input("Your principal (as in the allowed-signers file)", key="signoff_by")
        decision = st.radio("Decision", DECISIONS, index=None, horizontal=True, key="signoff_decision")
        note = st.text_area("Note", key="signoff_note")
        key_path = st.text_input(
            "Your ed25519 private key file",
            value=os.environ.get(SIGNING_KEY_ENV, ""),
            key="signoff_key",
            help=f"an OpenSSH key (ssh-keygen -t ed25519); read on this machine, never uploaded; "
            f"default ${SIGNING_KEY_ENV}",
        )
        unsigned = (
            st.checkbox("Record unsigned (this run's policy allows it)", key="signoff_unsigned")
            if not policy.require_signature
            else False
        )
        st.markdown("What you attest (an approval needs each; a reject none)")
        attested = {name: st.text_input(name, key=f"attest_{name}") for name in policy.attestations}
        submitted = st.form_submit_button("Record sign-off")
    if not submitted:
        return
    problems: list[Problem | str] = []
    key = None
    if key_path.strip() and not unsigned:
        try:
            key = load_signing_key(Path(key_path.strip()))
        except HarnessInputError as exc:
            problems.extend(exc.problems)
    try:
        if problems:
            raise HarnessInputError(problems)
        entry = sign_off(
            root,
            run_id,
            by,
            str(decision) if decision else "",
            note,
            key,
            signers,
            {k: v for k, v in attested.items() if v.strip()},
            unsigned=bool(unsigned),
        )
    except HarnessInputError as exc:
        st.error("Sign-off not recorded:  \n" + "  \n".join(f"- {md(p)}" for p in exc.problems))
    else:
        how = f"signed with {md(entry['key_fingerprint'])}" if entry.get("signature") else "unsigned"
        st.success(f"Recorded sign-off #{entry['seq']}: {md(entry['by'])} {entry['decision']}d this report, {how}.")


def render_signoff(report: dict[str, Any], path: Path, root: Path, run_id: str) -> None:
    verdict = _dig(report, "gates", "verdict")
    verdict = verdict if isinstance(verdict, str) else None
    sha = _sha256(*_stat_key(path))
    signers = allowed_signers_path()
    source, policy_error = _policy(report)
    st.markdown(
        f"Signing {code(run_id)} · report sha256 {code(sha[:12])} · gates {badge(verdict) if verdict else md(ABSENT)}"
    )
    st.caption(
        f"sign-off policy: {md(source.where)} · signature "
        + ("required" if source.policy.require_signature else f"optional ({code(SETTING)})")
        + f" · allowed signers {md(signers)}"
    )
    if policy_error:
        st.error(f"The suite's gate policy cannot be read, so the strict defaults apply: {md(policy_error)}")
    render_checklist(build_checklist(root, run_id, report, None, source.policy.attestations))
    if verdict in {"fail", "inconclusive"}:
        st.warning(f"The gates say {str(verdict).upper()}: an approval overrides them, so say why in the note.")
    _signoff_form(root, run_id, source, signers)

    st.markdown("### Ledger")
    audit, unreadable = _audit(str(root), str(signers), _ledger_fingerprint(root, signers))
    if audit is None:
        st.error(f"The ledger cannot be read: {md(unreadable)}")
        return
    if audit.signers_problem:
        st.warning(f"Signatures not checked: {md(audit.signers_problem)}")
    if audit.problems:
        st.error("The ledger does not verify:  \n" + "  \n".join(f"- {md(p)}" for p in audit.problems))
    else:
        st.success(f"Ledger intact ({len(audit.entries)} entries).")
    status = {e.line: e for e in audit.entries}
    try:
        history = [(lineno, e) for lineno, e in entry_lines(root) if e.get("run_id") == run_id]
    except HarnessInputError as exc:
        st.error(f"The ledger cannot be read: {md(exc.render())}")
        return
    if not history:
        st.caption("No sign-off for this run yet.")
        return
    rows = []
    for lineno, e in history:
        s = status.get(lineno)
        rows.append(
            {
                "seq": e.get("seq"),
                "at": e.get("at"),
                "by": e.get("by"),
                "decision": e.get("decision"),
                "signature": s.status if s is not None else "unknown",
                "signer key": e.get("key_fingerprint") or "",
                "gates": e.get("verdict"),
                "note": e.get("note"),
                "attested": ", ".join(sorted(e.get("attestations") or {}))
                if isinstance(e.get("attestations"), dict)
                else "",
                "report": str(e.get("report_sha256"))[:12],
                "covers this report": e.get("report_sha256") == sha,
            }
        )
    st.dataframe(pd.DataFrame(rows), hide_index=True, key="ledger_table")


def main() -> None:
    st.set_page_config(page_title="LoRA harness reports", layout="wide")
    root = reports_root()
    st.sidebar.title("Runs")
    st.sidebar.caption(f"reports folder {md(root)} (set {REPORTS_ENV} to change)")
    if not root.is_dir():
        st.error(
            f"{md(root)}: no such reports folder. Fix: run `make run` to create a run, "
            f"or set {REPORTS_ENV} to the folder that holds your run folders."
        )
        st.stop()
    runs = list_runs(root)
    if not runs:
        st.info(f"No runs in {md(root)} yet: run `make run` (or `harness pipeline …`) to create one.")
        st.stop()
    ids = [r.run_id for r in runs]
    labels = {
        r.run_id: f"{r.run_id} · "
        + (r.verdict.upper() if r.verdict else "unreadable" if not r.readable else "no gates")
        for r in runs
    }
    requested = st.query_params.get("run")
    refused = requested is not None and requested not in ids
    if refused:
        del st.query_params["run"]
    run_id = st.sidebar.selectbox(
        "Run (newest first)",
        ids,
        index=ids.index(requested) if requested in ids else 0,
        format_func=labels.__getitem__,
        key="run",
    )
    if refused:
        st.error(f"Refused to open the requested run: {md(refusal(root, str(requested)))}")
        st.stop()
    st.query_params["run"] = run_id
    try:
        report, path = open_run(root, run_id)
    except HarnessInputError as exc:
        st.error(f"Cannot show run {md(run_id)}:  \n" + "  \n".join(f"- {md(p)}" for p in exc.problems))
        st.stop()
    if report["run_id"] != run_id:
        st.warning(
            f"{md(path)}: run_id is {md(report['run_id'])} but the folder is {md(run_id)}; "
            "sign-offs use the folder name."
        )
    suite, model = report["suite"], report.get("model") or {}
    st.title(run_id)
    order = variant_order(report)
    adapter = _dig(report, "adapter", "sha256")
    st.caption(
        f"{md(report['created_at'])} · {md(report['kind'])} run · "
        f"suite {md(suite.get('name'))} v{md(suite.get('version'))}, "
        f"{suite.get('n_cases')} cases · base {md(model.get('spec', 'n/a'))}"
        + (f" · adapter {md(str(adapter)[:12])}" if adapter else "")
        + f" · {len(order)} variants: {', '.join(md(v) for v in order)}"
    )
    tabs = st.tabs(["Overview", "Variants", "Cases", "Flips · parity · safety", "Sign-off"])
    with tabs[0]:
        render_overview(report, path)
    with tabs[1]:
        render_variants(report, path)
    with tabs[2]:
        render_cases(report, path)
    with tabs[3]:
        render_flips(report, path)
    with tabs[4]:
        render_signoff(report, path, root, run_id)


if __name__ == "__main__":
    main()
