"""The report viewer over the fixture reports: it renders, refuses what it must, and signs off through the ledger.

Fixture runs (tests/fixtures/reports/, rebuilt from a real pipeline run by build_fixtures.py): the demo run has
every section (gates, flips, hygiene, retention, per-scorer blocks, safety findings); the legacy one is the same
run as a harness wrote it before those sections existed; the newest, a "compare" run, has five named variants
(base, two adapters, a merge of one and a gguf of the merge) made from the demo run's records. Every test works
on a copy in tmp_path; expectations are read from the fixture files, so a rebuild does not break them.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from streamlit.testing.v1 import AppTest

import streamlit_app as app
from harness.verdict.checklist import build_checklist
from harness.verdict.ledger import append_signoff, ledger_history, verify_ledger
from harness.verdict.signing import ALLOWED_SIGNERS_ENV, PASSPHRASE_ENV, SIGNING_KEY_ENV, allowed_signers_path
from harness.verdict.signoff import audit_ledger
from tests.conftest import REPO
from tests.test_signoff import Key, make_key, write_signers

APP = REPO / "streamlit_app.py"
FIXTURES = REPO / "tests" / "fixtures" / "reports"
FULL = "20260301T120000Z-support_vi-demo"
LEGACY = "20260215T090000Z-support_vi-legacy"
COMPARE = "20260310T120000Z-support_vi-compare"
TIMEOUT = 60


@pytest.fixture()
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dst = tmp_path / "reports"
    shutil.copytree(FIXTURES, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setenv("HARNESS_REPORTS_DIR", str(dst))
    return dst


def _run(run: str | None = FULL) -> AppTest:
    """The app opened on one run (?run=...), or with run=None on whatever it opens by default."""
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if run is not None:
        at.query_params["run"] = run
    return at.run()


def _texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


TABLE_COLUMNS = {
    "case_table": ("id", "slices", "regression"),
    "flip_table": ("scorer", "fixed", "broken"),
    "flip_matrix": ("comparison",),
    "variant_table": ("variant", "kind", "derived from", "prompt format"),
    "ledger_table": ("seq", "by", "signature", "covers this report"),
    "checklist_table": ("item", "status", "detail", "evidence"),
}


def _table(at: AppTest, name: str) -> Any:
    """The dataframe shown under that name, recognised by its columns (AppTest does not expose dataframe keys)."""
    want = set(TABLE_COLUMNS[name])
    found = [d.value for d in at.dataframe if want <= set(d.value.columns)]
    assert len(found) == 1, f"{len(found)} tables with columns {sorted(want)}"
    return found[0]


def _report(reports: Path, run: str = FULL) -> dict[str, Any]:
    return json.loads((reports / run / "report.json").read_text(encoding="utf-8"))


def _cases(reports: Path, run: str = FULL) -> list[dict[str, Any]]:
    lines = (reports / run / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def _write_cases(reports: Path, rows: list[dict[str, Any]], run: str = FULL) -> None:
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    (reports / run / "cases.jsonl").write_text(text, encoding="utf-8")


def _label(reports: Path, run: str) -> str:
    """The run's entry in the sidebar picker: its id and gate verdict."""
    return f"{run} · {_report(reports, run)['gates']['verdict'].upper()}"


def test_newest_run_is_opened_by_default(reports: Path) -> None:
    at = _run(None)
    _no_exception(at)
    assert at.sidebar.selectbox(key="run").value == COMPARE and at.title[0].value == COMPARE
    assert at.sidebar.selectbox(key="run").options[0] == _label(reports, COMPARE)
    assert at.query_params["run"] == COMPARE


def test_demo_run_renders_verdicts_charts_and_cases(reports: Path) -> None:
    report = _report(reports)
    at = _run()
    _no_exception(at)
    assert not at.error
    assert at.sidebar.selectbox(key="run").value == FULL
    markdown = "\n".join(_texts(at, "markdown"))
    assert f"### Gates {app.badge(report['gates']['verdict'])}" in markdown
    assert report["gates"]["verdict"] in {"pass", "fail", "inconclusive"} and app.badge("fail") == ":red-badge[FAIL]"
    for check in report["gates"]["checks"]:
        assert f"{app.badge(check['verdict'])} **{app.md(check['id'])}**" in markdown
    assert f"### Data hygiene {app.badge(report['hygiene']['verdict'])}" in markdown
    assert "Precision that ran" in markdown
    assert len(at.get("vega_lite_chart")) >= 4  # overall metrics, per slice, loss curve, retention
    cases = _table(at, "case_table")
    assert len(cases) == len(_cases(reports))
    assert list(cases.columns[:5]) == ["id", "slices", "base", "adapter", "merged"]
    assert len(_table(at, "flip_table")) == len(report["flips"]["base->adapter"])
    assert list(_table(at, "flip_matrix")["comparison"]) == list(report["flips"])
    assert f"#### merged vs adapter {app.badge(report['parity']['verdict'])}" in markdown
    assert any("<ins" in h.proto.body for h in at.get("html"))
    assert at.query_params["run"] == FULL


