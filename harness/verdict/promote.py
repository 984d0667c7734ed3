"""The champion alias: which run is the current baseline, and moving it only when every gate passed."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.errors import HarnessInputError, Problem
from harness.io import atomic_write_json, read_jsonl, sha256_file
from harness.verdict.gates import GatePolicy, evaluate_gates
from harness.verdict.ledger import run_report_path

ALIAS_FILE = "champion.json"


def run_dir_of(reports_dir: Path, run_id: str) -> Path:
    """The run folder, with the ledger's path checks (one place decides what a run id may be)."""
    return run_report_path(reports_dir, run_id).parent


def champion(reports_dir: Path) -> str | None:
    alias = reports_dir / ALIAS_FILE
    if not alias.is_file():
        return None
    try:
        run_id = json.loads(alias.read_text(encoding="utf-8"))["run_id"]
    except (json.JSONDecodeError, KeyError, TypeError):
        raise HarnessInputError(
            Problem(
                str(alias), "is not a champion alias file", "delete it and promote a run again (harness promote RUN)"
            )
        ) from None
    return str(run_id)


REGATE_PREFIX = "regate-"


def _read_report(path: Path) -> dict[str, Any]:
    """report.json as an object, or an input error naming the file: unreadable, not JSON, not an object."""
    fix = "restore report.json from a backup, or run the evaluation again under a new --run-id"
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise HarnessInputError(Problem(str(path), f"is not UTF-8 text (byte {exc.start})", fix)) from None
    except OSError as exc:
        raise HarnessInputError(Problem(str(path), f"cannot be read ({exc.strerror})", fix)) from None
    try:
        report = json.loads(text)
    except json.JSONDecodeError as exc:
        what = (
            "is empty"
            if not text.strip()
            else f"is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
        )
        raise HarnessInputError(Problem(str(path), what + "; truncated or corrupted?", fix)) from None
    if not isinstance(report, dict):
        raise HarnessInputError(Problem(str(path), f"is a JSON {type(report).__name__}, not a report object", fix))
    return report


def _check_shape(path: Path, report: dict[str, Any]) -> None:
    """The keys gate and promote read, with their types: a wrong shape is named, never a KeyError."""
    fix = "restore report.json as `harness pipeline` or `harness compare` wrote it"
    expect: list[tuple[str, Any, type | tuple[type, ...]]] = [
        ("run_id", report.get("run_id"), str),
        ("suite", report.get("suite"), dict),
        ("variants", report.get("variants"), dict),
    ]
    suite = report.get("suite")
    if isinstance(suite, dict):
        expect.append(("suite.path", suite.get("path"), str))
    if "variant_order" in report:
        expect.append(("variant_order", report.get("variant_order"), list))
    for key, value, typ in expect:
        if value is None:
            raise HarnessInputError(Problem(f"{path}: key '{key}'", "missing", fix))
        if not isinstance(value, typ):
            name = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            raise HarnessInputError(
                Problem(f"{path}: key '{key}'", f"is a {type(value).__name__}, expected a {name}", fix)
            )
    order = report.get("variant_order")
    if isinstance(order, list) and not all(isinstance(n, str) for n in order):
        raise HarnessInputError(Problem(f"{path}: key 'variant_order'", "is not a list of variant names", fix))
    for name, block in report["variants"].items():
        if not isinstance(block, dict):
            raise HarnessInputError(
                Problem(f"{path}: key 'variants.{name}'", f"is a {type(block).__name__}, expected an object", fix)
            )


def _check_gates_shape(where: str, gates: Any) -> dict[str, Any]:
    fix = "evaluate the gates again: harness gate RUN"
    if not isinstance(gates, dict):
        raise HarnessInputError(Problem(f"{where}: key 'gates'", f"is a {type(gates).__name__}, not an object", fix))
    if not isinstance(gates.get("verdict"), str):
        raise HarnessInputError(Problem(f"{where}: key 'gates.verdict'", "missing or not a string", fix))
    checks = gates.get("checks")
    if not isinstance(checks, list) or not all(
        isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("verdict"), str) for c in checks
    ):
        raise HarnessInputError(
            Problem(f"{where}: key 'gates.checks'", "is not a list of checks with an id and a verdict", fix)
        )
    return gates


