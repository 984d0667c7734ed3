"""Sign-off ledger: who approved or rejected which report, in a file that shows any later tampering.

Each line of `<reports_dir>/ledger.jsonl` is one sign-off that carries the SHA-256 of the report it
signed and the hash of the line before it, so editing, reordering or removing a line breaks the chain.
A signed entry also carries an ed25519 signature over `signed_payload(entry)` (harness.verdict.signing);
the hash covers the signature, and the signature covers prev_hash, so a signature cannot be moved or dropped.
Removing the *last* line leaves a valid chain, so a small head file (`ledger.head.json`) records how
many entries there are and the last hash. The ledger is only ever appended to, under an exclusive lock,
so the CLI and the app can sign off at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import HarnessInputError, Problem
from harness.io import atomic_write_json, sha256_file, sha256_json, sha256_text

LEDGER_FILE = "ledger.jsonl"
HEAD_FILE = "ledger.head.json"
LOCK_FILE = ".ledger.lock"
DECISIONS = ("approve", "reject")
GENESIS = "0" * 64
ENTRY_KEYS = ("seq", "at", "run_id", "report_sha256", "verdict", "by", "decision", "note", "prev_hash", "hash")
NOT_SIGNED = ("signature", "hash")  # what the signature cannot cover: itself, and the hash computed over it
LEDGER_FIX = "restore the ledger files from a backup, or pass the reports folder that holds them with --reports-dir"


def entry_hash(entry: dict[str, Any]) -> str:
    """The hash covers every field but itself, in canonical JSON, so any edit changes it."""
    return sha256_json({k: v for k, v in entry.items() if k != "hash"})


def signed_payload(entry: dict[str, Any]) -> bytes:
    """What a signer signs: the entry's canonical JSON without the signature and the hash computed over it."""
    body = {k: v for k, v in entry.items() if k not in NOT_SIGNED}
    return json.dumps(body, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")


def check_ledger_paths(reports_dir: Path) -> None:
    """Refuse a reports path that is a file, or ledger files that are folders, before anything reads or writes."""
    if reports_dir.exists() and not reports_dir.is_dir():
        raise HarnessInputError(
            Problem(str(reports_dir), "is not a folder", "pass the reports folder with --reports-dir")
        )
    for name in (LEDGER_FILE, HEAD_FILE, LOCK_FILE):
        path = reports_dir / name
        if path.exists() and not path.is_file():
            raise HarnessInputError(
                Problem(str(path), "is a folder, not a ledger file", f"move it out of the way; {LEDGER_FIX}")
            )


def require_ledger(reports_dir: Path) -> None:
    """A ledger to read: a missing or mistyped reports folder is an input error, never an intact empty ledger."""
    check_ledger_paths(reports_dir)
    if not reports_dir.exists():
        raise HarnessInputError(
            Problem(str(reports_dir), "no such reports folder", "check --reports-dir (default: reports)")
        )
    if not (reports_dir / LEDGER_FILE).exists() and not (reports_dir / HEAD_FILE).exists():
        raise HarnessInputError(
            Problem(
                str(reports_dir / LEDGER_FILE),
                "no ledger found: no sign-off was ever recorded in this reports folder",
                "check --reports-dir; the first `harness signoff` creates the ledger",
            )
        )


def resolve_run_dir(reports_dir: Path, run_id: str) -> Path:
    """The run folder for run_id, refusing anything that is not a plain folder directly inside reports_dir.

    Resolving first defeats `..`, absolute paths and symlinks that point elsewhere.
    """
    fix = "pass the name of a run folder inside the reports directory, e.g. 20260101T000000Z-support_vi-demo"
    if not isinstance(run_id, str) or not run_id.strip():
        raise HarnessInputError(Problem("run id", "is empty", fix))
    if run_id in {".", ".."} or any(ch in run_id for ch in ("/", "\\", "\x00")) or run_id.startswith("."):
        raise HarnessInputError(
            Problem(
                f"run id {run_id!r}",
                "is not a plain folder name (path separators, '..' and hidden names are refused)",
                fix,
            )
        )
    root = reports_dir.resolve()
    run_dir = (root / run_id).resolve()
    if run_dir.parent != root:
        raise HarnessInputError(
            Problem(f"run id {run_id!r}", f"resolves to {run_dir}, which is not directly inside {root}", fix)
        )
    return run_dir


def run_report_path(reports_dir: Path, run_id: str) -> Path:
    """report.json of an existing run, with the same path checks as resolve_run_dir."""
    run_dir = resolve_run_dir(reports_dir, run_id)
    report = run_dir / "report.json"
    if not report.is_file():
        raise HarnessInputError(
            Problem(
                str(report),
                f"no such report: run {run_id!r} does not exist in {reports_dir}",
                "pick a run that has a report.json (list the reports directory)",
            )
        )
    if report.resolve().parent != run_dir:
        raise HarnessInputError(
            Problem(
                str(report),
                "is a link that points outside its run folder",
                "replace the link with the report file itself",
            )
        )
    return report


@contextmanager
def _locked(reports_dir: Path) -> Iterator[None]:
    reports_dir.mkdir(parents=True, exist_ok=True)
    with (reports_dir / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _read_lines(path: Path) -> list[tuple[int, dict[str, Any] | None, str]]:
    """(line number, entry or None, why it could not be read) for every non-blank line."""
    check_ledger_paths(path.parent)
    if not path.exists():
        return []
    out: list[tuple[int, dict[str, Any] | None, str]] = []
    for lineno, line in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            out.append((lineno, None, f"is not valid JSON ({exc})"))
            continue
        if not isinstance(obj, dict):
            out.append((lineno, None, f"is a JSON {type(obj).__name__}, not an entry object"))
            continue
        missing = [k for k in ENTRY_KEYS if k not in obj]
        if missing:
            out.append((lineno, None, f"lacks the key(s) {', '.join(missing)}"))
            continue
        out.append((lineno, obj, ""))
    return out


def _read_head(reports_dir: Path) -> tuple[dict[str, Any] | None, str]:
    path = reports_dir / HEAD_FILE
    if not path.exists():
        return None, ""
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return (
            None,
            f"{path}: is not valid JSON ({exc}); the head was damaged, so a removed last entry cannot be ruled out",
        )
    if (
        not isinstance(head, dict)
        or not isinstance(head.get("entries"), int)
        or not isinstance(head.get("last_hash"), str)
    ):
        return (
            None,
            (
                f'{path}: should be {{"entries": int, "last_hash": str}}; '
                "the head was damaged, so a removed last entry cannot be ruled out"
            ),
        )
    return head, ""


def _chain_problems(reports_dir: Path, rows: list[tuple[int, dict[str, Any] | None, str]]) -> list[str]:
    ledger = reports_dir / LEDGER_FILE
    problems: list[str] = []
    prev: dict[str, Any] | None = None
    chain_known = True
    for lineno, entry, why in rows:
        where = f"{ledger}:{lineno}"
        if entry is None:
            problems.append(
                f"{where}: the line {why}; it was edited or partly written, restore ledger.jsonl from a backup"
            )
            chain_known = False
            continue
        label = f"{where} (seq {entry['seq']}, run {entry['run_id']!r})"
        if entry_hash(entry) != entry["hash"]:
            problems.append(
                f"{label}: the stored hash does not match the entry's contents, "
                "so the entry was edited after it was signed"
            )
        if chain_known:
            if prev is None:
                want_seq: int | None = 1
            else:
                want_seq = prev["seq"] + 1 if isinstance(prev["seq"], int) else None
            want_prev = GENESIS if prev is None else prev["hash"]
            if want_seq is not None and entry["seq"] != want_seq:
                problems.append(
                    f"{label}: seq is {entry['seq']}, expected {want_seq}, "
                    "so an entry before it was removed or the lines were reordered"
                )
            if entry["prev_hash"] != want_prev:
                before = "the start of the ledger" if prev is None else f"the entry before it (seq {prev['seq']})"
                problems.append(
                    f"{label}: prev_hash does not match the hash of {before}, "
                    "so an entry was removed, inserted or reordered"
                )
        prev, chain_known = entry, True

    head, head_problem = _read_head(reports_dir)
    if head_problem:
        problems.append(head_problem)
    n = len(rows)
    last_hash = rows[-1][1].get("hash") if rows and rows[-1][1] is not None else None
    head_path = reports_dir / HEAD_FILE
    if head is None and not head_problem and n:
        problems.append(
            f"{head_path}: is missing while {ledger} has {n} entries; "
            "the head was deleted, so a removed last entry cannot be ruled out"
        )
    elif head is not None:
        if head["entries"] > n:
            where_from = "from the end (truncated tail)" if not problems else "(see the lines above)"
            problems.append(
                f"{head_path}: records {head['entries']} entries but {ledger} has {n}, "
                f"so {head['entries'] - n} were removed {where_from}"
            )
        elif head["entries"] < n:
            problems.append(
                f"{head_path}: records {head['entries']} entries but {ledger} has {n}; "
                "lines were added without updating the head (a crash mid-append, or a forged line)"
            )
        elif n and head["last_hash"] != last_hash:
            problems.append(
                f"{head_path}: last_hash does not match the hash of the last line of {ledger} "
                f"(line {rows[-1][0]}), so the last entry was replaced"
            )
    return problems


def _report_problems(reports_dir: Path) -> list[str]:
    ledger = reports_dir / LEDGER_FILE
    problems: list[str] = []
    for lineno, entry, _ in _read_lines(ledger):
        if entry is None:
            continue
        where = f"{ledger}:{lineno} (seq {entry['seq']}, run {entry['run_id']!r})"
        try:
            report = run_report_path(reports_dir, str(entry["run_id"]))
        except HarnessInputError as exc:
            problems.append(f"{where}: the signed report can no longer be found ({exc})")
            continue
        now = sha256_file(report)
        if now != entry["report_sha256"]:
            problems.append(
                f"{where}: {report} changed after this sign-off "
                f"(signed sha256 {str(entry['report_sha256'])[:12]}, now {now[:12]}); "
                "the sign-off no longer covers it, sign the new report again"
            )
    return problems


def verify_ledger(reports_dir: Path, check_reports: bool = True) -> list[str]:
    """Every problem in the ledger as a sentence naming its line; an empty list means intact.

    check_reports also compares each entry's report_sha256 with the report on disk, which catches a report
    that was rewritten after it was signed.
    """
    problems = _chain_problems(reports_dir, _read_lines(reports_dir / LEDGER_FILE))
    if check_reports:
        problems += _report_problems(reports_dir)
    return problems


def ledger_history(reports_dir: Path, run_id: str | None = None, strict: bool = False) -> list[dict[str, Any]]:
    """Readable entries in ledger order, optionally for one run.

    strict: a damaged line is an input error naming its line number (what `harness ledger show` needs: a list
    that silently skips a line would misreport the history); otherwise damaged lines are left to verify_ledger.
    """
    rows = _read_lines(reports_dir / LEDGER_FILE)
    if strict:
        ledger = reports_dir / LEDGER_FILE
        damaged = [
            Problem(f"{ledger}:{lineno}", f"the line {why}", f"run `harness ledger verify`; {LEDGER_FIX}")
            for lineno, entry, why in rows
            if entry is None
        ]
        if damaged:
            raise HarnessInputError(damaged)
    entries = [e for _, e, _ in rows if e is not None]
    return [e for e in entries if run_id is None or e.get("run_id") == run_id]


def entry_lines(reports_dir: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, entry) for every readable entry, for reports that name the line."""
    return [(lineno, e) for lineno, e, _ in _read_lines(reports_dir / LEDGER_FILE) if e is not None]


def append_signoff(
    reports_dir: Path,
    run_id: str,
    by: str,
    decision: str,
    note: str,
    extra: dict[str, Any] | None = None,
    sign: Callable[[bytes], str] | None = None,
) -> dict[str, Any]:
    """Record one approve/reject decision on a run's report; returns the entry as written.

    Refuses to extend a ledger whose chain is already broken: a new entry would hide the damage. `extra` adds
    fields (signer, attestations, checklist); `sign` turns signed_payload(entry) into the entry's signature,
    under the lock, once seq and prev_hash are known. The sign-off policy (is a signature required, what must
    be attested) is harness.verdict.signoff's, which calls this.
    """
    check_ledger_paths(reports_dir)
    problems: list[Problem] = []
    if decision not in DECISIONS:
        problems.append(Problem("decision", f"is {decision!r}", f"use one of: {', '.join(DECISIONS)}"))
    if not isinstance(by, str) or not by.strip():
        problems.append(Problem("by", "is empty: a sign-off needs the name of the person making it", "pass your name"))
    if not isinstance(note, str):
        problems.append(Problem("note", f"is a {type(note).__name__}, not text", "pass a string (it may be empty)"))
    try:
        report_path = run_report_path(reports_dir, run_id)
    except HarnessInputError as exc:
        problems.extend(p if isinstance(p, Problem) else Problem("run id", p) for p in exc.problems)
        report_path = None
    if problems:
        raise HarnessInputError(problems)
    assert report_path is not None

    try:
        text = report_path.read_bytes().decode("utf-8")
        report = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessInputError(
            Problem(
                str(report_path),
                f"cannot be read as JSON ({exc})",
                "re-run the evaluation to regenerate the report before signing it",
            )
        ) from exc
    if not isinstance(report, dict):
        raise HarnessInputError(
            Problem(
                str(report_path),
                "is not a JSON object",
                "re-run the evaluation to regenerate the report before signing it",
            )
        )
    gates = report.get("gates")
    verdict = gates.get("verdict") if isinstance(gates, dict) and isinstance(gates.get("verdict"), str) else None

    ledger = reports_dir / LEDGER_FILE
    with _locked(reports_dir):
        rows = _read_lines(ledger)
        broken = _chain_problems(reports_dir, rows)
        if broken:
            raise HarnessInputError(
                [
                    *broken[:5],
                    Problem(
                        str(ledger),
                        "is damaged, so no new sign-off was added",
                        "investigate with verify_ledger and restore the ledger from a backup",
                    ),
                ]
            )
        last = rows[-1][1] if rows else None
        entry: dict[str, Any] = {
            "seq": (int(last["seq"]) + 1) if last else 1,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "run_id": run_id,
            "report_sha256": sha256_text(text),
            "verdict": verdict,
            "by": by.strip(),
            "decision": decision,
            "note": note,
            "prev_hash": last["hash"] if last else GENESIS,
        }
        clash = sorted(set(extra or {}) & {*entry, *NOT_SIGNED})
        if clash:
            raise ValueError(f"extra fields may not replace {clash}")
        entry.update(extra or {})
        entry["signature"] = sign(signed_payload(entry)) if sign is not None else None
        entry["hash"] = entry_hash(entry)
        line = json.dumps(entry, ensure_ascii=False, sort_keys=True, separators=(",", ":")) + "\n"
        with ledger.open("ab") as handle:
            if handle.tell() > 0:
                with ledger.open("rb") as check:
                    check.seek(-1, os.SEEK_END)
                    if check.read(1) != b"\n":
                        line = "\n" + line
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        atomic_write_json(reports_dir / HEAD_FILE, {"entries": entry["seq"], "last_hash": entry["hash"]})
    return entry
