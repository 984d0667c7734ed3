from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessInputError
from harness.suite.suite import load_suite
from tests.conftest import SUPPORT_VI


def test_shipped_suite_covers_every_cell() -> None:
    suite = load_suite(SUPPORT_VI)
    assert len(suite.cases) >= 90
    cells = Counter((c.expected["category"], c.expected["priority"]) for c in suite.cases)
    assert set(cells) == {(c, p) for c in ("billing", "shipping", "account") for p in ("low", "medium", "high")}
    assert min(cells.values()) >= 8
    assert all(c.reference is not None for c in suite.cases)
    assert suite.generation.max_new_tokens == 112  # every reference fits with 10% to spare (harness check --model)


def _problems(path: Path) -> str:
    with pytest.raises(HarnessInputError) as info:
        load_suite(path)
    return info.value.render()


def _rewrite_line(suite_dir: Path, lineno: int, text: str) -> None:
    cases = suite_dir / "cases.jsonl"
    lines = cases.read_text(encoding="utf-8").splitlines()
    lines[lineno - 1] = text
    cases.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_broken_jsonl_line_names_file_and_line(suite_copy: Path) -> None:
    _rewrite_line(suite_copy, 3, '{"id": "x", "prompt": ')
    msg = _problems(suite_copy)
    assert "cases.jsonl:3" in msg and "invalid JSON" in msg


def test_unknown_yaml_key_suggests_the_right_one(suite_copy: Path) -> None:
    path = suite_copy / "suite.yaml"
    path.write_text(path.read_text(encoding="utf-8") + "sytem_prompt: hi\n", encoding="utf-8")
    msg = _problems(suite_copy)
    assert "'sytem_prompt'" in msg and "unknown key" in msg and "did you mean 'system_prompt'" in msg


def test_every_problem_is_reported_at_once(suite_copy: Path) -> None:
    first = json.loads((suite_copy / "cases.jsonl").read_text(encoding="utf-8").splitlines()[0])
    dup = dict(first)
    bad_label = dict(first, id="bad-label", expected={"category": "refunds", "priority": "high"}, reference=None)
    del bad_label["reference"]
    unknown = dict(first, id="unknown-key", colour="red")
    with (suite_copy / "cases.jsonl").open("a", encoding="utf-8") as fh:
        for obj in (dup, bad_label, unknown):
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    msg = _problems(suite_copy)
    assert "3 problems" in msg
    assert "duplicate id" in msg
    assert "expected.category" in msg and "'refunds'" in msg
    assert "'colour'" in msg


def test_invalid_schema_is_reported_with_its_path(suite_copy: Path) -> None:
    schema = json.loads((suite_copy / "schema.json").read_text(encoding="utf-8"))
    schema["properties"]["priority"] = {"type": "strnig"}
    (suite_copy / "schema.json").write_text(json.dumps(schema), encoding="utf-8")
    msg = _problems(suite_copy)
    assert "schema.json" in msg and "invalid JSON Schema" in msg


def test_empty_suite_is_an_error(suite_copy: Path) -> None:
    (suite_copy / "cases.jsonl").write_text("\n", encoding="utf-8")
    assert "no cases" in _problems(suite_copy)


def test_reference_must_satisfy_contract(suite_copy: Path) -> None:
    first = json.loads((suite_copy / "cases.jsonl").read_text(encoding="utf-8").splitlines()[0])
    first["reference"]["extra"] = 1
    _rewrite_line(suite_copy, 1, json.dumps(first, ensure_ascii=False))
    msg = _problems(suite_copy)
    assert "cases.jsonl:1" in msg and "reference" in msg and "Additional properties" in msg


def test_undeclared_tag_and_missing_contract(suite_copy: Path) -> None:
    first = json.loads((suite_copy / "cases.jsonl").read_text(encoding="utf-8").splitlines()[0])
    first["tags"] = ["informl"]
    _rewrite_line(suite_copy, 1, json.dumps(first, ensure_ascii=False))
    (suite_copy / "schema.json").unlink()
    msg = _problems(suite_copy)
    assert "'informl' is not a declared slice" in msg
    assert "schema.json does not exist" in msg