def load_run(reports_dir: Path, run_id: str) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """A pipeline run's folder, report and per-case rows; a broken report.json or cases.jsonl is an input error."""
    run_dir = run_dir_of(reports_dir, run_id)
    path = run_dir / "report.json"
    report = _read_report(path)
    if report.get("kind") not in ("pipeline", "compare"):
        raise HarnessInputError(
            Problem(
                str(path),
                f"is a {report.get('kind')!r} report",
                "gates compare variants: pass a `harness pipeline` or `harness compare` run",
            )
        )
    _check_shape(path, report)
    cases = run_dir / "cases.jsonl"
    if not cases.is_file():
        raise HarnessInputError(
            Problem(
                str(cases),
                "is missing: the run's per-case results are needed to evaluate gates",
                "restore cases.jsonl next to report.json, or run the evaluation again under a new --run-id",
            )
        )
    problems: list[Problem] = []
    rows = [obj for _, obj in read_jsonl(cases, problems)]
    if problems:
        raise HarnessInputError(problems)
    return run_dir, report, rows


def champion_variant(reports_dir: Path) -> str | None:
    """Which variant of the champion run was promoted (None for aliases written before variants had names)."""
    alias = reports_dir / ALIAS_FILE
    if not alias.is_file():
        return None
    try:
        value = json.loads(alias.read_text(encoding="utf-8")).get("variant")
    except (json.JSONDecodeError, AttributeError):
        return None
    return str(value) if value else None


def champion_rows(
    reports_dir: Path, exclude: str | None = None
) -> tuple[str | None, list[dict[str, Any]] | None, str | None]:
    """The champion's id, rows and promoted variant; none when there is no champion or it is the run being judged."""
    run_id = champion(reports_dir)
    if run_id is None or run_id == exclude:
        return None, None, None
    return run_id, load_run(reports_dir, run_id)[2], champion_variant(reports_dir)


def regate(reports_dir: Path, run_id: str, policy: GatePolicy) -> tuple[Path, dict[str, Any]]:
    """Apply a gate policy to an existing run (against the current champion); the report is not written."""
    run_dir, report, rows = load_run(reports_dir, run_id)
    champ_id, champ_rows, champ_variant = champion_rows(reports_dir, exclude=run_id)
    try:
        report["gates"] = evaluate_gates(policy, report, rows, champ_rows, champ_id, champ_variant)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise HarnessInputError(
            Problem(
                str(run_dir / "report.json"),
                f"lacks what the gates read ({type(exc).__name__}: {exc}); it was edited or written by another tool",
                "restore report.json and cases.jsonl as the run wrote them",
            )
        ) from None
    return run_dir, report


def write_regate(run_dir: Path, gates: dict[str, Any]) -> Path:
    """A re-gating is a new file beside the report (regate-<time>.json), never a change to report.json:
    the report stays what was evaluated (and what a sign-off hashed)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = run_dir / f"{REGATE_PREFIX}{stamp}.json"
    n = 2
    while path.exists():
        path = run_dir / f"{REGATE_PREFIX}{stamp}-{n}.json"
        n += 1
    report_path = run_dir / "report.json"
    atomic_write_json(
        path,
        {
            "kind": "regate",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "report_sha256": sha256_file(report_path),
            "gates": gates,
        },
    )
    return path


def _regate_order(path: Path) -> tuple[str, int]:
    stem = path.stem[len(REGATE_PREFIX) :]
    stamp, _, n = stem.partition("-")
    return stamp, int(n) if n.isdigit() else 1


def latest_gates(run_dir: Path, report: dict[str, Any]) -> tuple[str, Any]:
    """The run's current gate results: the newest re-gating of this very report.json (by its sha256), else the
    report's own; (where, gates). A re-gating of an earlier report.json is stale and skipped."""
    report_path = run_dir / "report.json"
    current = sha256_file(report_path)
    for path in sorted(run_dir.glob(f"{REGATE_PREFIX}*.json"), key=_regate_order, reverse=True):
        data = _read_report(path)
        if data.get("report_sha256") == current:
            return str(path), data.get("gates")
    return str(report_path), report.get("gates")


