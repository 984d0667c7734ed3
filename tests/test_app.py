"""The report viewer over the fixture reports: it renders, refuses what it must, and signs off through the ledger.

Fixture runs (tests/fixtures/reports/, rebuilt from a real pipeline run by build_fixtures.py): the newest has
every section (gates, flips, hygiene, retention, per-scorer blocks, safety findings); the older one is the same
run as a harness wrote it before those sections existed. Every test works on a copy in tmp_path; expectations
are read from the fixture files, so a rebuild does not break them.
"""

from __future__ import annotations

import json
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
from harness.ledger import ledger_history, verify_ledger
from tests.conftest import REPO

APP = REPO / "streamlit_app.py"
FIXTURES = REPO / "tests" / "fixtures" / "reports"
FULL = "20260301T120000Z-support_vi-demo"
LEGACY = "20260215T090000Z-support_vi-legacy"
TIMEOUT = 60


@pytest.fixture()
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dst = tmp_path / "reports"
    shutil.copytree(FIXTURES, dst, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    monkeypatch.setenv("HARNESS_REPORTS_DIR", str(dst))
    return dst


def _run(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update(query or {})
    return at.run()


def _texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


def _no_exception(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]


TABLE_COLUMNS = {"case_table": ("id", "slices", "regression"), "flip_table": ("scorer", "fixed", "broken"), "ledger_table": ("seq", "by", "covers this report")}


def _table(at: AppTest, name: str) -> Any:
    """The dataframe shown under that name, recognised by its columns (AppTest does not expose dataframe keys)."""
    want = set(TABLE_COLUMNS[name])
    found = [d.value for d in at.dataframe if want <= set(d.value.columns)]
    assert len(found) == 1, f"{len(found)} tables with columns {sorted(want)}"
    return found[0]


def _report(reports: Path, run: str = FULL) -> dict[str, Any]:
    return json.loads((reports / run / "report.json").read_text(encoding="utf-8"))


def _cases(reports: Path, run: str = FULL) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (reports / run / "cases.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]


def test_newest_run_renders_verdicts_charts_and_cases(reports: Path) -> None:
    report = _report(reports)
    at = _run()
    _no_exception(at)
    assert not at.error
    assert at.sidebar.selectbox(key="run").value == FULL
    assert at.sidebar.selectbox(key="run").options[0] == f"{FULL} · {report['gates']['verdict'].upper()}"
    markdown = "\n".join(_texts(at, "markdown"))
    assert f"### Gates {app.badge(report['gates']['verdict'])}" in markdown
    assert report["gates"]["verdict"] in {"pass", "fail", "inconclusive"} and app.badge("fail") == ":red-badge[FAIL]"
    for check in report["gates"]["checks"]:
        assert f"{app.badge(check['verdict'])} **{app.md(check['id'])}**" in markdown
    assert f"### Data hygiene {app.badge(report['hygiene']['verdict'])}" in markdown and "Precision that ran" in markdown
    assert len(at.get("vega_lite_chart")) >= 4  # overall metrics, per slice, loss curve, retention
    cases = _table(at, "case_table")
    assert len(cases) == len(_cases(reports)) and list(cases.columns[:5]) == ["id", "slices", "base", "adapter", "merged"]
    assert len(_table(at, "flip_table")) == len(report["flips"]["base->adapter"])
    assert any("<ins" in h.proto.body for h in at.get("html"))
    assert at.query_params["run"] == FULL


def test_report_without_new_sections_says_so(reports: Path) -> None:
    at = _run({"run": LEGACY})
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
    at = _run({"run": bad})
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
    at = _run()
    _no_exception(at)
    assert at.sidebar.selectbox(key="run").options == [f"{FULL} · {_report(reports)['gates']['verdict'].upper()}", f"{LEGACY} · no gates"]
    at = _run({"run": "escape"})
    assert "not directly inside" in "\n".join(_texts(at, "error"))


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('{"kind": "pipeline", "run_id": ', ["report.json", "not valid JSON"]),
        ("[1, 2]", ["report.json", "is a JSON list"]),
        (json.dumps({"kind": "eval", "schema_version": 1, "run_id": "zz", "created_at": "2099-01-01", "suite": {}, "variants": {}}),
         ["kind", "is 'eval'", "variants.base.metrics.overall", "is missing"]),
        (json.dumps({"kind": "pipeline", "schema_version": 7, "created_at": "2099-01-01"}), ["schema_version", "is 7", "run_id", "is missing"]),
    ],
)
def test_broken_or_foreign_report_shows_an_error(reports: Path, content: str, needles: list[str]) -> None:
    (reports / "zz-broken").mkdir()
    (reports / "zz-broken" / "report.json").write_text(content, encoding="utf-8")
    at = _run({"run": "zz-broken"})
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


@pytest.mark.parametrize("key", ["gates", "hygiene", "training", "flips", "parity", "safety_findings", "retention", "comparisons", "findings"])
@pytest.mark.parametrize("value", ["text", [1, {"x": None}], {"verdict": {"nested": 1}, "checks": [None], "variants": 3}])
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
        {"id": "odd-3", "variants": {"merged": {"output": 5, "scores": [{"scorer": ["list"], "passed": True}, None]}}, "messages": "hi"},
    ]
    with (reports / FULL / "cases.jsonl").open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(r) + "\n" for r in odd))
    at = _run()
    _no_exception(at)
    for case_id in ("odd-1", "odd-2", "odd-3"):
        at.selectbox(key="case_pick").select(case_id).run()
        _no_exception(at)


