"""The sign-off ledger: a round trip verifies clean, and every kind of tampering is reported by line."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from harness.errors import HarnessInputError
from harness.io import sha256_file
from harness.verdict.ledger import GENESIS, HEAD_FILE, LEDGER_FILE, append_signoff, ledger_history, verify_ledger


def _reports(tmp_path: Path, runs: tuple[str, ...] = ("run-a", "run-b")) -> Path:
    reports = tmp_path / "reports"
    for i, run in enumerate(runs):
        (reports / run).mkdir(parents=True)
        verdict = "pass" if i % 2 == 0 else "fail"
        (reports / run / "report.json").write_text(
            json.dumps({"kind": "pipeline", "run_id": run, "gates": {"verdict": verdict}}), encoding="utf-8"
        )
    return reports


def _signed(tmp_path: Path, n: int = 4) -> Path:
    reports = _reports(tmp_path)
    for i in range(n):
        append_signoff(
            reports, "run-a" if i % 2 == 0 else "run-b", f"reviewer {i}", "approve" if i % 3 else "reject", f"note {i}"
        )
    return reports


def _lines(reports: Path) -> list[str]:
    return (reports / LEDGER_FILE).read_text(encoding="utf-8").splitlines(keepends=True)


def _write_lines(reports: Path, lines: list[str]) -> None:
    (reports / LEDGER_FILE).write_text("".join(lines), encoding="utf-8")


def test_round_trip(tmp_path: Path) -> None:
    reports = _reports(tmp_path)
    assert verify_ledger(reports) == [] and ledger_history(reports) == []
    first = append_signoff(reports, "run-a", "  Lan Nguyễn ", "approve", "gates pass; tone reviewed")
    second = append_signoff(reports, "run-b", "Minh", "reject", "")
    assert first["seq"] == 1 and first["prev_hash"] == GENESIS and second["prev_hash"] == first["hash"]
    assert first["by"] == "Lan Nguyễn" and first["verdict"] == "pass" and second["verdict"] == "fail"
    assert first["report_sha256"] == sha256_file(reports / "run-a" / "report.json")
    assert first["at"].endswith("+00:00")
    assert verify_ledger(reports) == []
    assert ledger_history(reports) == [first, second]
    assert ledger_history(reports, "run-b") == [second]
    assert json.loads((reports / HEAD_FILE).read_text(encoding="utf-8")) == {"entries": 2, "last_hash": second["hash"]}
    assert "Lan Nguyễn" in (reports / LEDGER_FILE).read_text(encoding="utf-8")


def test_report_without_gates_signs_with_null_verdict(tmp_path: Path) -> None:
    reports = tmp_path / "reports"
    (reports / "old").mkdir(parents=True)
    (reports / "old" / "report.json").write_text('{"kind": "pipeline"}', encoding="utf-8")
    assert append_signoff(reports, "old", "Lan", "approve", "")["verdict"] is None


def test_edited_note_is_detected(tmp_path: Path) -> None:
    reports = _signed(tmp_path)
    lines = _lines(reports)
    lines[1] = lines[1].replace("note 1", "note one")
    _write_lines(reports, lines)
    problems = verify_ledger(reports)
    assert len(problems) == 1 and f"{LEDGER_FILE}:2 " in problems[0] and "edited" in problems[0]


def test_edited_and_rehashed_entry_breaks_the_next_link(tmp_path: Path) -> None:
    from harness.verdict.ledger import entry_hash

    reports = _signed(tmp_path)
    lines = _lines(reports)
    entry = json.loads(lines[1])
    entry["decision"] = "approve" if entry["decision"] == "reject" else "reject"
    entry["hash"] = entry_hash(entry)
    lines[1] = json.dumps(entry) + "\n"
    _write_lines(reports, lines)
    problems = verify_ledger(reports)
    assert any(f"{LEDGER_FILE}:3 " in p and "prev_hash" in p for p in problems)


def test_swapped_lines_are_detected(tmp_path: Path) -> None:
    reports = _signed(tmp_path)
    lines = _lines(reports)
    lines[1], lines[2] = lines[2], lines[1]
    _write_lines(reports, lines)
    problems = verify_ledger(reports)
    assert any(f"{LEDGER_FILE}:2 " in p and "seq is 3, expected 2" in p for p in problems)
    assert any(f"{LEDGER_FILE}:3 " in p and "prev_hash" in p for p in problems)


def test_deleted_middle_line_is_detected(tmp_path: Path) -> None:
    reports = _signed(tmp_path)
    lines = _lines(reports)
    del lines[1]
    _write_lines(reports, lines)
    problems = verify_ledger(reports)
    assert any(f"{LEDGER_FILE}:2 " in p and "removed" in p for p in problems)
    assert any(HEAD_FILE in p and "records 4 entries" in p for p in problems)


def test_deleted_last_line_is_detected(tmp_path: Path) -> None:
    reports = _signed(tmp_path)
    _write_lines(reports, _lines(reports)[:-1])
    problems = verify_ledger(reports)
    assert len(problems) == 1 and HEAD_FILE in problems[0] and "truncated" in problems[0]


def test_unparseable_line_is_detected(tmp_path: Path) -> None:
    reports = _signed(tmp_path)
    lines = _lines(reports)
    lines[2] = lines[2][:40] + "\n"
    _write_lines(reports, lines)
    problems = verify_ledger(reports)
    assert any(f"{LEDGER_FILE}:3:" in p and "not valid JSON" in p for p in problems)


def test_report_changed_after_signoff_is_detected(tmp_path: Path) -> None:
    reports = _signed(tmp_path)
    report = reports / "run-b" / "report.json"
    report.write_text(report.read_text(encoding="utf-8").replace('"fail"', '"pass"'), encoding="utf-8")
    problems = verify_ledger(reports)
    assert problems and all("run-b" in p and "changed after this sign-off" in p for p in problems)
    assert {p.split(" ")[0] for p in problems} == {f"{reports / LEDGER_FILE}:2", f"{reports / LEDGER_FILE}:4"}
    assert verify_ledger(reports, check_reports=False) == []


def test_damaged_ledger_refuses_new_signoffs(tmp_path: Path) -> None:
    reports = _signed(tmp_path)
    _write_lines(reports, _lines(reports)[:-1])
    before = (reports / LEDGER_FILE).read_bytes()
    with pytest.raises(HarnessInputError, match="damaged"):
        append_signoff(reports, "run-a", "Lan", "approve", "")
    assert (reports / LEDGER_FILE).read_bytes() == before


@pytest.mark.parametrize(
    ("run_id", "by", "decision", "needle"),
    [
        ("run-a", "Lan", "approved", "use one of: approve, reject"),
        ("run-a", "   ", "approve", "by: is empty"),
        ("no-such-run", "Lan", "approve", "does not exist"),
        ("../x", "Lan", "approve", "not a plain folder name"),
        ("..", "Lan", "approve", "not a plain folder name"),
        ("/etc", "Lan", "approve", "not a plain folder name"),
        ("", "Lan", "approve", "run id: is empty"),
    ],
)
def test_bad_signoff_is_refused(tmp_path: Path, run_id: str, by: str, decision: str, needle: str) -> None:
    reports = _reports(tmp_path)
    with pytest.raises(HarnessInputError, match="fix:") as info:
        append_signoff(reports, run_id, by, decision, "")
    assert needle in str(info.value)
    assert not (reports / LEDGER_FILE).exists()


def test_symlink_out_of_reports_is_refused(tmp_path: Path) -> None:
    reports = _reports(tmp_path)
    outside = _reports(tmp_path / "elsewhere", ("evil",)) / "evil"
    (reports / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(HarnessInputError, match="not directly inside"):
        append_signoff(reports, "link", "Lan", "approve", "")


def _append_many(reports: str, who: str, n: int) -> None:
    for i in range(n):
        append_signoff(Path(reports), "run-a", who, "approve", f"{who} {i}")


def test_concurrent_appends_keep_one_chain(tmp_path: Path) -> None:
    reports = _reports(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(str(reports), who, 20)) for who in ("p1", "p2")]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    history = ledger_history(reports)
    assert [e["seq"] for e in history] == list(range(1, 41))
    assert sorted(e["note"] for e in history) == sorted(f"{who} {i}" for who in ("p1", "p2") for i in range(20))
    assert verify_ledger(reports) == []
