"""The degeneration scorer flags loops and stutters with the quoted span, never a reference answer, and its gate
bounds the share of degenerate outputs (a point estimate; zero cases scored fails)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessInputError
from harness.scoring.degeneration import METRIC, degeneration, find_repeats, repeated_share
from harness.scoring.extract import extract_json
from harness.scoring.registry import build_scorers, case_metrics, headline_metrics, metric_spec, score_case
from harness.suite.suite import load_suite
from harness.verdict.gates import evaluate_gates, load_policy
from tests.conftest import SUPPORT_VI

SUITE = load_suite(SUPPORT_VI)
LOOP = "Dạ, bạn vui lòng gửi mã đơn, bạn vui lòng gửi mã đơn, bạn vui lòng gửi mã đơn, bạn vui lòng gửi mã đơn"


def _references() -> list[tuple[str, str]]:
    out = []
    for name in ("cases.jsonl", "adversarial.jsonl"):
        for line in (SUPPORT_VI / name).read_text(encoding="utf-8").splitlines():
            case = json.loads(line)
            if case.get("reference"):
                out.append((case["id"], json.dumps(case["reference"], ensure_ascii=False)))
                out.append((case["id"] + ":answer", str(case["reference"].get("answer", ""))))
    return out


# --- passing outputs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case_id", "text"), _references(), ids=lambda x: x if len(x) < 40 else None)
def test_no_support_vi_reference_answer_is_degenerate(case_id: str, text: str) -> None:
    s = degeneration(text)
    assert s.value == 1.0, (case_id, s.explanation)


@pytest.mark.parametrize(
    "text",
    [
        "Mình rất tiếc vì đơn hàng của bạn bị giao chậm. Bạn vui lòng gửi mã đơn để mình kiểm tra ngay nhé.",
        "Bạn cứ từ từ, mình sẽ kiểm tra nhanh nhanh và báo lại cho bạn trong hôm nay.",  # reduplication
        "Xinh xinh quá! Bạn đợi mình một chút, mình kiểm tra rồi báo bạn ngay.",
        "Thank you for reaching out. Please send the order number and we will check it today.",
        "Mã đơn 1 1 2 của bạn đã được ghi nhận.",  # repeated digits are not a stutter
        "Bạn ơi, bạn. Bạn vui lòng chờ.",  # the same word across punctuation is not doubled
        "",
    ],
)
def test_normal_text_and_reduplication_pass(text: str) -> None:
    s = degeneration(text)
    assert s.value == 1.0 and s.scorer == METRIC, s.explanation


def test_one_or_two_doubled_words_are_noted_not_flagged() -> None:
    s = degeneration("Bạn cứ từ từ, mình vào mục mục đơn giúp bạn.")
    assert s.value == 1.0 and s.details["doubled_words"] == ["từ từ", "mục mục"]
    assert "từ từ" in s.explanation


# --- failing outputs ------------------------------------------------------------------------------------


def test_a_loop_is_flagged_quoting_the_span_and_the_count() -> None:
    s = degeneration(LOOP)
    assert s.value == 0.0 and s.passed is False
    assert "'bạn vui lòng gửi mã đơn'" in s.explanation and "occurs 4 times in a row" in s.explanation
    assert s.details | {"rule": "loop", "span": "bạn vui lòng gửi mã đơn", "repeats": 4, "unit_words": 6} == s.details


def test_a_repeated_word_in_a_repeated_phrase_is_flagged() -> None:
    s = degeneration("Mình rất tiếc vào mục mục đơn, mục mục đơn, mục mục đơn")
    assert s.value == 0.0 and s.details["span"] == "mục mục đơn" and s.details["repeats"] == 3
    assert "'mục mục đơn'" in s.explanation and "3 times" in s.explanation


def test_a_repeated_json_prefix_is_flagged_even_though_the_json_breaks() -> None:
    text = '{"category": "shipping", "priority": "high", ' * 3 + '"category": "ship'
    assert extract_json(text).obj is None
    s = degeneration(text)
    assert s.value == 0.0 and s.details["rule"] == "loop"
    assert 'category": "shipping", "priority": "high' in s.explanation and s.details["repeats"] >= 3
    nested = degeneration('{"answer": "Dạ {"answer": "Dạ {"answer": "Dạ {"answer": "Dạ')
    assert nested.value == 0.0 and nested.details["rule"] == "short_loop" and nested.details["repeats"] == 4


def test_near_consecutive_repeats_count() -> None:
    s = degeneration("Bạn gửi mã đơn nhé, gửi mã đơn ạ, gửi mã đơn nhé, gửi mã đơn")
    assert s.value == 0.0 and "a few words between repeats" in s.explanation and s.details["span"] == "gửi mã đơn"


def test_short_units_need_more_repeats() -> None:
    assert degeneration("cảm ơn cảm ơn cảm ơn bạn").value == 0.0  # 2 words, 3 times
    assert degeneration("cảm ơn cảm ơn bạn").value == 1.0
    assert degeneration("rất rất rất tốt").value == 1.0  # 1 word needs 4 in a row
    assert degeneration("rất rất rất rất tốt").details["repeats"] == 4


def test_a_loop_with_small_variations_trips_the_repetition_share() -> None:
    names = ["An", "Bình", "Chi", "Dũng", "Em", "Giang", "Hà", "Khoa"]
    text = " ".join(
        f"Mình đã ghi nhận yêu cầu của bạn số {i} và sẽ chuyển bộ phận kỹ thuật kiểm tra cho anh {name}."
        for i, name in enumerate(names)
    )
    assert find_repeats(text.casefold().replace(".", " ").split()) == []  # no exact loop: the numbers and names vary
    s = degeneration(text)
    assert s.value == 0.0 and s.details["rule"] == "repetition_share"
    assert "'Mình đã ghi nhận', occurs 8 times" in s.explanation
    assert repeated_share("a b c d e f".split()) == 0.0


def test_a_stutter_of_three_doubled_words_is_flagged() -> None:
    s = degeneration("Bạn vào mục mục đơn rồi chọn chọn hủy và và gửi lại.")
    assert s.value == 0.0 and s.details["rule"] == "stutter"
    assert "'mục mục', 'chọn chọn', 'và và'" in s.explanation


# --- registry integration -------------------------------------------------------------------------------


def test_the_scorer_runs_by_default_and_its_explanation_reaches_the_case_row() -> None:
    assert "degeneration" in SUITE.scorers and METRIC in headline_metrics(SUITE.scorers)
    assert METRIC in case_metrics(SUITE.scorers)
    m = metric_spec(METRIC)
    assert m is not None and m.higher_is_better and m.aggregation == "mean" and m.flips
    case = SUITE.cases[0]
    row = [s.to_json() for s in score_case(LOOP, extract_json(LOOP), case, SUITE, build_scorers(SUITE))]
    mine = next(s for s in row if s["scorer"] == METRIC)
    assert mine["passed"] is False and "bạn vui lòng gửi mã đơn" in mine["explanation"]
    assert mine["details"]["repeats"] == 4


# --- the gate -------------------------------------------------------------------------------------------


def _rows(failing: int, n: int = 100, scored: bool = True) -> list[dict[str, Any]]:
    def score(i: int) -> dict[str, Any]:
        bad = i < failing
        return {"scorer": METRIC, "value": (0.0 if bad else 1.0) if scored else None, "explanation": f"case {i}"}

    return [
        {
            "id": f"c{i}",
            "case_hash": f"h{i}",
            "tags": [],
            "variants": {"base": {"scores": []}, "adapter": {"scores": [score(i)]}},
        }
        for i in range(n)
    ]


def _policy(tmp_path: Path, check: str) -> Path:
    path = tmp_path / "gates.yaml"
    path.write_text(f"version: 1\nchecks:\n  - {check}\n", encoding="utf-8")
    return path


GATE = "{id: no-degeneration, kind: threshold, metric: non_degenerate, max_fail_rate: 0.02, variants: [adapter]}"


@pytest.mark.parametrize(("failing", "verdict"), [(0, "pass"), (2, "pass"), (3, "fail"), (5, "fail")])
def test_the_gate_bounds_the_degenerate_share(tmp_path: Path, failing: int, verdict: str) -> None:
    g = evaluate_gates(load_policy(_policy(tmp_path, GATE)), {}, _rows(failing))
    (check,) = g["checks"]
    assert check["verdict"] == verdict and g["verdict"] == verdict
    assert check["value"] == failing / 100 and check["threshold"] == 0.02 and check["n"] == 100
    assert f"{failing} of 100 cases fail non_degenerate" in check["explanation"]
    assert [w["id"] for w in check["worst_cases"]] == [f"c{i}" for i in range(min(failing, 5))]


def test_zero_cases_scored_fails_the_gate(tmp_path: Path) -> None:
    g = evaluate_gates(load_policy(_policy(tmp_path, GATE)), {}, _rows(0, scored=False))
    (check,) = g["checks"]
    assert check["verdict"] == "fail" and check["n"] == 0 and "zero cases scored" in check["explanation"]


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("{id: x, kind: threshold, metric: non_degenerate, max_fail_rate: 1.5}", "out of range"),
        ("{id: x, kind: threshold, metric: non_degenerate, max_fail_rate: 0.1, min_lower_bound: 0.5}", "together"),
        ("{id: x, kind: zero_failures, metric: non_degenerate, max_fail_rate: 0.1}", "means nothing"),
        ("{id: x, kind: threshold, metric: non_degenerate}", "max_fail_rate (0..1)"),
    ],
)
def test_bad_max_fail_rate_is_rejected(tmp_path: Path, check: str, message: str) -> None:
    with pytest.raises(HarnessInputError) as exc:
        load_policy(_policy(tmp_path, check))
    assert message in exc.value.render()


def test_support_vi_policy_has_the_degeneration_gate() -> None:
    policy = load_policy(SUPPORT_VI / "gates.yaml")
    check = next(c for c in policy.checks if c.id == "no-degeneration")
    assert check.kind == "threshold" and check.metric == METRIC and check.max_fail_rate == 0.02
