"""Data hygiene before training: what is in the training file that should not be, with line numbers.

Leakage of golden cases into training blocks the run by default: a candidate that has seen the exam
scores well for the wrong reason, and every gate built on the suite would be a lie.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from harness.scoring.safety import find_pii
from harness.suite.suite import Suite
from harness.training.data import DataSplit, Example

NEAR_DUPLICATE = 0.9


class _Against:
    """Similarity of many texts to one fixed text.

    difflib indexes its second sequence when it is set; one matcher per fixed text, reused with
    `set_seq1`, indexes it once instead of once per pair (the demo data's checks: 1.3 s -> 0.26 s).
    """

    def __init__(self, b: str) -> None:
        self.matcher = difflib.SequenceMatcher(None, "", b, autojunk=False)

    def similar(self, a: str, at_least: float) -> float | None:
        sm = self.matcher
        sm.set_seq1(a)
        if sm.real_quick_ratio() < at_least or sm.quick_ratio() < at_least:
            return None
        r = sm.ratio()
        return r if r >= at_least else None


def find_leakage(
    suite: Suite, examples: Sequence[Example], at_least: float = NEAR_DUPLICATE
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training examples whose user text contains a golden prompt (exact) or nearly equals one (near)."""
    golden = [(c.id, c.user_text().strip().lower()) for c in suite.cases]
    against = [_Against(g) for _, g in golden]
    exact: list[dict[str, Any]] = []
    near: list[dict[str, Any]] = []
    for ex in examples:
        text = ex.user_text().strip().lower()
        for (case_id, g), matcher in zip(golden, against):
            if g and (text == g or g in text):
                exact.append({"line": ex.line, "case": case_id})
                break
            sim = matcher.similar(text, at_least)
            if sim is not None:
                near.append({"line": ex.line, "case": case_id, "similarity": round(sim, 3)})
                break
    return exact, near


def find_duplicates(examples: Sequence[Example], at_least: float = NEAR_DUPLICATE) -> dict[str, list[list[Any]]]:
    """Exact duplicates (same prompt and answer) and near duplicates (user text at least 90% similar)."""
    first: dict[str, int] = {}
    exact: list[list[Any]] = []
    for ex in examples:
        k = ex.key()
        if k in first:
            exact.append([first[k], ex.line])
        else:
            first[k] = ex.line
    exact_lines = {b for _, b in exact}
    texts = [(ex.line, ex.user_text().strip().lower()) for ex in examples if ex.line not in exact_lines]
    against = [_Against(t) for _, t in texts]
    near: list[list[Any]] = []
    for i, (la, ta) in enumerate(texts):
        for (lb, _), matcher in zip(texts[i + 1 :], against[i + 1 :]):
            sim = matcher.similar(ta, at_least)
            if sim is not None:
                near.append([la, lb, round(sim, 3)])
    return {"exact": exact, "near": near}


def _example_text(ex: Example) -> str:
    completion = ex.completion
    if isinstance(completion, list):
        completion = "\n".join(m.get("content", "") for m in completion)
    return "\n".join(x for x in (ex.user_text(), completion if isinstance(completion, str) else "") if x)


def hygiene_report(
    data_path: str,
    data: DataSplit,
    suite: Suite | None,
    token_lengths: dict[str, Any],
    max_length: int,
    block_leakage: bool = True,
) -> dict[str, Any]:
    """One dict for the report and the app; verdict "blocked" when golden cases leaked into training."""
    examples = list(data.train) + list(data.validation)
    pii = []
    for ex in examples:
        found = find_pii(_example_text(ex))
        pii += [{"line": ex.line, "kind": kind, "match": match} for match, kind in zip(found.matches, found.kinds)]
    exact, near = find_leakage(suite, examples) if suite is not None else ([], [])
    leaked = bool(exact or near)
    problems = []
    if leaked:
        problems.append(
            {
                "where": data_path,
                "what": (
                    f"{len(exact)} training examples contain golden prompts of {suite.name if suite else '?'} "
                    f"and {len(near)} nearly duplicate them"
                ),
                "fix": (
                    "remove or rewrite those lines (see leakage), "
                    "or set data.allow_leakage: true to train anyway (not recommended)"
                ),
            }
        )
    if pii:
        problems.append(
            {
                "where": data_path,
                "what": (
                    f"{len(pii)} personal-data matches on {len({p['line'] for p in pii})} lines: {pii_lines(pii)}"
                ),
                "fix": "replace real personal data with fictional values",
            }
        )
    lengths = dict(token_lengths)
    return {
        "file": data_path,
        "sha256": data.sha256,
        "examples": len(examples),
        "train": len(data.train),
        "validation": len(data.validation),
        "validated": f"all {len(examples)} lines passed schema and role validation",
        "verdict": "blocked" if leaked and block_leakage else "pass",
        "problems": problems,
        "pii": pii,
        "duplicates": find_duplicates(examples),
        "leakage": {"suite": suite.name if suite else None, "exact": exact, "near": near},
        "token_lengths": {**lengths, "max_length": max_length},
    }


def pii_lines(pii: Sequence[dict[str, Any]], at_most: int = 20) -> str:
    """Where the personal data is: 'line 3 (email j***@x.vn), line 9 (vn_phone)...', matches masked as found."""
    by_line: dict[int, list[str]] = {}
    for p in pii:
        by_line.setdefault(int(p["line"]), []).append(f"{p['kind']} {p['match']}")
    shown = [f"line {n} ({', '.join(kinds)})" for n, kinds in sorted(by_line.items())[:at_most]]
    more = len(by_line) - len(shown)
    return ", ".join(shown) + (f" and {more} more lines" if more > 0 else "")


def hygiene_summary(h: dict[str, Any]) -> str:
    t = h["token_lengths"]
    pii = h["pii"]
    where = f" ({pii_lines(pii, 10)})" if pii else ""
    return (
        f"hygiene {h['verdict']}: {h['examples']} examples; {len(pii)} PII matches{where}; "
        f"{len(h['duplicates']['exact'])} exact / {len(h['duplicates']['near'])} near duplicates; "
        f"golden leakage {len(h['leakage']['exact'])} exact / {len(h['leakage']['near'])} near; "
        f"tokens p50 {t.get('p50', 0):.0f} p99 {t.get('p99', 0):.0f} max {t.get('max', 0)} "
        f"(over max_length {t.get('over_max_length', 0)})"
    )
