"""The degeneration scorer: does the output loop or stutter, as a small fine-tune does when it never stops?

It reads the whole raw output, not only the reply field: a loop often breaks the JSON, and a repeated JSON
prefix is a loop too. Words are runs of letters and digits, case-folded, so punctuation between repeats does
not hide them. An output is degenerate when any rule below fires; the explanation quotes the repeated span
(as written in the output) and says how many times it repeats. Deterministic, pure Python, no model.

- loop: a run of >= 3 words repeated >= 3 times in a row, or with at most MAX_GAP words between repeats;
- short loop: 2 words repeated >= 3 times in a row, or 1 word >= 4 times in a row;
- repetition share: on outputs of >= SHARE_MIN_WORDS words, more than MAX_REPEATED_SHARE of the word 4-grams
  repeat an earlier one (a loop with small variations);
- stutter: >= MAX_DOUBLED doubled words ("mục mục", only white space between). One or two are not enough:
  Vietnamese reduplicates legitimately ("từ từ", "nhanh nhanh").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.scoring.extract import Extraction
from harness.scoring.score import Score
from harness.scoring.spec import MetricSpec, ScoreFn, ScorerSpec, ScoringContext

if TYPE_CHECKING:
    from harness.suite.suite import Case, Suite

METRIC = "non_degenerate"
MIN_LOOP_WORDS = 3  # a loop unit of this many words or more needs MIN_LOOP_REPEATS repeats
MIN_LOOP_REPEATS = 3
MAX_GAP = 3  # words allowed between two repeats of a loop unit ("near-consecutive")
MAX_UNIT_WORDS = 40  # longest loop unit looked for (a whole sentence repeated)
SHORT_LOOP_REPEATS = {1: 4, 2: 3}  # units of 1 or 2 words must repeat back to back this many times
SHARE_MIN_WORDS = 40
SHARE_NGRAM = 4
MAX_REPEATED_SHARE = 0.4
MAX_DOUBLED = 3
QUOTE_CHARS = 120
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Repeat:
    """A unit of `words` words that occurs `times` times, first at word `start`, last ending at word `end`."""

    words: int
    times: int
    start: int
    end: int  # exclusive
    gapped: bool  # some repeats are separated by other words

    @property
    def covered(self) -> int:
        return self.end - self.start


def _words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Case-folded words and their character spans in `text` (so a finding quotes the original)."""
    found = list(_WORD.finditer(text))
    return [m.group().casefold() for m in found], [m.span() for m in found]


