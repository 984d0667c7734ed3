"""Tone contract scoring: does a reply sound like the support team should sound?

A contract is a small YAML file of checkable rules (required phrases, forbidden phrases, length, shouting,
closeness to the reference answer). Each rule gives its own Score with an explanation that names what
matched or what was missing, so a failing case can be read without re-running anything.

Vietnamese users often type without diacritics, so in a `vi` contract a word typed without them matches
its accented form ("vui long" matches "vui lòng"). A word typed with *different* diacritics is a different
word ("ngủ", sleep, is not "ngu", stupid) and does not match.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from harness.scoring.extract import Extraction
from harness.scoring.safety import fold
from harness.scoring.score import Score
from harness.scoring.spec import MetricSpec, ScoreFn, ScorerSpec, ScoringContext
from harness.suite.tone_contract import LengthRule, MarkerGroup, ShoutingRule, SimilarityRule, ToneContract

if TYPE_CHECKING:
    from harness.suite.suite import Case, Suite

NO_ANSWER = "no answer field to judge: output had no valid JSON object"
_WORD_CHAR = re.compile(r"\w")
_LETTER_WORD = re.compile(r"[^\W\d_]+")
_EXCLAMATION_RUN = re.compile(r"[!！]+")


# --- matching ---------------------------------------------------------------------------------------


def _pattern(words: list[str]) -> re.Pattern[str]:
    return re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)")


def find_phrase(text: str, phrase: str, language: str) -> str | None:
    """The span of `text` where `phrase` occurs as whole words, or None. Case-insensitive; see the module doc for vi."""
    text = unicodedata.normalize("NFC", text)
    phrase = unicodedata.normalize("NFC", phrase).lower()
    if language != "vi":
        m = _pattern(phrase.split()).search(text.lower())
        return text[m.start() : m.end()] if m else None
    folded = fold(text)  # one character per character of `text`, so a match's span quotes the original
    phrase_words = phrase.split()
    phrase_is_bare = fold(phrase) == phrase
    for m in _pattern(fold(phrase).split()).finditer(folded):
        span = text[m.start() : m.end()]
        words = span.lower().split()
        if phrase_is_bare or all(w == p or fold(w) == w for w, p in zip(words, phrase_words)):
            return span
    return None


def _quote(items: list[str] | tuple[str, ...]) -> str:
    return json.dumps(list(items), ensure_ascii=False)


# --- scorer -----------------------------------------------------------------------------------------

ToneFn = Callable[[str | None, str | None], list[Score]]


def tone_scorer(contract: ToneContract) -> ToneFn:
    """One Score per rule plus an overall `tone` Score; a pure function of the reply and reference texts."""

    def score(answer_text: str | None, reference_text: str | None) -> list[Score]:
        if answer_text is None:
            return [Score(name, None, NO_ANSWER) for name in contract.rule_names()]
        rules = [_marker_score(contract, g, answer_text) for g in contract.markers]
        rules += [
            _forbidden_score(contract, answer_text),
            _length_score(contract.length_words, answer_text),
            _shouting_score(contract.shouting, answer_text),
            _chrf_score(contract.reference_similarity, answer_text, reference_text),
        ]
        return rules + [_overall(contract, rules)]

    return score


def _marker_score(contract: ToneContract, group: MarkerGroup, text: str) -> Score:
    name = f"tone:markers:{group.name}"
    for phrase in group.phrases:
        found = find_phrase(text, phrase, contract.language)
        if found is not None:
            return Score(
                name, 1.0, f"{group.name}: found {phrase!r} (as {found!r})", {"matched": phrase, "found": found}
            )
    return Score(name, 0.0, f"{group.name}: none of {_quote(group.phrases)} found", {"matched": None, "found": None})


def _forbidden_score(contract: ToneContract, text: str) -> Score:
    hits = [(p, f) for p in contract.forbidden if (f := find_phrase(text, p, contract.language)) is not None]
    details = {"found": [{"phrase": p, "text": f} for p, f in hits]}
    if not hits:
        return Score(
            "tone:forbidden", 1.0, f"forbidden: none of the {len(contract.forbidden)} forbidden phrases found", details
        )
    listed = ", ".join(f"{p!r} (as {f!r})" for p, f in hits)
    return Score("tone:forbidden", 0.0, f"forbidden: found {listed}", details)


def _length_score(rule: LengthRule, text: str) -> Score:
    n = sum(1 for token in text.split() if _WORD_CHAR.search(token))
    details = {"words": n, "min": rule.min, "max": rule.max}
    if n < rule.min:
        return Score("tone:length", 0.0, f"length: {n} words, below the minimum of {rule.min}", details)
    if n > rule.max:
        return Score("tone:length", 0.0, f"length: {n} words, above the maximum of {rule.max}", details)
    return Score("tone:length", 1.0, f"length: {n} words, within {rule.min}..{rule.max}", details)


def _shouting_score(rule: ShoutingRule, text: str) -> Score:
    words = _LETTER_WORD.findall(text)
    letters = sum(len(w) for w in words)
    caps = [w for w in words if len(w) >= 3 and w.isupper()]
    ratio = sum(len(w) for w in caps) / letters if letters else 0.0
    run = max((len(m.group()) for m in _EXCLAMATION_RUN.finditer(text)), default=0)
    details = {
        "caps_ratio": round(ratio, 4),
        "caps_words": caps,
        "exclamation_run": run,
        "max_caps_ratio": rule.max_caps_ratio,
        "max_exclamation_run": rule.max_exclamation_run,
    }
    failures = []
    if ratio > rule.max_caps_ratio:
        failures.append(
            f"{ratio:.0%} of letters are in ALL-CAPS words (max {rule.max_caps_ratio:.0%}): {_quote(caps[:8])}"
        )
    if run > rule.max_exclamation_run:
        failures.append(f"a run of {run} '!' (max {rule.max_exclamation_run})")
    if failures:
        return Score("tone:shouting", 0.0, "shouting: " + "; ".join(failures), details)
    return Score(
        "tone:shouting",
        1.0,
        (
            f"shouting: {ratio:.0%} of letters in ALL-CAPS words (max {rule.max_caps_ratio:.0%}), "
            f"longest '!' run {run} (max {rule.max_exclamation_run})"
        ),
        details,
    )


def _chrf_score(rule: SimilarityRule, text: str, reference: str | None) -> Score:
    if reference is None:
        return Score("tone:chrf", None, "chrf: no reference answer to compare with", {"chrf": None, "min": rule.min})
    from sacrebleu.metrics import CHRF

    value = float(CHRF().sentence_score(text, [reference]).score)
    details = {"chrf": round(value, 2), "min": rule.min}
    if value < rule.min:
        return Score(
            "tone:chrf", 0.0, f"chrf: {value:.1f} against the reference, below the minimum of {rule.min:g}", details
        )
    return Score("tone:chrf", 1.0, f"chrf: {value:.1f} against the reference (min {rule.min:g})", details)


def _overall(contract: ToneContract, rules: list[Score]) -> Score:
    """Passes only if every scored rule passed; an unscored rule is named, never counted as a pass or a fail."""
    failed = [s for s in rules if s.value is not None and s.value < 1.0]
    unscored = [s.scorer for s in rules if s.value is None]
    details = {
        "failed": [s.scorer for s in failed],
        "unscored": unscored,
        "contract": contract.source,
        "contract_version": contract.version,
    }
    note = f"; unscored: {', '.join(unscored)}" if unscored else ""
    if failed:
        listed = "; ".join(f"{s.scorer} ({s.explanation})" for s in failed)
        return Score(
            "tone", 0.0, f"tone: failed {len(failed)} of {len(rules) - len(unscored)} rules: {listed}{note}", details
        )
    return Score("tone", 1.0, f"tone: all {len(rules) - len(unscored)} scored rules passed{note}", details)


# --- glue to the case pipeline ----------------------------------------------------------------------


def answer_text(obj: dict[str, Any] | None, field: str) -> str | None:
    """The reply text to judge. A valid object with no string in the field is an empty reply (it fails),
    not an unscored one."""
    if obj is None:
        return None
    value = obj.get(field)
    return value if isinstance(value, str) else ""


def tone_case_scorer(contract: ToneContract) -> ScoreFn:
    """The tone scorer in the (output, extraction, case, suite) shape that harness.scoring registers."""
    judge = tone_scorer(contract)

    def score(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
        reference = case.reference.get(contract.field) if case.reference else None
        return judge(answer_text(ext.obj, contract.field), reference if isinstance(reference, str) else None)

    return score


def _no_tone(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
    return []


def _factory(suite: Suite, context: ScoringContext) -> ScoreFn:
    """The suite's tone contract; a suite without one gets no tone scores at all (suite loading rejects a suite
    that lists tone explicitly without a contract; the default list keeps it so cached score keys do not move)."""
    return tone_case_scorer(suite.tone) if suite.tone is not None else _no_tone


SPEC = ScorerSpec(
    name="tone",
    version="1",
    description="tone contract: required markers, forbidden phrases, length, shouting, chrF to the reference",
    factory=_factory,
    metrics=(
        MetricSpec(
            "tone",
            True,
            "mean",
            "share of replies that pass every scored rule of the tone contract",
            headline=True,
            flips=True,
        ),
        MetricSpec(
            "tone:*",
            True,
            "mean",
            "one rule: tone:markers:<name>, tone:forbidden, tone:length, tone:shouting, tone:chrf",
        ),
    ),
)
