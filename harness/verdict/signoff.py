"""A sign-off is a release decision with its evidence: who (a signature), on what (the checklist), saying what.

The policy is the `signoff:` block of the gates.yaml next to the run's suite (the suite's own, reviewed
policy; never a `--gates` file a run was judged by, so one run cannot relax its own sign-off):
`require_signature` (default true) and `attestations` (default licence, privacy, monitoring). Without that
file the defaults apply.
The ledger (harness.verdict.ledger) stores and chains the entries; this module decides what may be written
and audits what was written, for the CLI and the app alike.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.config import read_yaml
from harness.errors import HarnessInputError, Problem
from harness.verdict.checklist import Item, build_checklist, summary
from harness.verdict.gates import GATES_FILE, SignoffPolicy, load_policy
from harness.verdict.ledger import (
    DECISIONS,
    LEDGER_FILE,
    append_signoff,
    entry_lines,
    resolve_run_dir,
    run_report_path,
    signed_payload,
    verify_ledger,
)
from harness.verdict.signing import (
    SIGNING_KEY_ENV,
    AllowedSigners,
    SigningKey,
    check_signature,
    load_allowed_signers,
    public_line,
)

SETTING = "signoff: {require_signature: false}"


@dataclass(frozen=True)
class PolicySource:
    policy: SignoffPolicy
    where: str  # the file it came from, or why the defaults apply


def read_report(reports_dir: Path, run_id: str) -> dict[str, Any]:
    """The run's report as a JSON object; anything else is an input error naming the file."""
    path = run_report_path(reports_dir, run_id)
    try:
        report = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HarnessInputError(
            Problem(str(path), f"cannot be read as JSON ({exc})", "re-run the evaluation to regenerate the report")
        ) from None
    if not isinstance(report, dict):
        raise HarnessInputError(
            Problem(str(path), "is not a JSON object", "re-run the evaluation to regenerate the report")
        )
    return report


def policy_for(report: dict[str, Any]) -> PolicySource:
    """The sign-off policy of the run's suite (its gates.yaml); the strict defaults when it has none."""
    suite = report.get("suite")
    if not isinstance(suite, dict) or not isinstance(suite.get("path"), str):
        return PolicySource(SignoffPolicy(), "defaults (the report names no suite folder)")
    path = Path(suite["path"]) / GATES_FILE
    if path.is_file():
        return PolicySource(load_policy(path).signoff, str(path))
    return PolicySource(SignoffPolicy(), f"defaults (no gate policy found: {path})")


def policy_of_run(reports_dir: Path, run_id: str) -> PolicySource:
    """policy_for on the run's report; an unreadable report gets the strict defaults."""
    try:
        return policy_for(read_report(reports_dir, run_id))
    except HarnessInputError as exc:
        return PolicySource(SignoffPolicy(), f"defaults (the run's report cannot be read: {exc})")


def parse_attestations(flags: list[str], file: Path | None = None) -> dict[str, str]:
    """NAME=TEXT flags and/or a YAML mapping file, merged; the same name twice is refused."""
    out: dict[str, str] = {}
    problems: list[Problem] = []
    if file is not None:
        raw = read_yaml(file, "a mapping of attestation name to what you attest, e.g. licence: ...")
        for name, text in raw.items():
            if not isinstance(text, str) or not text.strip():
                problems.append(Problem(f"{file}: {name}", "must be non-empty text", "say what you attest"))
                continue
            out[str(name)] = text.strip()
    for flag in flags:
        name, eq, text = flag.partition("=")
        name = name.strip()
        if not eq or not name or not text.strip():
            problems.append(Problem(f"--attest {flag}", "is not NAME=TEXT", "e.g. --attest licence='Apache-2.0 base'"))
        elif name in out:
            problems.append(Problem(f"--attest {name}", "is given twice", "attest each item once"))
        else:
            out[name] = text.strip()
    if problems:
        raise HarnessInputError(problems)
    return out


