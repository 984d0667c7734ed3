"""The decision block that leads summary.md (and `make run`'s output)."""

from __future__ import annotations

from typing import Any

from harness.runs.summary import decision


def _report(verdict: str, checks: list[dict[str, Any]], champion: str | None = None) -> dict[str, Any]:
    return {
        "run_id": "r1",
        "variant_order": ["base", "adapter"],
        "variants": {"base": {"kind": "base"}, "adapter": {"kind": "adapter"}},
        "headline": {
            "base": {"format_strict": 0.0, "safety": 0.9, "tone": 0.5},
            "adapter": {"format_strict": 0.92, "safety": 0.85, "tone": 0.502},
        },
        "findings": [],
        "gates": {"verdict": verdict, "checks": checks, "champion": champion},
    }


def _c(cid: str, verdict: str, **extra: Any) -> dict[str, Any]:
    return {"id": cid, "verdict": verdict, "explanation": f"why {cid}", **extra}


def test_a_failing_run_names_the_deciding_checks_and_what_moved() -> None:
    checks = [_c("adapter.format-floor", "pass"), _c("adapter.safety", "fail"), _c("adapter.x", "not_applicable")]
    text = "\n".join(decision(_report("fail", checks)))
    assert text.startswith("## Decision: **FAIL**")
    assert "Decided by 1 fail check(s) of 2 that apply" in text and "`adapter.safety`: why adapter.safety" in text
    assert "format-floor" not in text  # a passing check did not decide
    assert "improved format_strict 0.0% -> 92.0%" in text and "regressed safety 90.0% -> 85.0%" in text
    assert "tone" not in text  # 0.2 points is not a move
    assert "no champion yet" in text and "http://localhost:8501/?run=r1" in text


def test_a_passing_run_with_a_champion_reports_the_champion_figures() -> None:
    champ = _c("adapter.format-vs-champion", "pass", baseline="champion", n=154, value=0.92, baseline_value=0.9)
    text = "\n".join(decision(_report("pass", [_c("adapter.format-floor", "pass"), champ], champion="r0")))
    assert "## Decision: **PASS**" in text and "Every check that applies passed (2 of 2" in text
    assert "adapter.format-vs-champion: 92.0% vs champion r0 90.0% (pass)" in text
    assert "no champion yet" not in text


def test_an_inconclusive_run_lists_the_inconclusive_checks() -> None:
    text = "\n".join(decision(_report("inconclusive", [_c("a.floor", "inconclusive"), _c("a.b", "pass")])))
    assert "Decided by 1 inconclusive check(s)" in text and "`a.floor`" in text