def test_report_without_new_sections_says_so(reports: Path) -> None:
    at = _run(LEGACY)
    _no_exception(at)
    assert not at.error
    assert at.sidebar.selectbox(key="run").value == LEGACY
    info = "\n".join(_texts(at, "info"))
    for what in ("Gates", "Data hygiene", "Training metadata", "Retention", "Flips", "Safety findings"):
        assert f"{what}: not in this report." in info
    assert len(at.get("vega_lite_chart")) >= 2
    assert len(_table(at, "case_table")) == len(_cases(reports, LEGACY))


def test_picking_another_run_in_the_sidebar(reports: Path) -> None:
    at = _run()
    at.sidebar.selectbox(key="run").select(LEGACY).run()
    _no_exception(at)
    assert at.title[0].value == LEGACY and at.query_params["run"] == LEGACY


@pytest.mark.parametrize("bad", ["../outside", "..", "/etc", "no-such-run", ".hidden"])
def test_query_param_with_path_tricks_is_refused(reports: Path, tmp_path: Path, bad: str) -> None:
    outside = tmp_path / "outside"
    shutil.copytree(reports / FULL, outside)
    at = _run(bad)
    _no_exception(at)
    errors = "\n".join(_texts(at, "error"))
    assert "Refused to open the requested run" in errors
    assert [t.value for t in at.title] == ["Runs"]  # the sidebar only: nothing was opened


def test_picker_lists_only_real_run_folders(reports: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside-run"
    shutil.copytree(reports / FULL, outside)
    (reports / "escape").symlink_to(outside, target_is_directory=True)
    (reports / "empty-folder").mkdir()
    (reports / ".hidden").mkdir()
    shutil.copy(reports / FULL / "report.json", reports / ".hidden" / "report.json")
    (reports / "stray.json").write_text("{}", encoding="utf-8")
    at = _run(None)
    _no_exception(at)
    options = at.sidebar.selectbox(key="run").options
    assert options == [_label(reports, COMPARE), _label(reports, FULL), f"{LEGACY} · no gates"]
    at = _run("escape")
    assert "not directly inside" in "\n".join(_texts(at, "error"))


HEAD = {"kind": "pipeline", "schema_version": 1, "run_id": "zz", "created_at": "2099-01-01", "suite": {}}


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('{"kind": "pipeline", "run_id": ', ["report.json", "not valid JSON"]),
        ("[1, 2]", ["report.json", "is a JSON list"]),
        (
            json.dumps({**HEAD, "kind": "eval", "variants": {}}),
            ["kind", "is 'eval', not 'pipeline' or 'compare'", "variant_order", "holds none of base, adapter, merged"],
        ),
        (json.dumps({**HEAD, "variants": {"base": {}}}), ["variants.base.metrics.overall", "is missing"]),
        (
            json.dumps({**HEAD, "kind": "compare", "variants": {}, "variant_order": "base"}),
            ["variant_order", "is str", "expected a list of variant names"],
        ),
        (
            json.dumps(
                {
                    **HEAD,
                    "kind": "compare",
                    "variants": {"a": {"metrics": {"overall": {}}}},
                    "variant_order": ["a", "a"],
                }
            ),
            ["variant_order", "names 'a' more than once"],
        ),
        (
            json.dumps({"kind": "pipeline", "schema_version": 7, "created_at": "2099-01-01"}),
            ["schema_version", "is 7", "run_id", "is missing"],
        ),
    ],
)
def test_broken_or_foreign_report_shows_an_error(reports: Path, content: str, needles: list[str]) -> None:
    (reports / "zz-broken").mkdir()
    (reports / "zz-broken" / "report.json").write_text(content, encoding="utf-8")
    at = _run("zz-broken")
    _no_exception(at)
    errors = "\n".join(_texts(at, "error"))
    assert "Cannot show run" in errors
    for needle in needles:
        assert app.md(needle) in errors, (needle, errors)


