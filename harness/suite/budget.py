"""Does every reference answer fit in the suite's decode budget?

A reference longer than `generation.max_new_tokens` (under the model's tokenizer) cannot be generated: a model
that reproduces it exactly is cut off and scored as truncated, so the suite punishes the ideal answer. This
measures each reference as the model would have to write it and says which cases cannot fit (error) or fit
with less than 10% to spare (warning), before any generation is spent on them.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.errors import HarnessInputError, Problem
from harness.suite.suite import SUITE_FILE, Suite

Level = Literal["error", "warning"]
WARN_FRACTION = 0.9  # a reference above 90% of the budget leaves the model almost no room to differ


@dataclass(frozen=True)
class CaseBudget:
    """One measured case: the tokens its reference needs, and a level when that is too close to the budget."""

    case_id: str
    tokens: int
    level: Level | None


@dataclass(frozen=True)
class BudgetReport:
    """Token needs of a suite's references against its `generation.max_new_tokens`, for one tokenizer."""

    suite: str
    suite_file: Path
    model: str
    max_new_tokens: int
    cases: tuple[CaseBudget, ...]  # every measured case, most tokens first
    not_measured: int  # cases without a reference answer

    @property
    def findings(self) -> tuple[CaseBudget, ...]:
        return tuple(c for c in self.cases if c.level is not None)

    @property
    def errors(self) -> tuple[CaseBudget, ...]:
        return tuple(c for c in self.cases if c.level == "error")

    @property
    def warnings(self) -> tuple[CaseBudget, ...]:
        return tuple(c for c in self.cases if c.level == "warning")

    @property
    def median(self) -> float | None:
        return statistics.median(c.tokens for c in self.cases) if self.cases else None

    @property
    def max(self) -> int | None:
        return self.cases[0].tokens if self.cases else None

    def render(self) -> str:
        head = f"token budget: {self.suite} under {self.model}'s tokenizer, max_new_tokens {self.max_new_tokens}"
        if not self.cases:
            return f"{head}\n  not applicable: no reference answers ({self.not_measured} cases not measured)"
        lines = [
            head,
            f"  {len(self.cases)} references measured: median {self.median:g} tokens, max {self.max}; "
            f"{len(self.errors)} do not fit, {len(self.warnings)} within 10% of the budget",
        ]
        if self.not_measured:
            lines.append(f"  {self.not_measured} cases not measured (no reference answer)")
        lines += [f"  {self.line(c)}" for c in self.findings]
        if self.errors:
            lines.append(f"  fix: {self.fix()}")
        return "\n".join(lines)

    def line(self, case: CaseBudget) -> str:
        what = "does not fit" if case.level == "error" else "fits with under 10% to spare"
        return f"{case.level}: {case.case_id}: reference needs {case.tokens} of {self.max_new_tokens} tokens ({what})"

    def fix(self) -> str:
        return f"raise generation.max_new_tokens in {SUITE_FILE} to at least {self.max}, or shorten these references"

    def error(self) -> HarnessInputError:
        """The run-stopping input error for the references that cannot fit."""
        listed = ", ".join(f"{c.case_id} ({c.tokens} tokens)" for c in self.errors)
        return HarnessInputError(
            Problem(
                f"{self.suite_file}: key 'generation.max_new_tokens'",
                f"{len(self.errors)} reference answers need more than its {self.max_new_tokens} tokens under "
                f"{self.model}'s tokenizer, so a model that reproduces them is cut off: {listed}",
                self.fix(),
            )
        )


def reference_text(reference: Any) -> str:
    """The reference as a model writes it: a plain string as is, a JSON answer as the training targets do."""
    if isinstance(reference, str):
        return reference
    return json.dumps(reference, ensure_ascii=False)


def measure(suite: Suite, tokenizer: Any, model: str) -> BudgetReport:
    """Tokens each reference needs (no special tokens; plus EOS when only EOS can end the answer)."""
    budget = suite.generation.max_new_tokens
    measured: list[CaseBudget] = []
    for case in suite.cases:
        if case.reference is None:
            continue
        ids = tokenizer(reference_text(case.reference), add_special_tokens=False)["input_ids"]
        ends_itself = suite.generation.stop_at_json_end and isinstance(case.reference, dict)
        tokens = len(ids) + (0 if ends_itself else 1)
        level: Level | None = "error" if tokens > budget else "warning" if tokens > WARN_FRACTION * budget else None
        measured.append(CaseBudget(case.id, tokens, level))
    measured.sort(key=lambda c: (-c.tokens, c.case_id))
    return BudgetReport(
        suite=suite.name,
        suite_file=suite.path / SUITE_FILE,
        model=model,
        max_new_tokens=budget,
        cases=tuple(measured),
        not_measured=len(suite.cases) - len(measured),
    )


def load_tokenizer_only(folder: Path, where: str) -> Any:
    """The model's tokenizer from its local files (never the weights, never the network)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's folder
        raise HarnessInputError(
            Problem(
                where,
                f"the tokenizer in {folder} could not be loaded ({type(exc).__name__}: {str(exc)[:160]})",
                "pass a model folder that holds its tokenizer files (tokenizer.json, tokenizer_config.json)",
            )
        ) from None


def check_budget(suite: Suite, folder: Path, model: str, where: str = "--model") -> BudgetReport:
    """Measure a suite under the tokenizer of a resolved model folder (`where` names the input in errors)."""
    return measure(suite, load_tokenizer_only(folder, f"{where} {model}"), model)
