"""One exception type for every problem the user can fix, so the CLI can exit 2 without a traceback."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """A single user-fixable problem: where it is, what is wrong, how to fix it."""

    where: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}"
        return f"{text} (fix: {self.fix})" if self.fix else text


class HarnessInputError(Exception):
    """Bad input from the user (file, config, model path). Carries every problem found, not just the first."""

    def __init__(self, problems: Iterable[Problem] | Problem | str) -> None:
        if isinstance(problems, (Problem, str)):
            problems = [problems]
        self.problems: tuple[Problem | str, ...] = tuple(problems)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [str(p) for p in self.problems]
        if len(lines) == 1:
            return lines[0]
        return f"{len(lines)} problems:\n" + "\n".join(f"  - {line}" for line in lines)


class RunStopped(Exception):
    """A run that cannot answer its question, found before any decoding (exit 1): evaluating it would spend
    minutes to report what is already known, such as an adapter whose LoRA B matrices are all zero."""

    def __init__(self, findings: Iterable[dict[str, str]], where: str = "") -> None:
        self.findings: tuple[dict[str, str], ...] = tuple(findings)
        self.where = where
        super().__init__(self.render())

    def render(self) -> str:
        head = f"stopped before decoding{f' ({self.where})' if self.where else ''}"
        lines = [f"{f.get('variant', '')}: {f['code']}: {f['message']}".lstrip(": ") for f in self.findings]
        return head + ":\n" + "\n".join(f"  - {line}" for line in lines)
