"""Training data: three input formats, validated line by line, turned into prompt/completion pairs.

Prompt/completion is what lets the loss fall on the answer only, whatever the chat template: TRL masks
the prompt tokens, and padding is masked through the attention mask, never by token id (so an EOS that
doubles as the pad token is still learned).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import HarnessInputError, Problem
from harness.io import read_jsonl
from harness.suite.suite import ROLES, Suite
from harness.training.config import DataConfig
from harness.variants.prompts import PromptFormat, from_training_data

INSTRUCTION = "{instruction}"
UNKNOWN_TEXT_FORMAT = (
    "text data without data.template: where the user's message ends and the answer starts is "
    "unknown, so is the prompt format to evaluate the candidate in"
)


@dataclass(frozen=True)
class Example:
    """One training example as prompt + completion, in chat form (messages) or plain text."""

    line: int
    prompt: Any  # list of messages, or a string
    completion: Any  # list with one assistant message, a string, or None for plain language modelling
    text: str | None = None

    def key(self) -> str:
        """Normalised content used for duplicate and overlap checks."""
        return json.dumps([self.prompt, self.completion, self.text], ensure_ascii=False, sort_keys=True)

    def to_record(self) -> dict[str, Any]:
        if self.text is not None:
            return {"text": self.text}
        return {"prompt": self.prompt, "completion": self.completion}

    def user_text(self) -> str:
        if self.text is not None:
            return self.text
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(m["content"] for m in self.prompt if m["role"] == "user")


@dataclass(frozen=True)
class DataSplit:
    train: tuple[Example, ...]
    validation: tuple[Example, ...]
    sha256: str
    total: int


def load_examples(cfg: DataConfig, suite: Suite | None, root: Path = Path(".")) -> tuple[list[Example], str]:
    """Read and validate every line; raise one error listing every bad line."""
    path = (root / cfg.path) if not Path(cfg.path).is_absolute() else Path(cfg.path)
    if not path.is_file():
        raise HarnessInputError(Problem(f"data.path {cfg.path}", "no such file", "point data.path at a JSONL file"))
    raw_bytes = path.read_bytes()
    problems: list[Problem] = []
    validator = suite.validator() if suite is not None else None
    system = cfg.system_prompt if cfg.system_prompt is not None else (suite.system_prompt if suite else None)
    out: list[Example] = []
    shapes: Counter[str] = Counter()  # which format each line looks like, for a hint when most lines fail
    for lineno, obj in read_jsonl(path, problems):
        where = f"{path}:{lineno}"
        before = len(problems)
        shapes[_looks_like(obj)] += 1
        if cfg.format == "messages":
            ex = _messages_example(obj, where, lineno, system, validator, problems)
        elif cfg.format == "instruction":
            ex = _instruction_example(obj, where, lineno, cfg.template or "{instruction}", problems)
        else:
            ex = _text_example(obj, where, lineno, problems)
        if ex is not None and len(problems) == before:
            out.append(ex)
        if cfg.max_examples and len(out) >= cfg.max_examples:
            break
    if not out and not problems:
        problems.append(Problem(str(path), "holds no examples", "add at least one JSON line"))
    if problems:
        raise HarnessInputError(_collapse(problems, path, cfg.format, shapes))
    return out, hashlib.sha256(raw_bytes).hexdigest()


_FORMAT_KEYS = {"messages": {"messages"}, "instruction": {"instruction", "response"}, "text": {"text"}}


def _looks_like(obj: dict[str, Any]) -> str:
    keys = set(obj)
    return next((name for name, need in _FORMAT_KEYS.items() if need <= keys), "")


def _collapse(problems: list[Problem], path: Path, fmt: str, shapes: Counter[str]) -> list[Problem]:
    """When most lines fail the same way (data in another format than `data.format` says), one problem per such
    cause with a count and the likely format, not hundreds of line-by-line ones; a few problems stay as they are."""
    line_at = re.compile(rf"^{re.escape(str(path))}:(\d+)")

    def cause(p: Problem) -> tuple[str, str] | None:
        m = line_at.match(p.where)
        return (p.where[m.end() :], p.what) if m else None

    lines: dict[tuple[str, str], list[int]] = {}
    for p in problems:
        c = cause(p)
        if c is not None:
            lines.setdefault(c, []).append(int(line_at.match(p.where).group(1)))  # type: ignore[union-attr]
    bad_lines = {n for ns in lines.values() for n in ns}
    common = {c for c, ns in lines.items() if len(ns) * 2 >= len(bad_lines) and len(ns) >= 5}
    if len(problems) < 10 or not common:
        return problems
    likely, seen = shapes.most_common(1)[0] if shapes else ("", 0)
    ordered = sorted(common, key=lambda c: min(lines[c]))
    if likely and likely != fmt and seen * 2 >= sum(shapes.values()):
        first = ordered[0]
        hit = {n for c in ordered for n in lines[c]}
        out = [
            Problem(
                f"{path}: key 'data.format'",
                f"{len(hit)} of {sum(shapes.values())} lines are not format {fmt!r} data "
                f"(first: line {min(lines[first])}{first[0]}: {first[1]}); they look like format {likely!r} data",
                f"set data.format: {likely} in the preset, or convert the file to the {fmt} format",
            )
        ]
    else:
        fix = f"each line of format {fmt!r} needs {' and '.join(sorted(_FORMAT_KEYS[fmt]))}; fix the lines"
        out = [
            Problem(
                f"{path}:{min(lines[c])}{c[0]}",
                f"{c[1]} (and on {len(lines[c]) - 1} more lines of {len(bad_lines)} failing)",
                fix,
            )
            for c in ordered
        ]
    others = [p for p in problems if cause(p) not in common]
    out += others[:5]
    if len(others) > 5:
        out.append(Problem(str(path), f"{len(others) - 5} more problems not listed", "fix the ones above first"))
    return out


def _messages_example(
    obj: dict[str, Any], where: str, lineno: int, system: str | None, validator: Any, problems: list[Problem]
) -> Example | None:
    extra = set(obj) - {"messages"}
    if extra:
        problems.append(
            Problem(f"{where}: key {sorted(extra)[0]!r}", "unknown key", "a messages example has only 'messages'")
        )
    found_before = len(problems)
    msgs = obj.get("messages")
    if not isinstance(msgs, list) or not msgs:
        problems.append(
            Problem(
                f"{where}: key 'messages'", "missing or not a non-empty list", "give a list of {role, content} messages"
            )
        )
        return None
    clean: list[dict[str, str]] = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            problems.append(
                Problem(f"{where}: key 'messages[{i}]'", "must have exactly 'role' and 'content'", "fix the message")
            )
            return None
        if not isinstance(m["role"], str) or m["role"] not in ROLES:
            problems.append(
                Problem(
                    f"{where}: key 'messages[{i}].role'", f"unknown role {m['role']!r}", f"use one of {sorted(ROLES)}"
                )
            )
        if not isinstance(m["content"], str) or not m["content"].strip():
            problems.append(Problem(f"{where}: key 'messages[{i}].content'", "empty", "write the message text"))
        clean.append({"role": m["role"], "content": m["content"]})
    if len(problems) > found_before:  # a bad role or content: the turns below cannot be read
        return None
    roles = [m["role"] for m in clean]
    if "user" not in roles or "assistant" not in roles:
        problems.append(
            Problem(
                f"{where}: key 'messages'", "needs at least one user and one assistant turn", "add the missing turn"
            )
        )
        return None
    if roles[-1] != "assistant":
        problems.append(
            Problem(
                f"{where}: key 'messages'",
                "the last turn must be the assistant's (it is what is learned)",
                "end with the assistant's answer",
            )
        )
        return None
    answer = clean[-1]["content"]
    if validator is not None:
        try:
            parsed = json.loads(answer)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(
                    f"{where}: key 'messages[-1].content'",
                    f"assistant answer is not JSON ({exc.msg})",
                    "the suite's contract asks for one JSON object",
                )
            )
            return None
        for err in validator.iter_errors(parsed):
            path = "/".join(str(p) for p in err.absolute_path) or "(root)"
            problems.append(
                Problem(
                    f"{where}: key 'messages[-1].content' at {path}",
                    f"rejected by the contract: {err.message}",
                    "make the answer satisfy the schema",
                )
            )
    prompt = clean[:-1]
    if system and prompt[0]["role"] != "system":
        prompt = [{"role": "system", "content": system}, *prompt]
    return Example(lineno, prompt, [clean[-1]])


def _instruction_example(
    obj: dict[str, Any], where: str, lineno: int, template: str, problems: list[Problem]
) -> Example | None:
    extra = set(obj) - {"instruction", "response", "input"}
    if extra:
        problems.append(
            Problem(
                f"{where}: key {sorted(extra)[0]!r}",
                "unknown key",
                "an instruction example has 'instruction', optional 'input', and 'response'",
            )
        )
    inst, resp = obj.get("instruction"), obj.get("response")
    for key, value in (("instruction", inst), ("response", resp)):
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(f"{where}: key {key!r}", "missing or empty", f"write the {key}"))
    if problems and (not isinstance(inst, str) or not isinstance(resp, str)):
        return None
    text = inst if not obj.get("input") else f"{inst}\n\n{obj['input']}"
    return Example(lineno, template.replace("{instruction}", text), resp)


def _text_example(obj: dict[str, Any], where: str, lineno: int, problems: list[Problem]) -> Example | None:
    extra = set(obj) - {"text"}
    if extra:
        problems.append(Problem(f"{where}: key {sorted(extra)[0]!r}", "unknown key", "a text example has only 'text'"))
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        problems.append(Problem(f"{where}: key 'text'", "missing or empty", "write the training text"))
        return None
    return Example(lineno, None, None, text=text)


def template_parts(template: str) -> tuple[str, str]:
    """The text before and after `{instruction}` (the template has it once: load_train_config checks)."""
    head, tail = template.split(INSTRUCTION, 1)
    return head, tail


def split_text(text: str, template: str) -> tuple[str, str] | None:
    """(user message, answer) of a text example written as `template` followed by the answer; None if it is not.

    The message ends at the first occurrence of the part after `{instruction}`: the evaluation prompt is then
    `template` with the message filled in, byte for byte the start of the training text.
    """
    head, tail = template_parts(template)
    if not text.startswith(head):
        return None
    end = text.find(tail, len(head)) if tail else -1
    if end < 0:
        return None
    return text[len(head) : end], text[end + len(tail) :]


def evaluation_format(
    cfg: DataConfig, data_suite_system: str | None, eval_suite_system: str | None
) -> tuple[PromptFormat | None, str | None]:
    """The prompt format a candidate trained on this data must be evaluated in, or None and why it is unknown.

    `data_suite_system` is the system prompt of `data.suite` (None without one): the one messages training
    prepends unless `data.system_prompt` overrides it. `eval_suite_system` is the evaluation suite's, which the
    default chat format sends; training's own system prompt is passed on literally when they differ.
    """
    if cfg.format == "text" and cfg.template is None:
        return None, UNKNOWN_TEXT_FORMAT
    trained_system = cfg.system_prompt if cfg.system_prompt is not None else data_suite_system
    return from_training_data(cfg.format, cfg.template, trained_system or "", eval_suite_system), None


def split(examples: list[Example], fraction: float, seed: int, sha256: str) -> DataSplit:
    """Deterministic split by seed; duplicates always land on the same side, so the two never overlap."""
    keys = sorted({e.key() for e in examples})
    random.Random(seed).shuffle(keys)
    n_val = int(round(len(keys) * fraction))
    val_keys = set(keys[:n_val])
    train = tuple(e for e in examples if e.key() not in val_keys)
    val = tuple(e for e in examples if e.key() in val_keys)
    return DataSplit(train, val, sha256, len(examples))
