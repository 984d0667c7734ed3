"""File helpers: atomic writes so a crash never leaves a half-written report, and strict JSONL reading."""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import HarnessInputError, Problem


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temp path in `path`'s folder for a writer that opens files itself; fsync and rename on success.

    Why: a crash or an exception mid-write leaves the old file (or none), never a truncated one that a later
    run would load.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


def text_problem(path: Path, what: str = "file") -> tuple[str | None, Problem | None]:
    """(text, None) for a readable UTF-8 text file, else (None, the problem naming the file and the fix).

    Why one reader: every loader used to call read_text and let a UnicodeDecodeError (or an IsADirectoryError)
    escape as a traceback that named neither the file nor the fix.
    """
    if path.is_dir():
        return None, Problem(str(path), f"is a folder, not a {what}", f"pass the path of the {what} itself")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, Problem(str(path), "no such file", f"create the {what} or fix the path")
    except OSError as exc:
        return None, Problem(str(path), f"cannot be read ({exc.strerror or exc})", "check the path and permissions")
    for bom, name in _BOMS:
        if data.startswith(bom):
            return None, Problem(
                str(path), f"is {name} text (it starts with a {name} byte-order mark)", "save it as UTF-8"
            )
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        kind = "binary data" if b"\0" in data[:4096] else "not UTF-8 text"
        return None, Problem(
            f"{path}:{line}",
            f"{kind} ({exc.reason}: byte 0x{data[exc.start]:02x} at offset {exc.start})",
            "save it as UTF-8 text",
        )
    if "\0" in text:
        line = text.count("\n", 0, text.index("\0")) + 1
        return None, Problem(f"{path}:{line}", "contains a NUL byte: binary data, not text", "save it as UTF-8 text")
    return text, None


def read_text_strict(path: Path, what: str = "file") -> str:
    """A user's text file as str; a folder, a missing file, a non-UTF-8 or binary file is a HarnessInputError."""
    text, problem = text_problem(path, what)
    if problem is not None:
        raise HarnessInputError(problem)
    assert text is not None
    return text


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def json_value_error(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc).split(";")[0]


def loads_json_strict(text: str) -> Any:
    """json.loads without NaN/Infinity (not JSON; they would poison every mean). Raises JSONDecodeError for
    syntax, ValueError for NaN/Infinity or a number too long to convert, RecursionError for absurd nesting."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large for a number")
    return value


def read_jsonl(path: Path, problems: list[Problem]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; record unparsable lines as problems."""
    text, problem = text_problem(path, "JSONL file")
    if problem is not None:
        problems.append(problem)
        return
    assert text is not None
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = loads_json_strict(line)
        except json.JSONDecodeError as exc:
            problems.append(
                Problem(
                    f"{path}:{lineno}",
                    f"invalid JSON ({exc.msg} at column {exc.colno})",
                    "make each line one JSON object",
                )
            )
            continue
        except (ValueError, RecursionError) as exc:
            problems.append(
                Problem(f"{path}:{lineno}", f"invalid JSON ({json_value_error(exc)})", "make each line one JSON object")
            )
            continue
        if not isinstance(obj, dict):
            problems.append(
                Problem(
                    f"{path}:{lineno}",
                    f"expected a JSON object, got {type(obj).__name__}",
                    "make each line one JSON object",
                )
            )
            continue
        yield lineno, obj


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_json(obj: Any) -> str:
    return sha256_text(json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":")))


def blocking_file(path: Path) -> Path | None:
    """The first of `path` and its parents that exists but is not a folder: where a folder cannot be made."""
    for p in (path, *path.parents):
        if p.exists():
            return None if p.is_dir() else p
    return None
