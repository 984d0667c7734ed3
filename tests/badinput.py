"""The bad-input contract, checked the same way for every corpus entry.

A bad input must end in exit code 2 with one message that names the place (file, line, key or flag), no
traceback, no network request, and no change on disk outside the reports folder (nothing already there
replaced). `reject` runs the CLI in-process with sockets refused and the watched folders snapshotted.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.cli import main


class NetworkRequest(AssertionError):
    """Raised in place of any outgoing connection while a corpus entry runs."""


@dataclass(frozen=True)
class Rejection:
    code: int
    stderr: str
    stdout: str


def snapshot(*roots: Path) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) of every file under the roots: what 'nothing changed on disk' compares."""
    out: dict[str, tuple[int, str]] = {}
    for root in roots:
        if root.is_file():
            files: Iterator[Path] = iter([root])
        elif root.is_dir():
            files = (p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        else:
            continue
        for p in files:
            data = p.read_bytes()
            out[str(p)] = (len(data), hashlib.sha256(data).hexdigest())
    return out


@contextlib.contextmanager
def no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every connect attempt fails the test (loopback included: no input may open a socket)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise NetworkRequest(f"a network request was made: {args[1:] if len(args) > 1 else args}")

    with monkeypatch.context() as m:
        m.setattr(socket.socket, "connect", refuse)
        m.setattr(socket.socket, "connect_ex", refuse)
        m.setattr(socket, "create_connection", refuse)
        m.setattr(socket, "getaddrinfo", refuse)
        yield


def reject(
    argv: Sequence[str],
    where: str | Sequence[str],
    watch: Sequence[Path],
    monkeypatch: pytest.MonkeyPatch,
    allowed_new: Sequence[Path] = (),
) -> Rejection:
    """Run `harness ARGV`; assert the bad-input contract and return what it printed.

    `where`: text (or any of several texts) the message must contain, e.g. the file name and key.
    `watch`: folders and files that must be unchanged afterwards. `allowed_new`: folders where new files may
    appear (never a changed one), e.g. an empty reports folder a command is allowed to create.
    """
    before = snapshot(*watch)
    err, out = io.StringIO(), io.StringIO()
    with no_network(monkeypatch), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: usage errors exit 2 with one message
            code = int(exc.code) if isinstance(exc.code, int) else 2
        except NetworkRequest:
            raise
        except BaseException as exc:  # noqa: BLE001 - any other exception is a traceback for the user
            raise AssertionError(f"harness {' '.join(argv)} raised {type(exc).__name__}: {exc}") from exc
    stderr, stdout = err.getvalue(), out.getvalue()
    assert code == 2, (
        f"exit {code}, expected 2, for harness {' '.join(argv)}\nstderr: {stderr}\nstdout: {stdout[-2000:]}"
    )
    assert "Traceback" not in stderr, stderr
    needles = [where] if isinstance(where, str) else list(where)
    assert any(n in stderr for n in needles), f"the message names none of {needles}:\n{stderr}"
    errors = [line for line in stderr.splitlines() if line.startswith(("harness: error", "usage:"))]
    assert len(errors) == 1, f"expected one message, got {len(errors)}:\n{stderr}"
    after = snapshot(*watch)
    changed = sorted(p for p in before if after.get(p) != before[p])
    new = sorted(p for p in after if p not in before and not any(Path(p).is_relative_to(a) for a in allowed_new))
    assert not changed and not new, f"files changed {changed[:5]} or written {new[:5]} by harness {' '.join(argv)}"
    return Rejection(code, stderr, stdout)