@dataclass(frozen=True)
class Prepared:
    """What a signer sees before deciding: the run, its policy and its checklist."""

    run_id: str
    report: dict[str, Any]
    policy: PolicySource
    checklist: list[Item] = field(default_factory=list)


def prepare(reports_dir: Path, run_id: str, attestations: dict[str, str] | None = None) -> Prepared:
    report = read_report(reports_dir, run_id)
    source = policy_for(report)
    items = build_checklist(reports_dir, run_id, report, attestations, source.policy.attestations)
    return Prepared(run_id, report, source, items)


def sign_off(
    reports_dir: Path,
    run_id: str,
    by: str,
    decision: str,
    note: str,
    key: SigningKey | None,
    signers_path: Path,
    attestations: dict[str, str] | None = None,
    unsigned: bool = False,
) -> dict[str, Any]:
    """Check everything a sign-off needs (all problems at once), then append it, signed, to the ledger.

    Nothing is written when any check fails: a wrong principal, a key not in the allowed signers, an
    unsigned sign-off the policy does not allow, or an approval lacking an attestation.
    """
    problems: list[Problem] = []
    if decision not in DECISIONS:
        problems.append(Problem("decision", f"is {decision!r}", f"use one of: {', '.join(DECISIONS)}"))
    if not isinstance(by, str) or not by.strip():
        problems.append(Problem("by", "is empty: a sign-off needs the name of the person making it", "pass your name"))
    principal = by.strip() if isinstance(by, str) else ""
    try:
        resolve_run_dir(reports_dir, run_id)
        prepared: Prepared | None = prepare(reports_dir, run_id, attestations)
    except HarnessInputError as exc:
        problems.extend(p if isinstance(p, Problem) else Problem("run id", p) for p in exc.problems)
        prepared = None
    if prepared is not None:
        source = prepared.policy
        if key is None and not unsigned:
            problems.append(
                Problem(
                    "signature",
                    "a sign-off is signed with your ed25519 key",
                    f"pass --key ~/.ssh/id_ed25519 (or set ${SIGNING_KEY_ENV})"
                    + ("" if source.policy.require_signature else ", or --unsigned: this run's policy allows it"),
                )
            )
        elif key is not None and unsigned:
            problems.append(Problem("--unsigned", "was given with a key", "pass one of --key and --unsigned"))
        elif key is None and source.policy.require_signature:
            problems.append(
                Problem(
                    "--unsigned",
                    f"is refused: the sign-off policy ({source.where}) requires a signature",
                    f"sign with --key; unsigned sign-offs are allowed only by `{SETTING}` in the suite's {GATES_FILE}",
                )
            )
        required = source.policy.attestations
        given = attestations or {}
        for name in given:
            if name not in required:
                close = difflib.get_close_matches(name, list(required), n=1)
                problems.append(
                    Problem(
                        f"--attest {name}",
                        f"is not an attestation of this policy ({source.where})",
                        (f"did you mean {close[0]!r}? " if close else "")
                        + f"attest {', '.join(required) or 'nothing'}",
                    )
                )
        missing = [n for n in required if not str(given.get(n) or "").strip()]
        if decision == "approve" and missing:
            problems.append(
                Problem(
                    "approve",
                    f"needs every attestation; missing: {', '.join(missing)}",
                    " ".join(f"--attest {n}=..." for n in missing) + " (a reject needs none)",
                )
            )
    if key is not None and principal:
        try:
            signers: AllowedSigners | None = load_allowed_signers(signers_path)
        except HarnessInputError as exc:
            problems.extend(p if isinstance(p, Problem) else Problem(str(signers_path), p) for p in exc.problems)
            signers = None
        if signers is not None:
            why = signers.authorise(key.fingerprint, principal, datetime.now(timezone.utc))
            if why:
                allowed = signers.principals_of(key.fingerprint)
                problems.append(
                    Problem(
                        f"--by {principal}",
                        why,
                        f"sign as one of {', '.join(allowed)}"
                        if allowed
                        else f"add `{principal} {public_line(key.public)}` to {signers_path} (reviewed as code)",
                    )
                )
    if problems:
        raise HarnessInputError(problems)
    assert prepared is not None
    extra: dict[str, Any] = {
        "attestations": {
            n: (attestations or {})[n] for n in prepared.policy.policy.attestations if n in (attestations or {})
        },
        "checklist": summary(prepared.checklist),
        "policy": prepared.policy.where,
        "key_fingerprint": key.fingerprint if key is not None else None,
    }
    return append_signoff(
        reports_dir, run_id, principal, decision, note, extra=extra, sign=key.sign if key is not None else None
    )