def test_cli_check_exit_codes(suite_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(SUPPORT_VI)]) == 0
    assert "ok: support_vi" in capsys.readouterr().out
    _rewrite_line(suite_copy, 2, "not json")
    assert main(["check", str(suite_copy)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("harness: error:") and "cases.jsonl:2" in err and "Traceback" not in err
    assert main(["check", str(suite_copy / "nope")]) == 2
    assert "no such suite folder" in capsys.readouterr().err


def test_chat_adds_system_prompt() -> None:
    suite = load_suite(SUPPORT_VI)
    chat = suite.chat(suite.cases[0])
    assert chat[0] == {"role": "system", "content": suite.system_prompt}
    assert chat[-1]["role"] == "user"


def _with(suite_dir: Path, extra: str) -> Path:
    path = suite_dir / "suite.yaml"
    text = path.read_text(encoding="utf-8")
    if "scorers:" in extra:  # support_vi's own scorers and fluency block (its last lines) give way to the test's
        text = text.split("\nscorers:")[0] + "\n"
    path.write_text(text + extra, encoding="utf-8")
    return suite_dir


def test_unknown_scorer_is_an_input_error_with_did_you_mean(
    suite_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    msg = _problems(_with(suite_copy, "scorers: [format, fields, tonne, safety, safety]\n"))
    assert "key 'scorers'" in msg and "unknown scorer 'tonne'" in msg and "did you mean 'tone'" in msg
    assert (
        "known scorers: format, fields, tone, safety, degeneration, fluency, judge" in msg
        and "'safety' is listed more than once" in msg
    )
    assert main(["check", str(suite_copy)]) == 2 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("scorers: []\n", "must be a non-empty list of scorer names"),
        ("scorers: format\n", "must be a non-empty list of scorer names"),
        ("scorers: [format, judge]\n", "scorers lists judge but no judge is configured"),
        ("judge: {kind: endpoint, url: 'http://x', model: m, rubric: polite}\n", "scorers does not list judge"),
        ("scorers: [format, judge]\njudge: [endpoint]\n", "'judge'\": must be a mapping"),
    ],
)
def test_scorers_and_judge_must_agree(suite_copy: Path, extra: str, expected: str) -> None:
    msg = _problems(_with(suite_copy, extra))
    assert expected.replace('"', "") in msg.replace('"', ""), msg


def test_tone_scorer_needs_a_tone_contract(suite_copy: Path) -> None:
    path = suite_copy / "suite.yaml"
    text = path.read_text(encoding="utf-8").replace("tone: tone.yaml\n", "")
    path.write_text(text + "scorers: [format, tone]\n", encoding="utf-8")
    msg = _problems(suite_copy)
    assert "lists tone but the suite has no tone contract" in msg and "add tone: tone.yaml" in msg


def test_bad_judge_block_reports_every_problem_at_once(suite_copy: Path) -> None:
    block = "judge: {kind: endpoint, urll: 'http://x', model: 3, samples: two, rubric: polite}\n"
    msg = _problems(_with(suite_copy, "scorers: [format, judge]\n" + block))
    assert "key 'judge.urll'" in msg and "unknown key" in msg and "did you mean 'url'" in msg
    assert "key 'judge.model'" in msg and "must be str, got 3" in msg
    assert "key 'judge.samples'" in msg and "must be int, got 'two'" in msg


@pytest.mark.parametrize(
    ("block", "where", "expected"),
    [
        ("{kind: endpoint, model: m, rubric: r}", "judge.url", "must be an http(s) URL"),
        ("{kind: endpoint, url: 'ftp://x', model: m, rubric: r}", "judge.url", "must be an http(s) URL"),
        ("{kind: endpoint, url: 'http://x', rubric: r}", "judge.model", "is required for an endpoint judge"),
        (
            "{kind: endpoint, url: 'http://x', model: m, api_key_env: sk-1, rubric: r}",
            "judge.api_key_env",
            "not the key",
        ),
        (
            "{kind: endpoint, url: 'http://x', model: m, temperature: 0, rubric: r}",
            "judge.temperature",
            "temperature 0",
        ),
        ("{kind: local, rubric: r}", "judge.path", "is required for a local judge"),
        ("{kind: local, path: m, url: 'http://x', rubric: r}", "judge.url", "only for kind: endpoint"),
        ("{kind: remote, rubric: r}", "judge.kind", "'remote' is not allowed"),
        ("{kind: endpoint, url: 'http://x', model: m}", "judge.rubric", "missing"),
        ("{kind: endpoint, url: 'http://x', model: m, rubric: ' '}", "judge.rubric", "is empty"),
        ("{url: 'http://x', model: m, rubric: r}", "judge.kind", "missing"),
    ],
)
def test_judge_values_are_checked_at_load(suite_copy: Path, block: str, where: str, expected: str) -> None:
    msg = _problems(_with(suite_copy, f"scorers: [format, judge]\njudge: {block}\n"))
    assert f"key '{where}'" in msg and expected in msg, msg


def test_a_valid_judge_block_is_kept_as_written(suite_copy: Path) -> None:
    block = "{kind: local, path: ../models/judge, samples: 1, temperature: 0, rubric: polite, field: answer}"
    suite = load_suite(_with(suite_copy, f"scorers: [format, fields, tone, safety, judge]\njudge: {block}\n"))
    assert suite.scorers == ("format", "fields", "tone", "safety", "judge")
    assert suite.judge == {
        "kind": "local",
        "path": "../models/judge",
        "samples": 1,
        "temperature": 0.0,
        "rubric": "polite",
        "field": "answer",
    }
    assert isinstance(suite.judge["temperature"], float)