def find_repeats(words: list[str]) -> list[Repeat]:
    """Every maximal repeat that the loop rules flag, found per unit length."""
    out: list[Repeat] = []
    for n in range(1, min(MAX_UNIT_WORDS, len(words) // 2) + 1):
        needed = MIN_LOOP_REPEATS if n >= MIN_LOOP_WORDS else SHORT_LOOP_REPEATS[n]
        gap = MAX_GAP if n >= MIN_LOOP_WORDS else 0
        open_runs: dict[tuple[str, ...], Repeat] = {}  # unit -> its current run (end: the last start + n)
        for i in range(len(words) - n + 1):
            unit = tuple(words[i : i + n])
            run = open_runs.get(unit)
            step = i - (run.end - n) if run is not None else 0
            if run is not None and step < n:
                continue  # overlaps the previous occurrence: a shorter unit describes it
            if run is not None and step <= n + gap:
                open_runs[unit] = Repeat(n, run.times + 1, run.start, i + n, run.gapped or step > n)
                continue
            if run is not None and run.times >= needed:
                out.append(run)
            open_runs[unit] = Repeat(n, 1, i, i + n, False)
        out += [r for r in open_runs.values() if r.times >= needed]
    return out


def _best(repeats: list[Repeat]) -> Repeat | None:
    """The repeat that covers most of the output; on a tie the shortest unit (its natural period)."""
    return min(repeats, key=lambda r: (-r.covered, r.words, r.start), default=None)


def _quote(text: str, spans: list[tuple[int, int]], start: int, words: int) -> str:
    quoted = text[spans[start][0] : spans[start + words - 1][1]]
    return quoted if len(quoted) <= QUOTE_CHARS else quoted[: QUOTE_CHARS - 1] + "…"


def _doubled(text: str, words: list[str], spans: list[tuple[int, int]]) -> list[int]:
    """Positions of a word followed by itself with only white space between (not "bạn. Bạn", not numbers);
    each pair counted once."""
    out: list[int] = []
    i = 0
    while i < len(words) - 1:
        between = text[spans[i][1] : spans[i + 1][0]]
        if words[i] == words[i + 1] and not words[i].isdigit() and between and between.isspace():
            out.append(i)
            i += 2
        else:
            i += 1
    return out


def repeated_share(words: list[str], n: int = SHARE_NGRAM) -> float:
    """The share of the word n-grams that repeat an earlier one: 1 - distinct / total (0 when there are none)."""
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def degeneration(text: str) -> Score:
    """The verdict on one raw output: 1.0 when no rule fires, 0.0 with the quoted span when one does."""
    words, spans = _words(text)
    doubled = _doubled(text, words, spans)
    share = repeated_share(words)
    details: dict[str, Any] = {
        "words": len(words),
        "repeated_4gram_share": round(share, 4),
        "doubled_words": [_quote(text, spans, i, 2) for i in doubled],
    }
    if not words:
        return Score(METRIC, 1.0, "degeneration: no words in the output, nothing repeats", details)
    best = _best(find_repeats(words))
    if best is not None:
        unit = _quote(text, spans, best.start, best.words)
        how = "with a few words between repeats" if best.gapped else "in a row"
        rule = "loop" if best.words >= MIN_LOOP_WORDS else "short_loop"
        details |= {"rule": rule, "span": unit, "unit_words": best.words, "repeats": best.times}
        why = (
            f"degenerate ({rule}): {unit!r} ({best.words} word{'s' if best.words > 1 else ''}) occurs "
            f"{best.times} times {how}, covering {best.covered} of {len(words)} words"
        )
        return Score(METRIC, 0.0, why, details)
    if len(words) >= SHARE_MIN_WORDS and share > MAX_REPEATED_SHARE:
        grams = [tuple(words[i : i + SHARE_NGRAM]) for i in range(len(words) - SHARE_NGRAM + 1)]
        counts = Counter(grams)
        top = max(range(len(grams)), key=lambda i: (counts[grams[i]], -i))  # the most repeated, first seen first
        unit, times = _quote(text, spans, top, SHARE_NGRAM), counts[grams[top]]
        details |= {"rule": "repetition_share", "span": unit, "unit_words": SHARE_NGRAM, "repeats": times}
        why = (
            f"degenerate (repetition_share): {share:.0%} of the {len(grams)} word 4-grams repeat an earlier one "
            f"(max {MAX_REPEATED_SHARE:.0%}); the most repeated, {unit!r}, occurs {times} times"
        )
        return Score(METRIC, 0.0, why, details)
    if len(doubled) >= MAX_DOUBLED:
        listed = ", ".join(repr(d) for d in details["doubled_words"])
        details |= {"rule": "stutter", "span": details["doubled_words"][0], "unit_words": 1, "repeats": len(doubled)}
        why = f"degenerate (stutter): {len(doubled)} doubled words (max {MAX_DOUBLED - 1}): {listed}"
        return Score(METRIC, 0.0, why, details)
    note = f"; doubled words (reduplication?): {', '.join(details['doubled_words'])}" if doubled else ""
    return Score(
        METRIC,
        1.0,
        f"degeneration: no loop in {len(words)} words, {share:.0%} of word 4-grams repeat{note}",
        details,
    )


def degeneration_scorer() -> ScoreFn:
    """The scorer in the (output, extraction, case, suite) shape: it judges the raw output alone."""

    def score(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
        return [degeneration(output)]

    return score


def _factory(suite: Suite, context: ScoringContext) -> ScoreFn:
    return degeneration_scorer()


SPEC = ScorerSpec(
    name="degeneration",
    version="1",
    description="looping and stuttering outputs: repeated word runs, repeated 4-gram share, doubled words",
    factory=_factory,
    metrics=(
        MetricSpec(
            METRIC,
            True,
            "mean",
            "share of raw outputs that do not loop or stutter (a gate bounds the failing share with max_fail_rate)",
            headline=True,
            flips=True,
        ),
    ),
)