def test_malformed_optional_section_is_an_error_not_a_traceback(reports: Path) -> None:
    path = reports / FULL / "report.json"
    report = json.loads(path.read_text(encoding="utf-8"))
    report["gates"] = {"verdict": "fail", "checks": "oops"}
    report["hygiene"] = ["not", "a", "dict"]
    path.write_text(json.dumps(report), encoding="utf-8")
    n_cases = len(_cases(reports))
    with (reports / FULL / "cases.jsonl").open("a", encoding="utf-8") as handle:
        handle.write('{"id": "half a line\n{"id": "no-variants"}\n')
    at = _run()
    _no_exception(at)
    errors = "\n".join(_texts(at, "error"))
    assert "`gates` section" in errors and "`hygiene` section" in errors
    warnings = "\n".join(_texts(at, "warning"))
    assert "invalid JSON" in warnings and "lack an id or variants" in warnings
    assert len(_table(at, "case_table")) == n_cases  # the rest still renders


SECTIONS = [
    "gates",
    "hygiene",
    "training",
    "flips",
    "parity",
    "relations",
    "safety_findings",
    "retention",
    "comparisons",
    "headline",
    "findings",
]
ODD_VALUES = ["text", [1, {"x": None}], {"verdict": {"nested": 1}, "checks": [None], "variants": 3}]


@pytest.mark.parametrize("key", SECTIONS)
@pytest.mark.parametrize("value", ODD_VALUES)
def test_any_wrong_shape_in_a_section_never_raises(reports: Path, key: str, value: Any) -> None:
    path = reports / FULL / "report.json"
    report = _report(reports)
    report[key] = value
    path.write_text(json.dumps(report), encoding="utf-8")
    _no_exception(_run())


def test_odd_case_rows_never_raise(reports: Path) -> None:
    odd = [
        {"id": "odd-1", "variants": {"base": "text", "adapter": None}},
        {"id": "odd-2", "tags": "not-a-list", "expected": [1], "variants": {"base": {"output": None, "scores": "x"}}},
        {
            "id": "odd-3",
            "variants": {"merged": {"output": 5, "scores": [{"scorer": ["list"], "passed": True}, None]}},
            "messages": "hi",
        },
    ]
    with (reports / FULL / "cases.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in odd))
    at = _run()
    _no_exception(at)
    for case_id in ("odd-1", "odd-2", "odd-3"):
        at.selectbox(key="case_pick").select(case_id).run()
        _no_exception(at)


@pytest.fixture()
def signer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Key:
    """Lan's ed25519 key, listed (principal with a space, quoted) in an allowed-signers file the app reads."""
    monkeypatch.delenv(SIGNING_KEY_ENV, raising=False)
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)
    key = make_key(tmp_path / "keys", "lan")
    monkeypatch.setenv(
        ALLOWED_SIGNERS_ENV, str(write_signers(tmp_path / "allowed_signers", f'"Lan Nguyễn" {key.public}'))
    )
    return key


def _plain(texts: list[str]) -> str:
    """The texts with the app's markdown escapes taken out, for comparing with what the harness said."""
    return re.sub(r"\\(.)", r"\1", "\n".join(texts))


def _fill_signoff(at: AppTest, by: str, decision: str, key: str = "", attest: bool = True) -> AppTest:
    at.text_input(key="signoff_by").input(by)
    at.radio(key="signoff_decision").set_value(decision)
    at.text_area(key="signoff_note").input("failed gates reviewed by hand")
    if key:
        at.text_input(key="signoff_key").input(key)
    if attest:
        for name in ("licence", "privacy", "monitoring"):
            at.text_input(key=f"attest_{name}").input(f"{name}: checked by hand")
    return next(b for b in at.button if b.label == "Record sign-off").click().run()


def test_signoff_form_writes_a_signed_verified_ledger_entry(reports: Path, signer: Key) -> None:
    at = _fill_signoff(_run(), "Lan Nguyễn", "approve", str(signer.path))
    _no_exception(at)
    assert "Recorded sign-off #1" in _plain(_texts(at, "success")) and signer.fingerprint in _plain(
        _texts(at, "success")
    )
    [entry] = ledger_history(reports, FULL)
    assert (
        entry["by"] == "Lan Nguyễn"
        and entry["decision"] == "approve"
        and entry["key_fingerprint"] == signer.fingerprint
    )
    assert entry["attestations"]["privacy"] == "privacy: checked by hand"
    assert entry["verdict"] == _report(reports)["gates"]["verdict"]
    assert verify_ledger(reports) == []
    audit = audit_ledger(reports, allowed_signers_path())
    assert audit.problems == [] and [e.status for e in audit.entries] == ["valid"]
    history = _table(at, "ledger_table")
    assert list(history["by"]) == ["Lan Nguyễn"] and bool(history["covers this report"].iloc[0])
    assert list(history["signature"]) == ["valid"] and "Ledger intact (1 entries)." in _texts(at, "success")


