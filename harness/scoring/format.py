"""The format scorer: is the output one JSON object that satisfies the suite's contract (strict), or does it
contain one (lenient)? A failure carries its class and the failing JSON path, so a report says what broke.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from harness.scoring.extract import Extraction
from harness.scoring.score import Score
from harness.scoring.spec import MetricSpec, ScoreFn, ScorerSpec, ScoringContext

if TYPE_CHECKING:
    from harness.suite.suite import Case, Suite

FAILURE_CLASSES = ("empty", "not_json", "truncated", "extra_text", "schema_violation")


def format_scorer() -> ScoreFn:
    """Strict and lenient format checks with a failure class and the failing JSON path."""

    def score(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
        if ext.obj is None:
            assert ext.problem is not None
            detail = {"failure": ext.problem}
            return [
                Score("format_strict", 0.0, f"{ext.problem}: {ext.detail}", detail),
                Score("format_lenient", 0.0, f"{ext.problem}: {ext.detail}", detail),
            ]
        errors = sorted(suite.validator().iter_errors(ext.obj), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            path = "$" + "".join(f"[{p!r}]" if isinstance(p, str) else f"[{p}]" for p in first.absolute_path)
            detail = {"failure": "schema_violation", "json_path": path, "errors": [e.message for e in errors[:5]]}
            why = f"schema_violation at {path}: {first.message}"
            return [Score("format_strict", 0.0, why, detail), Score("format_lenient", 0.0, why, detail)]
        if ext.strict:
            ok = "the whole output is one JSON object that satisfies the contract"
            return [Score("format_strict", 1.0, ok), Score("format_lenient", 1.0, ok)]
        return [
            Score("format_strict", 0.0, f"extra_text: {ext.detail}", {"failure": "extra_text"}),
            Score("format_lenient", 1.0, f"{ext.detail}; the object satisfies the contract"),
        ]

    return score


def failure_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """Strict-format failures by class, every class listed (0 when none), for the report's failure table."""
    failures: Counter[str] = Counter()
    for r in records:
        for s in r["scores"]:
            if s["scorer"] == "format_strict" and s["value"] == 0.0:
                failures[s["details"].get("failure", "unknown")] += 1
    return {c: failures.get(c, 0) for c in FAILURE_CLASSES}


def _factory(suite: Suite, context: ScoringContext) -> ScoreFn:
    return format_scorer()


SPEC = ScorerSpec(
    name="format",
    version="1",
    description="strict and lenient JSON format + contract validation",
    factory=_factory,
    metrics=(
        MetricSpec(
            "format_strict",
            True,
            "mean",
            "share of outputs that are exactly one valid JSON object",
            headline=True,
            flips=True,
        ),
        MetricSpec(
            "format_lenient",
            True,
            "mean",
            "share of outputs from which a valid JSON object can be extracted",
            headline=True,
            flips=True,
        ),
    ),
)
