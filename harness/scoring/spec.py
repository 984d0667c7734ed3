"""What a scorer declares: its factory, version and metrics. Its own module so scorer modules can declare
their registry entry without importing the registry (which imports them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from harness.scoring.extract import Extraction
from harness.scoring.score import Score

if TYPE_CHECKING:
    from harness.suite.suite import Case, Suite

ScoreFn = Callable[[str, Extraction, "Case", "Suite"], list[Score]]


@dataclass(frozen=True)
class ScoringContext:
    """Per-run configuration that is not in the suite's files: canaries planted in training, the judge settings."""

    canaries: tuple[str, ...] = ()
    judge: Mapping[str, Any] | None = None  # the suite's validated `judge:` block


Factory = Callable[["Suite", ScoringContext], ScoreFn]


def rate(values: list[float | None]) -> dict[str, Any]:
    """Mean over scored cases with its Wilson 95% interval; unscored cases are counted, not averaged."""
    from harness.stats import wilson

    scored = [v for v in values if v is not None]
    n, k = len(scored), sum(1 for v in scored if v >= 1.0)
    ci = wilson(k, n)
    return {
        "n": n,
        "passed": k,
        "unscored": len(values) - n,
        "value": k / n if n else None,
        "ci95": list(ci) if ci else None,
    }


# How per-case values of a metric become one suite-level number. "macro-F1" is not computed from per-case
# values: the fields scorer derives it from predictions and expectations (see harness.scoring.fields).
AGGREGATIONS: Mapping[str, Callable[[list[float | None]], dict[str, Any]]] = {"mean": rate}
DERIVED_AGGREGATIONS = ("macro-F1",)


@dataclass(frozen=True)
class MetricSpec:
    """One metric a scorer emits (or a family of them, by pattern such as "tone:*") and how it is read.

    headline: a column of the comparison table; flips: cases that flip pass/fail are listed per change.
    A pattern names a family of per-rule scores, so it can be neither (a column needs one fixed name).
    """

    name: str
    higher_is_better: bool
    aggregation: str
    description: str
    headline: bool = False
    flips: bool = False

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS and self.aggregation not in DERIVED_AGGREGATIONS:
            known = ", ".join([*AGGREGATIONS, *DERIVED_AGGREGATIONS])
            raise ValueError(f"metric {self.name!r}: aggregation {self.aggregation!r} is not one of {known}")
        if self.is_pattern and (self.headline or self.flips):
            raise ValueError(
                f"metric {self.name!r} is a pattern: it cannot be a headline or flip metric; declare a fixed name"
            )

    @property
    def is_pattern(self) -> bool:
        return any(ch in self.name for ch in "*?[")

    def matches(self, score_name: str) -> bool:
        return fnmatchcase(score_name, self.name) if self.is_pattern else score_name == self.name


@dataclass(frozen=True)
class ScorerSpec:
    """A scorer's registry entry. The version is part of every cached score key: bump it when scores change."""

    name: str
    version: str
    description: str
    factory: Factory
    metrics: tuple[MetricSpec, ...] = field(default=())

    def __post_init__(self) -> None:
        names = [m.name for m in self.metrics]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"scorer {self.name!r} declares the metric(s) {', '.join(twice)} more than once")
