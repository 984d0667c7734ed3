"""Find the JSON object in a model output. Kept apart from judging it, so each step explains itself."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Extraction:
    """What could be read from an output.

    `strict` means the whole output (less surrounding white space) is one JSON object; `obj` is the first
    JSON object found anywhere (lenient reading). `problem` classifies a failure to find one.
    """

    obj: dict[str, Any] | None
    strict: bool
    problem: str | None  # None | "empty" | "not_json" | "truncated"
    span: tuple[int, int] | None
    detail: str


def extract_json(text: str) -> Extraction:
    stripped = text.strip()
    if not stripped:
        return Extraction(None, False, "empty", None, "the output is empty")
    try:
        whole = json.loads(stripped)
        if isinstance(whole, dict):
            start = text.index(stripped[0])
            return Extraction(whole, True, None, (start, start + len(stripped)), "the whole output is one JSON object")
    except json.JSONDecodeError:
        pass
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
            continue
        if isinstance(obj, dict):
            before, after = text[:pos].strip(), text[end:].strip()
            where = " and ".join(
                x
                for x in (f"{len(before)} chars before" if before else "", f"{len(after)} chars after" if after else "")
                if x
            )
            return Extraction(obj, False, None, (pos, end), f"a JSON object was found with extra text ({where})")
        pos = text.find("{", pos + 1)
    if _unclosed_object(text):
        return Extraction(None, False, "truncated", None, "a JSON object starts but never closes (output cut off?)")
    return Extraction(None, False, "not_json", None, "no JSON object in the output")


def _unclosed_object(text: str) -> bool:
    depth, in_string, escape = 0, False, False
    for ch in text:
        if in_string:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == '"':
                in_string = False
        elif ch == '"' and depth > 0:
            in_string = True
        elif ch == "{":
            depth += 1
        elif ch == "}" and depth > 0:
            depth -= 1
    return depth > 0
