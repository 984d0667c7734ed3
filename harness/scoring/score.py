"""The verdict type every scorer returns; its own module so scorers can import it without the registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Score:
    """One scorer's verdict on one case. value None means unscored (excluded from aggregates)."""

    scorer: str
    value: float | None
    explanation: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        return None if self.value is None else self.value >= 1.0

    def to_json(self) -> dict[str, Any]:
        return {
            "scorer": self.scorer,
            "value": self.value,
            "passed": self.passed,
            "explanation": self.explanation,
            "details": self.details,
        }
