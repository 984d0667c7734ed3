"""The fields scorer: exact match of each labelled field, and the per-label accuracy, macro-F1 and confusion
matrix derived from it. A missing field is a wrong answer (predicted "<missing>"), not an unscored one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.scoring.extract import Extraction
from harness.scoring.score import Score
from harness.scoring.spec import MetricSpec, ScoreFn, ScorerSpec, ScoringContext, rate

if TYPE_CHECKING:
    from harness.suite.suite import Case, Suite

MISSING = "<missing>"


def field_scorer() -> ScoreFn:
    """Exact match of each labelled field; a missing field is a wrong answer, not an unscored one."""

    def score(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
        scores = []
        for label in suite.labels:
            want = case.expected[label]
            got = ext.obj.get(label, MISSING) if ext.obj is not None else MISSING
            ok = got == want
            why = f"{label}: expected {want!r}, got {got!r}"
            predicted = got if isinstance(got, (str, int, float, bool)) else str(got)
            scores.append(Score(f"field:{label}", 1.0 if ok else 0.0, why, {"expected": want, "predicted": predicted}))
        return scores

    return score


def field_summary(records: list[dict[str, Any]], suite: Suite) -> dict[str, Any]:
    """Per label: accuracy (with its interval), macro-F1 over the allowed values, and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, f1_score

    out: dict[str, Any] = {}
    for label in suite.labels:
        acc = rate([_value(r, f"field:{label}") for r in records])
        y_true = [r["expected"][label] for r in records]
        y_pred = [_pred(r, label) for r in records]
        allowed = list(suite.label_values.get(label) or sorted(set(y_true)))
        macro = float(f1_score(y_true, y_pred, labels=allowed, average="macro", zero_division=0)) if records else None
        columns = allowed + sorted({p for p in y_pred if p not in allowed})
        matrix = confusion_matrix(y_true, y_pred, labels=columns).tolist() if records else []
        confusion = {
            "labels": columns,
            "rows_are": "expected",
            "columns_are": "predicted",
            "matrix": [row[: len(columns)] for row in matrix[: len(allowed)]],
        }
        out[label] = {"accuracy": acc, "macro_f1": macro, "confusion": confusion}
    return out


def _value(record: dict[str, Any], name: str) -> float | None:
    return next((s["value"] for s in record["scores"] if s["scorer"] == name), None)


def _pred(record: dict[str, Any], label: str) -> str:
    for s in record["scores"]:
        if s["scorer"] == f"field:{label}":
            return str(s["details"]["predicted"])
    return MISSING


def _factory(suite: Suite, context: ScoringContext) -> ScoreFn:
    return field_scorer()


SPEC = ScorerSpec(
    name="fields",
    version="1",
    description="exact match of each labelled field",
    factory=_factory,
    metrics=(
        MetricSpec("field:*", True, "mean", "per case: 1 when the labelled field equals the expected value"),
        MetricSpec("field_accuracy", True, "mean", "share of cases whose field equals the expected value"),
        MetricSpec("field_macro_f1", True, "macro-F1", "macro-averaged F1 over the field's allowed values"),
    ),
)