def _policy_record(
    where: str, gates: dict[str, Any], report: dict[str, Any], run_id: str, allow_policy: Path | None
) -> dict[str, Any]:
    """Which policy gated the run, and whether it is the suite's own gates.yaml (by sha256); a foreign one is
    refused unless --allow-policy names that very file, and is then recorded as not the suite's."""
    from harness.verdict.gates import GATES_FILE

    suite_file = Path(str(report["suite"]["path"])) / GATES_FILE
    suite_sha = sha256_file(suite_file) if suite_file.is_file() else None
    used_path, used_sha = gates.get("policy"), gates.get("policy_sha256")
    record = {
        "path": used_path,
        "sha256": used_sha,
        "suite_policy": bool(used_sha) and used_sha == suite_sha,
        "suite_policy_path": str(suite_file),
        "suite_policy_sha256": suite_sha,
        "gates_from": where,
    }
    if record["suite_policy"]:
        return record
    if suite_sha is None:
        why = f"the suite has no {GATES_FILE} to compare with ({suite_file} is missing)"
    elif not used_sha:
        why = "the gate results record no policy hash"
    else:
        why = f"policy {used_path} (sha256 {str(used_sha)[:12]}) is not the suite's {suite_file} ({suite_sha[:12]})"
    if allow_policy is None:
        raise HarnessInputError(
            Problem(
                f"run {run_id}: {where}",
                f"was not gated with the suite's policy: {why}",
                f"re-gate with the suite's policy (harness gate {run_id}), or promote under this policy on record "
                f"with --allow-policy {used_path or 'POLICY.yaml'}",
            )
        )
    if not allow_policy.is_file():
        raise HarnessInputError(
            Problem(
                f"--allow-policy {allow_policy}", "no such file", "name the gate policy file the run was gated with"
            )
        )
    if not used_sha or sha256_file(allow_policy) != used_sha:
        raise HarnessInputError(
            Problem(
                f"--allow-policy {allow_policy}",
                f"is not the policy the run was gated with ({why})",
                f"pass the file whose sha256 is {used_sha}" if used_sha else "re-gate the run: harness gate RUN",
            )
        )
    record["allowed_by"] = str(allow_policy)
    record["note"] = "NOT the suite's policy: promoted with --allow-policy"
    return record


def promoted_variant(report: dict[str, Any], asked: str | None, where: str) -> str:
    """The variant that becomes the champion: the one asked for, else the run's only adapter."""
    order = report.get("variant_order") or ["base", "adapter", "merged"]
    kinds = {n: (report.get("variants") or {}).get(n, {}).get("kind", n) for n in order}
    if asked is not None:
        if asked not in order:
            raise HarnessInputError(
                Problem(f"--variant {asked}", f"is not a variant of {where}", f"use one of: {', '.join(order)}")
            )
        return asked
    adapters = [n for n in order if kinds[n] == "adapter"]
    if len(adapters) != 1:
        raise HarnessInputError(
            Problem(
                where,
                f"has {len(adapters)} adapter variants",
                f"say which one becomes the champion: --variant NAME ({', '.join(order)})",
            )
        )
    return adapters[0]


def promote(
    reports_dir: Path, run_id: str, variant: str | None = None, allow_policy: Path | None = None
) -> dict[str, Any]:
    """Move the alias to run_id (and one of its variants) only if its gates (the newest re-gating, else the
    report's) all passed under the suite's own policy, or under the policy --allow-policy names, recorded."""
    run_dir = run_dir_of(reports_dir, run_id)
    report_path = run_dir / "report.json"
    report = _read_report(report_path)
    _check_shape(report_path, report)
    where, gates = latest_gates(run_dir, report)
    if gates is None or gates == {}:
        raise HarnessInputError(
            Problem(
                where,
                "has no gate results",
                "run the pipeline with a gates.yaml next to the suite, or evaluate them: harness gate RUN",
            )
        )
    gates = _check_gates_shape(where, gates)
    if gates["verdict"] != "pass":
        bad = [c["id"] for c in gates["checks"] if c["verdict"] not in ("pass", "not_applicable")]
        raise HarnessInputError(
            Problem(
                f"run {run_id}",
                f"gates verdict is {gates['verdict']} ({', '.join(bad[:6])})",
                "only a run whose every gate passed can become the champion",
            )
        )
    name = promoted_variant(report, variant, f"run {run_id}")
    policy = _policy_record(where, gates, report, run_id, allow_policy)
    previous = champion(reports_dir)
    block = (report.get("variants") or {}).get(name, {})
    entry = {
        "run_id": run_id,
        "variant": name,
        "previous": previous,
        "suite": report["suite"],
        "adapter_sha256": block.get("adapter_sha256") or (report.get("adapter") or {}).get("sha256"),
        "policy": policy,
    }
    atomic_write_json(reports_dir / ALIAS_FILE, entry)
    return entry
