"""Strict YAML -> frozen dataclass loading: unknown keys and wrong types are errors, all reported at once."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from harness.errors import HarnessInputError, Problem
from harness.io import read_text_strict

T = TypeVar("T")


def read_yaml(path: Path, what: str = "a training preset (see trainers/configs/)") -> dict[str, Any]:
    if path.is_dir():
        raise HarnessInputError(Problem(str(path), "is a folder, not a YAML file", f"pass the path of {what}"))
    if not path.is_file():
        raise HarnessInputError(Problem(str(path), "no such file", "pass the path of a YAML config"))
    text = read_text_strict(path, "YAML file")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise HarnessInputError(
            Problem(where, f"invalid YAML ({getattr(exc, 'problem', exc)})", "fix the YAML syntax")
        ) from None
    except (RecursionError, ValueError, TypeError) as exc:  # absurd nesting; a value PyYAML cannot construct
        what_ = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).split(";")[0]
        raise HarnessInputError(Problem(str(path), f"invalid YAML ({what_})", "fix the YAML")) from None
    if raw is None:
        raise HarnessInputError(Problem(str(path), "is empty", f"write {what}"))
    if not isinstance(raw, dict):
        raise HarnessInputError(Problem(str(path), f"must be a YAML mapping, got {_yaml_kind(raw)}", f"write {what}"))
    bad = [k for k in raw if not isinstance(k, str)]
    if bad:
        raise HarnessInputError(
            Problem(f"{path}: key {bad[0]!r}", f"keys must be names, got {type(bad[0]).__name__}", "quote the key")
        )
    return raw


def _yaml_kind(value: Any) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), type(value).__name__
    )


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: Any, where: str, problems: list[Problem]) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors: list[Problem] = []
        for arg in args:
            if arg is type(None):
                continue
            trial: list[Problem] = []
            out = _coerce(value, arg, where, trial)
            if not trial:
                return out
            errors.extend(trial)
        problems.append(
            Problem(where, f"{value!r} is not one of {' | '.join(_type_name(a) for a in args)}", "fix the value")
        )
        return None
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if not isinstance(value, list):
            problems.append(Problem(where, f"must be a list, got {value!r}", "write a YAML list"))
            return ()
        return tuple(_coerce(v, item, f"{where}[{i}]", problems) for i, v in enumerate(value))
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        try:
            ok = value in allowed
        except TypeError:  # an unhashable value compared with the choices
            ok = False
        if not ok:
            problems.append(Problem(where, f"{value!r} is not allowed", f"use one of {', '.join(map(repr, allowed))}"))
            return None  # never build a config holding a value its readers cannot handle
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(Problem(where, f"must be a mapping, got {value!r}", "write a YAML mapping"))
            return None
        return build(tp, value, where, problems)
    if tp is float:
        number: float | None = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer too large for a float
                number = math.inf
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            problems.append(Problem(where, f"must be a number, got {value!r}", "write a number such as 2e-4"))
            return None
        if not math.isfinite(number):
            problems.append(Problem(where, f"must be a finite number, got {value!r}", "write a number such as 2e-4"))
            return None
        return number
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(Problem(where, f"must be a whole number, got {value!r}", "write an integer"))
            return None
        return value
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(Problem(where, f"must be true or false, got {value!r}", "write true or false"))
            return None
        return value
    if tp is str:
        if not isinstance(value, str):
            problems.append(Problem(where, f"must be a string, got {value!r}", "quote the value"))
            return None
        return value
    return value


def build(cls: type[T], raw: dict[str, Any], where: str, problems: list[Problem]) -> T:
    """Build a frozen dataclass from a mapping, recording every unknown key, missing key and bad type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                Problem(
                    f"{where}.{key}" if where else str(key), "unknown key", f"{hint}allowed keys: {', '.join(fields)}"
                )
            )
            continue
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}" if where else key, problems)
    for name, f in fields.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(Problem(f"{where}.{name}" if where else name, "missing", "add this key"))
    if any(
        v is None and hints[k] is not type(None) and type(None) not in typing.get_args(hints[k])
        for k, v in kwargs.items()
    ):
        return None  # type: ignore[return-value]
    try:
        return cls(**kwargs)
    except TypeError:
        return None  # type: ignore[return-value]
