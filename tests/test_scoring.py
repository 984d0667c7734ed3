from __future__ import annotations

import json

import pytest

from harness.extract import extract_json
from harness.scoring import SCORERS, Registry, ScorerSpec, aggregate, format_scorer, score_case
from harness.suite import load_suite
from tests.conftest import SUPPORT_VI

SUITE = load_suite(SUPPORT_VI)
CASE = SUITE.cases[0]
GOOD = json.dumps({"category": CASE.expected["category"], "priority": CASE.expected["priority"], "answer": "Mình đã ghi nhận. Vui lòng cung cấp mã đơn."}, ensure_ascii=False)


def _format(text: str) -> dict[str, object]:
    scores = {s.scorer: s for s in format_scorer()(text, extract_json(text), CASE, SUITE)}
    return {"strict": scores["format_strict"].value, "lenient": scores["format_lenient"].value, "why": scores["format_strict"].explanation, "details": scores["format_strict"].details}


@pytest.mark.parametrize(
    ("text", "strict", "lenient", "failure"),
    [
        (GOOD, 1.0, 1.0, None),
        ("  \n", 0.0, 0.0, "empty"),
        ("Xin chào, mình có thể giúp gì?", 0.0, 0.0, "not_json"),
        ('{"category": "billing", "answer": "Mình đã ghi', 0.0, 0.0, "truncated"),
        ("Here you go:\n" + GOOD + "\nThanks", 0.0, 1.0, "extra_text"),
        ('{"category": "refunds", "priority": "high", "answer": "x"}', 0.0, 0.0, "schema_violation"),
    ],
)
def test_format_failure_taxonomy(text: str, strict: float, lenient: float, failure: str | None) -> None:
    got = _format(text)
    assert (got["strict"], got["lenient"]) == (strict, lenient)
    assert got["details"].get("failure") == failure


def test_schema_violation_names_the_json_path() -> None:
    got = _format('{"category": "billing", "priority": "urgent", "answer": "x"}')
    assert got["details"]["json_path"] == "$['priority']"
    assert "urgent" in str(got["why"])


def test_braces_inside_strings_do_not_fool_extraction() -> None:
    text = '{"category": "account", "priority": "low", "answer": "dùng ký tự } và { thoải mái"}'
    ext = extract_json(text)
    assert ext.strict and ext.obj is not None and ext.obj["answer"].endswith("thoải mái")


def test_field_scores_and_aggregate_metrics() -> None:
    records = []
    for i, case in enumerate(SUITE.cases[:9]):
        wrong = i % 3 == 0
        obj = dict(case.reference or {})
        if wrong:
            obj["priority"] = "low" if case.expected["priority"] != "low" else "high"
        text = json.dumps(obj, ensure_ascii=False) if i != 8 else "no json"
        ext = extract_json(text)
        records.append({"expected": case.expected, "tags": list(case.tags), "scores": [s.to_json() for s in score_case(text, ext, case, SUITE)]})
    metrics = aggregate(records, SUITE)["overall"]
    assert metrics["format_strict"]["n"] == 9 and metrics["format_strict"]["passed"] == 8
    assert metrics["failures"]["not_json"] == 1
    prio = metrics["fields"]["priority"]
    assert prio["accuracy"]["passed"] == 5  # 3 deliberately wrong, 1 unparsable
    assert "<missing>" in prio["confusion"]["labels"]
    lo, hi = metrics["format_strict"]["ci95"]
    assert lo < 8 / 9 < hi
    assert 0.0 <= prio["macro_f1"] <= 1.0


def test_registry_rejects_clash_and_suggests_names() -> None:
    reg = Registry("scorer")
    spec = ScorerSpec("format", format_scorer, "1", True, "mean", "x")
    reg.register(spec)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(spec)
    with pytest.raises(KeyError, match="did you mean 'format'"):
        reg.get("fromat")
    assert "format" in SCORERS.names() and "fields" in SCORERS.names()