def test_signoff_form_refuses_an_approval_without_key_or_attestations(reports: Path, signer: Key) -> None:
    at = _fill_signoff(_run(), "Lan Nguyễn", "approve", attest=False)
    _no_exception(at)
    errors = _plain(_texts(at, "error"))
    assert "Sign-off not recorded" in errors and "missing: licence, privacy, monitoring" in errors
    assert "pass --key" in errors and ledger_history(reports) == []
    at = _fill_signoff(_run(), "Minh", "reject", str(signer.path))
    assert "may not sign as 'Minh'" in _plain(_texts(at, "error")) and ledger_history(reports) == []


def test_checklist_of_the_selected_run_is_shown(reports: Path) -> None:
    at = _run()
    _no_exception(at)
    table = _table(at, "checklist_table")
    want = build_checklist(reports, FULL, _report(reports))
    assert list(table["item"]) == [i.title for i in want] and list(table["status"]) == [i.status for i in want]
    assert "unattested" in set(table["status"]) and "report.json#/gates" in " ".join(table["evidence"])
    assert any("sign-off policy" in c for c in _texts(at, "caption"))


def test_ledger_shows_unsigned_and_unknown_signers(reports: Path, signer: Key, tmp_path: Path) -> None:
    from harness.verdict.signing import load_signing_key
    from harness.verdict.signoff import sign_off

    append_signoff(reports, FULL, "Lan", "reject", "no key")
    stranger = make_key(tmp_path / "keys", "stranger")
    others = write_signers(tmp_path / "theirs", f"stranger {stranger.public}")
    sign_off(reports, FULL, "stranger", "reject", "not listed for the app", load_signing_key(stranger.path), others)
    at = _run()
    _no_exception(at)
    assert list(_table(at, "ledger_table")["signature"]) == ["unsigned", "unknown signer"]
    errors = _plain(_texts(at, "error"))
    assert "The ledger does not verify" in errors and "requires a signature" in errors and "is not in" in errors


def test_unsigned_signoff_where_the_policy_allows_it(reports: Path, signer: Key, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "gates.yaml").write_text(
        (REPO / "golden" / "support_vi" / "gates.yaml").read_text(encoding="utf-8")
        + "signoff:\n  require_signature: false\n",
        encoding="utf-8",
    )
    report = _report(reports)
    report["suite"]["path"] = str(suite)
    (reports / FULL / "report.json").write_text(json.dumps(report), encoding="utf-8")
    at = _run()
    at.checkbox(key="signoff_unsigned").check()
    at = _fill_signoff(at, "Minh", "reject", attest=False)
    _no_exception(at)
    [entry] = ledger_history(reports, FULL)
    assert entry["signature"] is None and entry["by"] == "Minh"
    assert list(_table(at, "ledger_table")["signature"]) == ["unsigned"]
    # the compare run's policy is the shipped one, where signatures are required: no such box
    assert "signoff_unsigned" not in {c.key for c in _run(COMPARE).checkbox}


def test_signoff_without_name_or_decision_is_refused(reports: Path) -> None:
    at = _run()
    next(b for b in at.button if b.label == "Record sign-off").click().run()
    _no_exception(at)
    errors = "\n".join(_texts(at, "error"))
    assert "Sign-off not recorded" in errors and "approve, reject" in errors and "pass your name" in errors
    assert ledger_history(reports) == []


def test_tampered_ledger_is_shown(reports: Path) -> None:
    from harness.verdict.ledger import append_signoff

    append_signoff(reports, FULL, "Lan", "approve", "first")
    append_signoff(reports, LEGACY, "Minh", "reject", "second")
    ledger = reports / "ledger.jsonl"
    ledger.write_text(ledger.read_text(encoding="utf-8").replace("first", "FIRST"), encoding="utf-8")
    at = _run()
    _no_exception(at)
    assert "The ledger does not verify" in "\n".join(_texts(at, "error"))


