"""The scorer registry: one entry per scorer module, and everything derived from what those entries declare.

A scorer is a factory (suite, context) -> a pure function (output text, extraction, case, suite) -> Scores.
"Could not score" is explicit (value None) and is left out of averages, never counted as a silent zero.
Each entry declares its metrics (direction, aggregation, whether they are headline and flip metrics), so adding
a scorer is one module plus one line in SCORERS; aggregation, the headline, flips and the report's metric
definitions follow from it. The registry is built once from imports: nothing registers itself.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessInputError, Problem
from harness.scoring.degeneration import SPEC as DEGENERATION
from harness.scoring.extract import Extraction
from harness.scoring.fields import MISSING, field_scorer, field_summary
from harness.scoring.fields import SPEC as FIELDS
from harness.scoring.fluency import SPEC as FLUENCY
from harness.scoring.format import FAILURE_CLASSES, failure_counts, format_scorer
from harness.scoring.format import SPEC as FORMAT
from harness.scoring.judge import SPEC as JUDGE
from harness.scoring.safety import SPEC as SAFETY
from harness.scoring.safety import safety_scorer
from harness.scoring.score import Score
from harness.scoring.spec import AGGREGATIONS, MetricSpec, ScoreFn, ScorerSpec, ScoringContext, rate
from harness.scoring.tone import SPEC as TONE
from harness.suite.suite import DEFAULT_SCORERS

if TYPE_CHECKING:
    from harness.suite.suite import Case, Suite

__all__ = [
    "DEFAULT_SCORERS",
    "FAILURE_CLASSES",
    "METRICS",
    "MISSING",
    "SCORERS",
    "MetricSpec",
    "Registry",
    "ReportedMetric",
    "Score",
    "ScoreFn",
    "ScorerSpec",
    "ScoringContext",
    "UnknownScorerError",
    "aggregate",
    "build_scorers",
    "case_metrics",
    "field_scorer",
    "flip_metrics",
    "format_scorer",
    "headline_metrics",
    "metric_definitions",
    "metric_problem",
    "metric_spec",
    "rate",
    "safety_scorer",
    "score_case",
    "scorer_versions",
]


class UnknownScorerError(HarnessInputError, KeyError):
    """A scorer name the registry does not hold. A KeyError for lookups, a HarnessInputError for the CLI."""

    def __str__(self) -> str:
        return self.render()


class Registry:
    """An immutable name -> ScorerSpec mapping in declaration order. A clash raises when it is built; a miss
    answers with the close name and every available one."""

    __slots__ = ("kind", "_items")

    def __init__(self, specs: Iterable[ScorerSpec], kind: str = "scorer") -> None:
        items: dict[str, ScorerSpec] = {}
        owner: dict[str, str] = {}
        for spec in specs:
            if spec.name in items:
                raise ValueError(f"{kind} {spec.name!r} is declared twice; give each {kind} a unique name")
            for m in spec.metrics:
                if m.name in owner:
                    raise ValueError(
                        f"metric {m.name!r} is declared by both {owner[m.name]!r} and {spec.name!r}; "
                        "a metric has one owner"
                    )
                owner[m.name] = spec.name
            items[spec.name] = spec
        self.kind = kind
        self._items = MappingProxyType(items)

    def get(self, name: str) -> ScorerSpec:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise UnknownScorerError(
                Problem(f"{self.kind} {name!r}", "is not registered", f"{hint}available: {', '.join(self._items)}")
            )
        return self._items[name]

    def resolve(self, names: Sequence[str]) -> tuple[ScorerSpec, ...]:
        """The specs of `names`, in that order; every unknown name is reported at once."""
        problems: list[Problem | str] = []
        specs: list[ScorerSpec] = []
        for name in names:
            try:
                specs.append(self.get(name))
            except UnknownScorerError as exc:
                problems.extend(exc.problems)
        if problems:
            raise UnknownScorerError(problems)
        return tuple(specs)

    def in_order(self, names: Sequence[str]) -> tuple[ScorerSpec, ...]:
        """The specs of `names` in registry order: headline and flip columns do not follow a suite's listing order."""
        wanted = set(names)
        self.resolve(names)
        return tuple(spec for spec in self._items.values() if spec.name in wanted)

    def names(self) -> tuple[str, ...]:
        return tuple(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[ScorerSpec]:
        return iter(self._items.values())

    def __len__(self) -> int:
        return len(self._items)


SCORERS = Registry((FORMAT, FIELDS, TONE, SAFETY, DEGENERATION, FLUENCY, JUDGE))


def _names(names: Sequence[str] | None) -> tuple[str, ...]:
    return DEFAULT_SCORERS if names is None else tuple(names)


def scorer_versions(names: Sequence[str] | None = DEFAULT_SCORERS, registry: Registry = SCORERS) -> dict[str, str]:
    """name -> version for the scorers that ran; part of every cached score key and of the report."""
    return {spec.name: spec.version for spec in registry.resolve(_names(names))}


def headline_metrics(
    scorer_names: Sequence[str] | None = DEFAULT_SCORERS, registry: Registry = SCORERS
) -> tuple[str, ...]:
    """The comparison table's score columns (read from metrics["overall"]["scores"]), in registry order.

    Per-label accuracy and macro-F1 are not listed: they come from metrics["overall"]["fields"].
    """
    return tuple(m.name for spec in registry.in_order(_names(scorer_names)) for m in spec.metrics if m.headline)


def flip_metrics(scorer_names: Sequence[str] | None = DEFAULT_SCORERS, registry: Registry = SCORERS) -> tuple[str, ...]:
    """The scores whose per-case pass/fail flips are listed for each change, in registry order."""
    return tuple(m.name for spec in registry.in_order(_names(scorer_names)) for m in spec.metrics if m.flips)


def metric_definitions(
    scorer_names: Sequence[str] | None = DEFAULT_SCORERS, registry: Registry = SCORERS
) -> dict[str, dict[str, Any]]:
    """What each metric (or family, by pattern) means, for a report: JSON-ready, in registry order."""
    return {
        m.name: {
            "name": m.name,
            "scorer": spec.name,
            "higher_is_better": m.higher_is_better,
            "aggregation": m.aggregation,
            "headline": m.headline,
            "flips": m.flips,
            "description": m.description,
        }
        for spec in registry.in_order(_names(scorer_names))
        for m in spec.metrics
    }


def metric_spec(
    score_name: str, scorer_names: Sequence[str] | None = None, registry: Registry = SCORERS
) -> MetricSpec | None:
    """The declaration behind a score name: an exact name wins over a pattern ("tone:judge" over "tone:*")."""
    specs = registry.in_order(_names(scorer_names)) if scorer_names is not None else tuple(registry)
    declared = [m for spec in specs for m in spec.metrics]
    exact = next((m for m in declared if not m.is_pattern and m.name == score_name), None)
    return exact or next((m for m in declared if m.is_pattern and m.matches(score_name)), None)


# What a pattern metric stands for per case: a gate reads per-case scores, so it names one of these.
SAFETY_CHECKS = ("safety:pii", "safety:toxicity", "safety:injection", "safety:refusal", "safety:canary")
TONE_RULES = ("tone:forbidden", "tone:length", "tone:shouting", "tone:chrf")
SUITE_LEVEL_METRICS = ("field_accuracy", "field_macro_f1")  # computed over the suite; no per-case value


def case_metrics(
    scorer_names: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    tone_rules: Sequence[str] | None = None,
    registry: Registry = SCORERS,
) -> tuple[str, ...]:
    """Every per-case score name the scorers emit (what a gate's `metric` may name), in registry order.

    Without the suite's labels (tone rules) the families stay as placeholders, field:<label>, tone:markers:<name>.
    """
    expand: dict[str, tuple[str, ...]] = {
        "field:*": tuple(f"field:{label}" for label in labels) if labels is not None else ("field:<label>",),
        "tone:*": tuple(r for r in tone_rules if r != "tone")
        if tone_rules is not None
        else ("tone:markers:<name>", *TONE_RULES),
        "safety:*": SAFETY_CHECKS,
    }
    specs = registry.in_order(scorer_names) if scorer_names is not None else tuple(registry)
    out: list[str] = []
    for spec in specs:
        for m in spec.metrics:
            if m.name in SUITE_LEVEL_METRICS:
                continue
            out += expand.get(m.name, ()) if m.is_pattern else (m.name,)
    return tuple(dict.fromkeys(out))


def metric_problem(
    metric: str,
    scorer_names: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    tone_rules: Sequence[str] | None = None,
    registry: Registry = SCORERS,
) -> tuple[str, str] | None:
    """None when a gate can read `metric` per case; else (what is wrong, how to fix it) with a close name."""
    available = case_metrics(scorer_names, labels, tone_rules, registry)
    if metric in available:
        return None
    if labels is None and fnmatchcase(metric, "field:?*"):
        return None
    if tone_rules is None and fnmatchcase(metric, "tone:markers:?*"):
        return None
    close = difflib.get_close_matches(metric, list(available), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    if metric in SUITE_LEVEL_METRICS:
        return (
            f"{metric!r} is a suite-level figure with no per-case value, so a gate would score zero cases",
            f"name a per-case metric such as field:<label>; available: {', '.join(available)}",
        )
    owner = metric_spec(metric, None, registry)
    if owner is not None and scorer_names is not None and metric_spec(metric, scorer_names, registry) is None:
        return (
            f"{metric!r} comes from a scorer this suite does not run (scorers: {', '.join(scorer_names)})",
            f"add the scorer to the suite's scorers or use one of: {', '.join(available)}",
        )
    return f"unknown metric {metric!r}", f"{hint}available: {', '.join(available)}"


def build_scorers(
    suite: Suite, canaries: Sequence[str] = (), names: Sequence[str] | None = None, registry: Registry = SCORERS
) -> list[ScoreFn]:
    """Configure each of the suite's scorers once per run (names overrides the suite's list)."""
    context = ScoringContext(canaries=tuple(canaries), judge=suite.judge)
    return [spec.factory(suite, context) for spec in registry.resolve(suite.scorers if names is None else tuple(names))]


def score_case(
    output: str, ext: Extraction, case: Case, suite: Suite, scorers: list[ScoreFn] | None = None
) -> list[Score]:
    out: list[Score] = []
    for fn in scorers if scorers is not None else build_scorers(suite):
        out.extend(fn(output, ext, case, suite))
    return out


@dataclass(frozen=True)
class ReportedMetric:
    """The four fields reports have always carried under metric_definitions (see METRICS)."""

    name: str
    higher_is_better: bool
    aggregation: str
    description: str


def _reported(name: str) -> ReportedMetric:
    m = metric_spec(name)
    assert m is not None, f"{name} is no longer declared by any scorer"
    return ReportedMetric(m.name, m.higher_is_better, m.aggregation, m.description)


# What reports wrote under metric_definitions before metrics were declared per scorer, taken from the
# declarations; kept so those reports do not change until their writer moves to metric_definitions(suite.scorers).
METRICS: dict[str, ReportedMetric] = {
    n: _reported(n) for n in ("format_strict", "format_lenient", "field_accuracy", "field_macro_f1")
}


def aggregate(records: list[dict[str, Any]], suite: Suite, registry: Registry = SCORERS) -> dict[str, Any]:
    """Suite-level metrics from per-case records, overall and per slice.

    Every score name in the records is aggregated as its declaration says. The layout is the same whatever
    scorers ran (readers rely on it): format rates and failures read n 0 without format, and fields is empty
    without the fields scorer.
    """
    names = list(dict.fromkeys(s["scorer"] for r in records for s in r["scores"]))
    how = {}
    for name in names:  # a score no listed scorer declares (an old record) is a mean, as every score once was
        m = metric_spec(name, suite.scorers, registry)
        how[name] = AGGREGATIONS.get(m.aggregation, rate) if m is not None else rate
    with_fields = "fields" in suite.scorers

    def scores_of(name: str, subset: list[dict[str, Any]]) -> list[float | None]:
        return [next((s["value"] for s in r["scores"] if s["scorer"] == name), None) for r in subset]

    def block(subset: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "n_cases": len(subset),
            "format_strict": rate(scores_of("format_strict", subset)),
            "format_lenient": rate(scores_of("format_lenient", subset)),
            "fields": field_summary(subset, suite) if with_fields else {},
            "scores": {name: how[name](scores_of(name, subset)) for name in names},
            "failures": failure_counts(subset),
        }

    slices: dict[str, Any] = {}
    for label in suite.labels:
        for value in suite.label_values.get(label) or sorted({r["expected"][label] for r in records}):
            subset = [r for r in records if r["expected"][label] == value]
            slices[f"{label}={value}"] = block(subset)
    for tag in suite.slices:
        slices[f"tag={tag}"] = block([r for r in records if tag in r["tags"]])
    return {"overall": block(records), "slices": slices}
