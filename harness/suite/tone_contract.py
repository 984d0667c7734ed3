"""The tone contract: a small YAML file of checkable rules for how a reply should sound, loaded strictly.

It belongs to the suite (suite.yaml names it); the tone scorer (harness.scoring.tone) applies it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from harness.config import build, read_yaml
from harness.errors import HarnessInputError, Problem

_MARKER_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_WORD_CHAR = re.compile(r"\w")


@dataclass(frozen=True)
class LengthRule:
    """Bounds on the reply's word count (whitespace-separated; a Vietnamese word is one syllable)."""

    min: int
    max: int


@dataclass(frozen=True)
class ShoutingRule:
    """ALL-CAPS and "!!!" read as shouting in a support chat."""

    max_caps_ratio: float  # share of letters that sit in ALL-CAPS words of 3+ letters
    max_exclamation_run: int


@dataclass(frozen=True)
class SimilarityRule:
    """A floor on surface similarity to the reference answer; catches off-topic, off-language or garbled replies."""

    metric: Literal["chrf"]
    min: float  # chrF on sacrebleu's 0..100 scale


@dataclass(frozen=True)
class MarkerGroup:
    """A named any-of group: at least one phrase must appear."""

    name: str
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class ToneContract:
    """Every rule is stated in the file (an empty forbidden list is written as []), so none is dropped silently."""

    language: Literal["vi", "en"]
    forbidden: tuple[str, ...]
    length_words: LengthRule
    shouting: ShoutingRule
    reference_similarity: SimilarityRule
    field: str = "answer"
    version: str = "1"
    markers: tuple[MarkerGroup, ...] = ()
    source: str = ""

    def rule_names(self) -> list[str]:
        """Scorer names in the order the scorer emits them, the overall `tone` last."""
        return [f"tone:markers:{g.name}" for g in self.markers] + [
            "tone:forbidden",
            "tone:length",
            "tone:shouting",
            "tone:chrf",
            "tone",
        ]


def load_tone_contract(path: Path) -> ToneContract:
    """Load a tone contract; every unknown key, missing key and bad value is reported in one error."""
    path = Path(path)
    raw = read_yaml(path, "a tone contract (see golden/support_vi/tone.yaml)")
    problems: list[Problem] = []
    if "source" in raw:
        problems.append(Problem(f"{path}: key 'source'", "is set by the loader", "remove it"))
        raw.pop("source")
    has_markers = "markers" in raw
    markers_raw = raw.pop("markers", None)
    raw_problems: list[Problem] = []
    contract = build(ToneContract, raw, "", raw_problems)
    problems += [Problem(f"{path}: key '{p.where}'", p.what, p.fix) for p in raw_problems]
    if not has_markers:
        problems.append(
            Problem(
                f"{path}: key 'markers'",
                "missing",
                "add a mapping of marker name -> list of any-of phrases, or {} for none",
            )
        )
    groups = _marker_groups(markers_raw, path, problems) if has_markers else ()
    if contract is not None:
        problems += _value_problems(contract, path)
    if problems or contract is None:
        raise HarnessInputError(
            problems or [Problem(str(path), "could not be loaded", "compare it with golden/support_vi/tone.yaml")]
        )
    return replace(contract, markers=groups, source=str(path))


def _marker_groups(raw: Any, path: Path, problems: list[Problem]) -> tuple[MarkerGroup, ...]:
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                f"{path}: key 'markers'",
                f"must be a mapping of name -> list of phrases, got {raw!r}",
                'e.g. next_action: ["vui lòng", "bạn hãy"]',
            )
        )
        return ()
    groups: list[MarkerGroup] = []
    for name, phrases in raw.items():
        where = f"{path}: key 'markers.{name}'"
        if not isinstance(name, str) or not _MARKER_NAME.match(name):
            problems.append(Problem(where, "marker names must be lower_snake_case", "rename it, e.g. next_action"))
        if not isinstance(phrases, list) or not phrases:
            problems.append(
                Problem(
                    where,
                    f"must be a non-empty list of phrases, got {phrases!r}",
                    "list the phrases, any one of which satisfies the marker",
                )
            )
            continue
        bad = [p for p in phrases if not isinstance(p, str) or not _WORD_CHAR.search(p)]
        if bad:
            problems.append(
                Problem(where, f"phrases must be strings containing a word, got {bad!r}", "quote each phrase")
            )
            continue
        groups.append(MarkerGroup(str(name), tuple(phrases)))
    return tuple(groups)


def _value_problems(c: ToneContract, path: Path) -> list[Problem]:
    checks = [
        (bool(c.field.strip()), "field", "must name the JSON field that holds the reply, e.g. answer"),
        (
            all(isinstance(p, str) and _WORD_CHAR.search(p) for p in c.forbidden),
            "forbidden",
            "every phrase must be a string containing a word",
        ),
        (
            0 <= c.length_words.min <= c.length_words.max,
            "length_words",
            f"needs 0 <= min <= max, got min {c.length_words.min}, max {c.length_words.max}",
        ),
        (0.0 <= c.shouting.max_caps_ratio <= 1.0, "shouting.max_caps_ratio", "must be a share between 0 and 1"),
        (
            c.shouting.max_exclamation_run >= 1,
            "shouting.max_exclamation_run",
            "must be at least 1 (a single '!' is not shouting)",
        ),
        (0.0 <= c.reference_similarity.min <= 100.0, "reference_similarity.min", "chrF is on a 0..100 scale"),
    ]
    return [Problem(f"{path}: key '{key}'", what, "fix the value") for ok, key, what in checks if not ok]