# ---------------------------------------------------------------- audit


@dataclass(frozen=True)
class EntryStatus:
    line: int
    seq: Any
    run_id: str
    by: str
    decision: str
    at: str
    status: str  # valid, unsigned, unknown signer, bad signature (or not checked: no usable allowed signers)
    detail: str
    note: str
    allowed: bool  # false: this status is a problem (any but valid, or unsigned where signatures are required)


@dataclass(frozen=True)
class Audit:
    problems: list[str]  # every problem as a sentence naming its line: chain, reports and signatures
    entries: list[EntryStatus]
    signers_problem: str = ""  # why signatures could not be checked (the allowed-signers file is unusable)


def _when(at: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(at))
    except ValueError:
        return None


def entry_status(
    entry: dict[str, Any], signers: AllowedSigners | None, policy: PolicySource | None
) -> tuple[str, str, bool]:
    """(status, why, allowed) of one entry; `signers` None means signed entries cannot be checked."""
    signature = entry.get("signature")
    if signature is None:
        if policy is not None and not policy.policy.require_signature:
            return "unsigned", f"unsigned, as the sign-off policy ({policy.where}) allows", True
        where = policy.where if policy is not None else "defaults"
        return "unsigned", f"unsigned, but the sign-off policy ({where}) requires a signature", False
    if signers is None:
        return "not checked", "signed, but the allowed-signers file cannot be read", False
    status, why = check_signature(
        signed_payload(entry),
        signature,
        entry.get("key_fingerprint"),
        str(entry.get("by")),
        _when(entry.get("at")),
        signers,
    )
    return status, why, status == "valid"


def audit_ledger(
    reports_dir: Path, signers_path: Path, check_reports: bool = True, require_signers: bool = False
) -> Audit:
    """verify_ledger's chain and report problems plus every entry's signature status.

    The allowed-signers file is read only when some entry is signed; an unusable one is an input error with
    require_signers (`harness ledger verify`), else those entries are "not checked" and signers_problem says why.
    """
    problems = list(verify_ledger(reports_dir, check_reports))
    rows = entry_lines(reports_dir)
    signers: AllowedSigners | None = None
    signers_problem = ""
    if any(e.get("signature") is not None for _, e in rows):
        try:
            signers = load_allowed_signers(signers_path)
        except HarnessInputError as exc:
            if require_signers:
                raise
            signers_problem = exc.render()
            problems.append(f"signatures not checked: {signers_problem}")
    policies: dict[str, PolicySource] = {}
    statuses: list[EntryStatus] = []
    ledger = reports_dir / LEDGER_FILE
    for lineno, e in rows:
        run_id = str(e.get("run_id"))
        if e.get("signature") is None and run_id not in policies:
            policies[run_id] = policy_of_run(reports_dir, run_id)
        status, why, allowed = entry_status(e, signers, policies.get(run_id))
        statuses.append(
            EntryStatus(
                lineno,
                e.get("seq"),
                run_id,
                str(e.get("by")),
                str(e.get("decision")),
                str(e.get("at")),
                status,
                why,
                str(e.get("note", "")),
                allowed,
            )
        )
        if not allowed and status != "not checked":
            problems.append(f"{ledger}:{lineno} (seq {e.get('seq')}, run {run_id!r}): {status}: {why}")
    return Audit(problems, statuses, signers_problem)