def test_regressions_filter_and_diff(reports: Path) -> None:
    cases = reports / FULL / "cases.jsonl"
    rows = [json.loads(x) for x in cases.read_text(encoding="utf-8").splitlines()]
    target = next(
        r
        for r in rows
        if any(s["scorer"] == "format_strict" and s["passed"] for s in r["variants"]["adapter"]["scores"])
    )
    merged = target["variants"]["merged"]
    merged["output"] = merged["output"][: 2 * len(merged["output"]) // 3] + " <script>alert(1)</script>"
    for s in merged["scores"]:
        if s["scorer"] == "format_strict":
            s.update(value=0.0, passed=False, explanation="truncated: a JSON object starts but never closes")
    cases.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")

    at = _run()
    at.checkbox(key="case_regressions").check().run()
    _no_exception(at)
    table = _table(at, "case_table")
    assert list(table["id"]) == [target["id"]] and bool(table["regression"].iloc[0])
    at.selectbox(key="case_reference").select("adapter").run()  # the merged output against the adapter's
    _no_exception(at)
    bodies = [h.proto.body for h in at.get("html")]
    assert any("&lt;script&gt;" in b for b in bodies) and not any("<script>" in b for b in bodies)
    assert any("<del" in b for b in bodies)


def test_slice_and_failed_scorer_filters(reports: Path) -> None:
    rows = _cases(reports)
    at = _run()
    at.multiselect(key="case_slices").select("tag=informal").run()
    _no_exception(at)
    assert len(_table(at, "case_table")) == sum("informal" in r["tags"] for r in rows) > 0
    at.multiselect(key="case_slices").unselect("tag=informal").run()
    failed = {
        r["id"]
        for r in rows
        for v in r["variants"].values()
        for s in v["scores"]
        if s["scorer"] == "format_strict" and s["passed"] is False
    }
    at.multiselect(key="case_failed").select("format_strict").run()
    assert set(_table(at, "case_table")["id"]) == failed


def test_filters_that_match_nothing_say_so(reports: Path) -> None:
    rows = _cases(reports)
    for r in rows:  # make the informal cases pass format_strict everywhere
        if "informal" in r["tags"]:
            for v in r["variants"].values():
                for s in v["scores"]:
                    if s["scorer"] == "format_strict":
                        s.update(value=1.0, passed=True)
    _write_cases(reports, rows)
    at = _run()
    at.multiselect(key="case_slices").select("tag=informal").run()
    at.multiselect(key="case_failed").select("format_strict").run()
    _no_exception(at)
    assert _table(at, "case_table").empty and "No case matches these filters." in _texts(at, "info")


# ---------------------------------------------------------------- any number of variants (the compare run)


def _tab_text(at: AppTest, label: str) -> str:
    """What one tab shows as text: markdown, captions, alerts, table contents and widget options, unescaped."""
    [tab] = [t for t in at.tabs if t.label == label]
    parts = [
        str(e.value) for kind in ("markdown", "caption", "error", "warning", "info", "success") for e in tab.get(kind)
    ]
    parts += [d.value.to_csv() for d in tab.dataframe]
    parts += [str(o) for kind in ("selectbox", "multiselect") for w in tab.get(kind) for o in w.options]
    return "\n".join(parts).replace("\\", "")


def test_compare_run_shows_every_variant_on_every_page(reports: Path) -> None:
    report = _report(reports, COMPARE)
    order = report["variant_order"]
    assert report["kind"] == "compare" and len(order) == 5
    at = _run(COMPARE)
    _no_exception(at)
    assert at.title[0].value == COMPARE
    assert at.caption[0].value.endswith(f"5 variants: {', '.join(app.md(v) for v in order)}")
    for label in ("Overview", "Variants", "Cases", "Flips · parity · safety"):
        text = _tab_text(at, label)
        assert [v for v in order if v not in text] == [], label
    assert "Record sign-off" in [b.label for b in at.button]
    variants = _table(at, "variant_table")
    assert list(variants["variant"]) == order
    kinds = [report["variants"][v]["kind"] for v in order]
    assert list(variants["kind"]) == kinds == ["base", "adapter", "adapter", "merged", "gguf"]
    assert list(variants["derived from"].fillna("")) == [report["variants"][v]["derived_from"] or "" for v in order]
    assert variants["prompt format"].iloc[2] == "template: ### Instruction:\\n{prompt}\\n### Response:\\n"
    assert variants["prompt format"].iloc[0] == "chat: system_prompt=suite"
    for v, shas, paths in zip(order, variants["sources (sha256)"], variants["paths"]):
        assert shas == " · ".join(f"{s['role']} {s['sha256'][:12]}" for s in report["variants"][v]["sources"])
        assert paths == " · ".join(s["path"] for s in report["variants"][v]["sources"])
    assert list(_table(at, "case_table").columns) == ["id", "slices", *order, "regression", "failed scorers"]
    assert list(_table(at, "flip_matrix")["comparison"]) == list(report["flips"])
    markdown = "\n".join(_texts(at, "markdown"))
    for name, rel in report["relations"].items():
        assert f"#### {app.md(name)} vs {app.md(rel['source'])} {app.badge(rel['verdict'])}" in markdown
    alerts = {kind: "\n".join(_texts(at, kind)) for kind in ("error", "warning", "info")}
    for rel in report["relations"].values():
        for d in rel["diagnosis"]:
            assert f"{app.md(d['code'])}: {app.md(d['message'])}" in alerts[d["level"]]
    for check in report["gates"]["checks"]:
        assert f"{app.badge(check['verdict'])} **{app.md(check['id'])}**" in markdown
    assert len(at.get("vega_lite_chart")) >= 4
    assert not [e for e in _texts(at, "error") if "section" in e or "Cannot show" in e]


def test_compare_case_view_picks_variants_and_reference(reports: Path) -> None:
    report = _report(reports, COMPARE)
    order = report["variant_order"]
    diverged = report["relations"]["demo-q8"]["worst_cases"][0]["id"]
    at = _run(COMPARE)
    assert at.multiselect(key="case_compare").value == order[:3]
    assert at.selectbox(key="case_reference").value == order[0]
    at.selectbox(key="case_pick").select(diverged).run()
    at.multiselect(key="case_compare").unselect("trl").select("demo-q8").run()
    at.selectbox(key="case_reference").select("demo-merged").run()
    _no_exception(at)
    markdown = _texts(at, "markdown")
    assert f"**{app.md('demo-q8')}** · changes vs {app.md('demo-merged')}" in markdown
    assert f"**{app.md('base')}** · changes vs {app.md('demo-merged')}" in markdown
    assert not any(m.startswith(f"**{app.md('trl')}**") for m in markdown)
    assert any("<ins" in h.proto.body for h in at.get("html"))
    expanders = [e.label for e in at.expander]
    for name, source in (("demo-q8", "demo-merged"), ("demo-merged", "demo")):
        assert f"parity on this case: {app.md(name)} vs {app.md(source)}" in expanders
    for _ in order[:3]:
        at.multiselect(key="case_compare").unselect(at.multiselect(key="case_compare").value[0]).run()
    assert at.multiselect(key="case_compare").value == []
    assert "Pick two or three variants to compare." in _texts(at, "info")


def test_compare_regressions_follow_the_variant_order(reports: Path) -> None:
    report = _report(reports, COMPARE)
    flips = report["flips"]
    later_broken = {c for pair in ("demo->trl", "demo-merged->demo-q8") for c in flips[pair]["format_strict"]["broken"]}
    assert len(later_broken) == 3
    at = _run(COMPARE)
    at.checkbox(key="case_regressions").check().run()
    _no_exception(at)
    assert set(_table(at, "case_table")["id"]) == later_broken


def test_switching_from_a_compare_run_to_an_older_one(reports: Path) -> None:
    at = _run(COMPARE)
    at.selectbox(key="case_reference").select("demo-q8").run()
    at.sidebar.selectbox(key="run").select(LEGACY).run()
    _no_exception(at)
    assert at.title[0].value == LEGACY and at.selectbox(key="case_reference").value == "base"
    assert at.selectbox(key="case_reference").options == list(app.LEGACY_VARIANTS)
    assert not at.get("multiselect") or all(m.key != "case_compare" for m in at.multiselect)


@pytest.mark.parametrize("change", ["drop-variant", "typo-in-order"])
def test_order_naming_a_missing_variant_is_an_error(reports: Path, change: str) -> None:
    path = reports / COMPARE / "report.json"
    report = _report(reports, COMPARE)
    if change == "drop-variant":
        del report["variants"]["trl"]
        missing = "trl"
    else:
        report["variant_order"][1] = missing = "dmeo"
    path.write_text(json.dumps(report), encoding="utf-8")
    at = _run(COMPARE)
    _no_exception(at)
    errors = "\n".join(_texts(at, "error"))
    assert "Cannot show run" in errors and app.md(path) in errors
    assert app.md(f"variant_order: names variant {missing!r}, which is not in variants") in errors


def test_case_rows_lacking_a_variant_are_an_error(reports: Path) -> None:
    rows = _cases(reports, COMPARE)
    for r in rows[:2]:
        del r["variants"]["demo-q8"]
    _write_cases(reports, rows, COMPARE)
    at = _run(COMPARE)
    _no_exception(at)
    [error] = [e for e in _texts(at, "error") if "case rows" in e]
    assert app.md(reports / COMPARE / "cases.jsonl") in error and app.code("demo-q8") in error and "2 of 18" in error
    assert all(app.md(r["id"]) in error for r in rows[:2])
    assert len(_table(at, "case_table")) == len(rows)
    at.multiselect(key="case_compare").unselect("trl").select("demo-q8").run()
    _no_exception(at)
    assert f"{app.md('demo-q8')}: not in this case row" in _texts(at, "caption")


def test_odd_compare_fields_never_raise(reports: Path) -> None:
    path = reports / COMPARE / "report.json"
    report = _report(reports, COMPARE)
    report["relations"]["demo-q8"]["diagnosis"] = "text"
    report["relations"]["demo-merged"].update(worst_cases=[1, None], source=None, token_agreement="x")
    report["relations"]["ghost"] = {"source": "base", "verdict": {"nested": 1}}
    report["variants"]["trl"].update(prompt_format=5, sources="x", tokenizer=[1], kind={"a": 1}, derived_from=["x"])
    report["variants"]["demo"].update(sources=[None, {"sha256": 7}], prompt_format={"kind": None, "x": {"y": [1]}})
    report["findings"] = [{"level": "error", "code": "c", "variant": {"x": 1}, "message": None}]
    report["gates"]["checks"][0].update(variant=None, baseline="champion", metric=None)
    path.write_text(json.dumps(report), encoding="utf-8")
    rows = _cases(reports, COMPARE)
    rows[0]["relations"] = "text"
    rows[1]["relations"] = {"demo-q8": "text", "ghost": {"x": 1}}
    _write_cases(reports, rows, COMPARE)
    at = _run(COMPARE)
    _no_exception(at)
    errors = "\n".join(_texts(at, "error"))
    assert "`relations.demo-q8` section" in errors and "`relations.demo-merged` section" not in errors
    assert f"#### ghost vs base {app.badge({'nested': 1})}" in _texts(at, "markdown")
    assert len(_table(at, "variant_table")) == 5
    for case_id in (rows[0]["id"], rows[1]["id"]):
        at.selectbox(key="case_pick").select(case_id).run()
        _no_exception(at)


def test_older_report_with_only_some_of_the_three_variants(reports: Path) -> None:
    path = reports / LEGACY / "report.json"
    report = _report(reports, LEGACY)
    del report["variants"]["merged"], report["parity"]
    path.write_text(json.dumps(report), encoding="utf-8")
    at = _run(LEGACY)
    _no_exception(at)
    assert not at.error
    assert list(_table(at, "variant_table")["variant"]) == ["base", "adapter"]
    assert list(_table(at, "case_table").columns[:4]) == ["id", "slices", "base", "adapter"]
    assert "Parity: not in this report." in _texts(at, "info")


def test_older_reports_describe_their_variants(reports: Path) -> None:
    at = _run(LEGACY)
    table = _table(at, "variant_table")
    assert list(table["kind"]) == ["base", "adapter", "merged"]
    assert list(table["derived from"].fillna("")) == ["", "", "adapter"]
    report = _report(reports, LEGACY)
    adapter = report["variants"]["adapter"]
    want = f"weights {adapter['weights_sha256'][:12]} · adapter {adapter['adapter_sha256'][:12]}"
    assert table["sources (sha256)"].iloc[1] == want


def test_palette_extends_to_any_number_of_variants() -> None:
    names = [f"v{i}" for i in range(25)]
    colors = app.palette(names)
    assert len(colors) == 25 and len(set(colors[:20])) == 20 and colors[:3] == ["#7f7f7f", "#1f77b4", "#ff7f0e"]
    df = app.pd.DataFrame([{"variant": v, "metric": "m", "value": 0.5, "lo": 0.4, "hi": 0.6, "n": 10} for v in names])
    chart = app.interval_chart(df, "metric", "t", names).to_dict()
    assert chart["layer"][0]["encoding"]["color"]["scale"]["domain"] == names


def test_server_binds_to_localhost_by_default() -> None:
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["address"] == "127.0.0.1" and config["server"]["headless"] is True


def test_missing_reports_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_REPORTS_DIR", str(tmp_path / "nope"))
    at = _run()
    _no_exception(at)
    assert "no such reports folder" in "\n".join(_texts(at, "error"))


def test_diff_escapes_model_text_and_marks_changes() -> None:
    out = app.diff_html('{"answer": "Xin chào <b>bạn</b>"}', '{"answer": "Xin chào <b>anh</b> & chị"}')
    assert "&lt;b&gt;" in out and "<b>" not in out
    assert '<del style="' in out and ">bạn</del>" in out and ">anh</ins>" in out and "&amp;" in out
    assert "rewritten" in app.diff_html("một hai ba bốn năm", '{"category": "billing"}')
    assert "(empty output)" in app.diff_html("", "")


@pytest.mark.parametrize("order", [list(app.LEGACY_VARIANTS), ["base", "demo", "trl", "trl-merged", "trl-q8"]])
def test_regression_means_passed_earlier_failed_later(order: list[str]) -> None:
    def row(*passed: bool | None) -> dict[str, Any]:
        padded = [*passed, *[passed[-1]] * (len(order) - len(passed))]  # later variants repeat the last outcome
        return {"variants": {v: {"scores": [{"scorer": "s", "passed": p}]} for v, p in zip(order, padded)}}

    assert app.is_regression(row(True, False, False), "s", order)
    assert app.is_regression(row(False, True, False), "s", order)
    assert app.is_regression(row(True, None, False), "s", order)
    assert not app.is_regression(row(False, True, True), "s", order)
    assert not app.is_regression(row(None, None, False), "s", order)
    assert not app.is_regression(row(True, True, True), "other", order)
    assert not app.is_regression(row(True, False, False), "s", order[:1])  # one variant: nothing to regress to


def test_markdown_escaping_keeps_report_text_literal() -> None:
    escaped = "\\$x\\$ \\:red\\[boom\\] \\*\\*b\\*\\* \\[l\\]\\(http\\://x\\)"
    assert app.md("$x$ :red[boom] **b** [l](http://x)") == escaped
    assert app.badge("weird]") == ":gray-badge[WEIRD\\]]"


# ---------------------------------------------------------------- slow lane: a real browser


def _chromium() -> str | None:
    found = (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome"))
    return next((p for p in found if p), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {seconds} s")


def _browser_text_and_screenshot(
    chromium: str, url: str, shot: Path, needle: str, profile: Path, seconds: float = 60
) -> str:
    """Drive headless Chromium over the DevTools protocol: wait until `needle` renders, then screenshot.

    Chromium's --dump-dom/--screenshot return before Streamlit's websocket has delivered the page
    (virtual time does not wait for websockets), so the one-shot flags only ever see the loading skeleton.
    """
    import asyncio
    import base64
    import re

    import websockets

    async def drive() -> str:
        proc = subprocess.Popen(
            [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--window-size=1400,2000",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            endpoint = None
            for line in proc.stderr:
                if m := re.search(r"DevTools listening on (ws://\S+)", line):
                    endpoint = m.group(1)
                    break
            assert endpoint, "chromium did not print its DevTools endpoint"
            port = endpoint.split(":")[2].split("/")[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=10) as resp:
                page = next(t["webSocketDebuggerUrl"] for t in json.loads(resp.read()) if t["type"] == "page")
            async with websockets.connect(page, max_size=64 << 20) as ws:
                counter = 0

                async def call(method: str, **params: Any) -> dict[str, Any]:
                    nonlocal counter
                    counter += 1
                    await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
                    while True:
                        msg = json.loads(await ws.recv())
                        if msg.get("id") == counter:
                            return msg.get("result", {})

                async def body_text() -> str:
                    result = await call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)
                    return str(result.get("result", {}).get("value", ""))

                await call("Page.enable")
                await call("Page.navigate", url=url)
                text, deadline = "", time.monotonic() + seconds
                while needle not in text and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    text = await body_text()
                await asyncio.sleep(3)  # let charts and tables draw before the picture
                text = await body_text()
                shot.write_bytes(base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"]))
                return str(text)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    return asyncio.run(drive())


@pytest.mark.slow
def test_browser_shows_the_run_verdicts(reports: Path, tmp_path: Path) -> None:
    """The demo run and the five-variant compare run, as a browser draws their overview."""
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH; install it with: apt-get install -y chromium")
    why = "the browser test drives Chromium over the DevTools protocol with 'websockets' (a streamlit dependency)"
    pytest.importorskip("websockets", reason=why)
    port = _free_port()
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(APP),
            "--server.port",
            str(port),
            "--server.headless",
            "true",
            "--server.fileWatcherType",
            "none",
            "--browser.gatherUsageStats",
            "false",
        ],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/_stcore/health", 60)
        for run in (FULL, COMPARE):
            shot = tmp_path / f"overview-{run}.png"
            text = _browser_text_and_screenshot(
                chromium, f"http://127.0.0.1:{port}/?run={run}", shot, "Data hygiene", tmp_path / f"profile-{run}"
            )
            assert shot.stat().st_size > 10_000
            report = _report(reports, run)
            gates = report["gates"]
            assert run in text and "Gates" in text and gates["verdict"].upper() in text
            for check in gates["checks"]:
                assert check["id"] in text
            assert all(v in text for v in app.variant_order(report))
            assert "Traceback" not in text
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