def test_signoff_form_writes_a_verified_ledger_entry(reports: Path) -> None:
    at = _run()
    at.text_input(key="signoff_by").input("Lan Nguyễn")
    at.radio(key="signoff_decision").set_value("approve")
    at.text_area(key="signoff_note").input("failed gates reviewed by hand")
    next(b for b in at.button if b.label == "Record sign-off").click().run()
    _no_exception(at)
    assert any("Recorded sign-off #1" in s for s in _texts(at, "success"))
    [entry] = ledger_history(reports, FULL)
    assert entry["by"] == "Lan Nguyễn" and entry["decision"] == "approve" and entry["verdict"] == _report(reports)["gates"]["verdict"]
    assert verify_ledger(reports) == []
    history = _table(at, "ledger_table")
    assert list(history["by"]) == ["Lan Nguyễn"] and bool(history["covers this report"].iloc[0])


def test_signoff_without_name_or_decision_is_refused(reports: Path) -> None:
    at = _run()
    next(b for b in at.button if b.label == "Record sign-off").click().run()
    _no_exception(at)
    errors = "\n".join(_texts(at, "error"))
    assert "Sign-off not recorded" in errors and "approve, reject" in errors and "pass your name" in errors
    assert ledger_history(reports) == []


def test_tampered_ledger_is_shown(reports: Path) -> None:
    from harness.ledger import append_signoff

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
    target = next(r for r in rows if any(s["scorer"] == "format_strict" and s["passed"] for s in r["variants"]["adapter"]["scores"]))
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
    failed = {r["id"] for r in rows for v in r["variants"].values() for s in v["scores"] if s["scorer"] == "format_strict" and s["passed"] is False}
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
    (reports / FULL / "cases.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    at = _run()
    at.multiselect(key="case_slices").select("tag=informal").run()
    at.multiselect(key="case_failed").select("format_strict").run()
    _no_exception(at)
    assert _table(at, "case_table").empty and "No case matches these filters." in _texts(at, "info")


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


def test_regression_means_passed_earlier_failed_later() -> None:
    def row(*passed: bool | None) -> dict[str, Any]:
        return {"variants": {v: {"scores": [{"scorer": "s", "passed": p}]} for v, p in zip(app.VARIANTS, passed)}}

    assert app.is_regression(row(True, False, False), "s")
    assert app.is_regression(row(False, True, False), "s")
    assert app.is_regression(row(True, None, False), "s")
    assert not app.is_regression(row(False, True, True), "s")
    assert not app.is_regression(row(None, None, False), "s")
    assert not app.is_regression(row(True, True, True), "other")


def test_markdown_escaping_keeps_report_text_literal() -> None:
    assert app.md("$x$ :red[boom] **b** [l](http://x)") == "\\$x\\$ \\:red\\[boom\\] \\*\\*b\\*\\* \\[l\\]\\(http\\://x\\)"
    assert app.badge("weird]") == ":gray-badge[WEIRD\\]]"


# ---------------------------------------------------------------- slow lane: a real browser


def _chromium() -> str | None:
    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")) if p), None)


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


def _browser_text_and_screenshot(chromium: str, url: str, shot: Path, needle: str, profile: Path, seconds: float = 60) -> str:
    """Drive headless Chromium over the DevTools protocol: wait until `needle` renders, then screenshot.

    Chromium's --dump-dom/--screenshot return before Streamlit's websocket has delivered the page
    (virtual time does not wait for websockets), so the one-shot flags only ever see the loading skeleton.
    """
    import asyncio
    import base64
    import re

    import websockets

    async def drive() -> str:
        proc = subprocess.Popen([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,2000", "--remote-debugging-port=0",
                                 f"--user-data-dir={profile}", "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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

                await call("Page.enable")
                await call("Page.navigate", url=url)
                text, deadline = "", time.monotonic() + seconds
                while needle not in text and time.monotonic() < deadline:
                    await asyncio.sleep(0.5)
                    text = (await call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)).get("result", {}).get("value", "")
                await asyncio.sleep(3)  # let charts and tables draw before the picture
                text = (await call("Runtime.evaluate", expression="document.body.innerText", returnByValue=True)).get("result", {}).get("value", "")
                shot.write_bytes(base64.b64decode((await call("Page.captureScreenshot", format="png"))["data"]))
                return str(text)
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    return asyncio.run(drive())


@pytest.mark.slow
def test_browser_shows_the_run_verdicts(reports: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH; install it with: apt-get install -y chromium")
    pytest.importorskip("websockets", reason="the browser test drives Chromium over the DevTools protocol with 'websockets' (a streamlit dependency)")
    port = _free_port()
    log = (tmp_path / "streamlit.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port), "--server.headless", "true",
         "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        _wait_for(f"http://127.0.0.1:{port}/_stcore/health", 60)
        shot = tmp_path / "overview.png"
        text = _browser_text_and_screenshot(chromium, f"http://127.0.0.1:{port}/?run={FULL}", shot, "Data hygiene", tmp_path / "profile")
        assert shot.stat().st_size > 10_000
        gates = json.loads((reports / FULL / "report.json").read_text(encoding="utf-8"))["gates"]
        assert FULL in text and "Gates" in text and gates["verdict"].upper() in text
        for check in gates["checks"]:
            assert check["id"] in text
        assert "Traceback" not in text
    finally:
        server.terminate()
        server.wait(timeout=20)
        log.close()
