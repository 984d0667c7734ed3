"""The production-readiness checklist a sign-off is made against: evidence from the run, attestations from a person.

Items the harness has evidence for are filled in from the run's report.json, each with the files (and JSON
keys) it was read from; items only a person can vouch for (licence, privacy review, monitoring plan, or what
the gate policy's `signoff.attestations` lists) are attested by the signer and recorded in the signed entry.
The CLI prints this before recording a sign-off and the app shows it on the run's page: one source for both.
It never raises on an odd report: a section of the wrong shape is an item that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.errors import HarnessInputError
from harness.verdict.gates import ATTESTATIONS
from harness.verdict.promote import ALIAS_FILE, champion

Status = Literal["ok", "partial", "fail", "missing", "n/a", "attested", "unattested"]
# what blocks nothing but deserves a look before approving
NEEDS_LOOK: tuple[Status, ...] = ("partial", "fail", "missing", "unattested")
TITLES = {
    "baseline": "Baseline and golden evaluation",
    "seeded_split": "Seeded train/validation split",
    "training_metadata": "Training metadata",
    "sanity_check": "Sanity checks (pre-training doctor, data hygiene)",
    "regression_safety": "Regression and safety evaluation (gates)",
    "merge_parity": "Merge parity (merged and GGUF exports vs their source)",
    "serving": "Serving figures measured during evaluation",
    "rollback": "Rollback path (the current champion)",
    "licence": "Licence of the base model and the data",
    "privacy": "Privacy review",
    "monitoring": "Monitoring plan",
}


@dataclass(frozen=True)
class Evidence:
    """A file in (or next to) the run, and optionally the JSON key inside it the item was read from."""

    path: str
    key: str = ""

    def __str__(self) -> str:
        return f"{self.path}#{self.key}" if self.key else self.path


@dataclass(frozen=True)
class Item:
    id: str
    title: str
    status: Status
    detail: str
    evidence: tuple[Evidence, ...] = ()
    attested: bool = False  # an item a person vouches for, not the harness

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "evidence": [str(e) for e in self.evidence],
        }


def _get(obj: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _dict(obj: Any) -> dict[str, Any]:
    return obj if isinstance(obj, dict) else {}


def _order(report: dict[str, Any]) -> list[str]:
    order = report.get("variant_order")
    if isinstance(order, list) and all(isinstance(n, str) for n in order):
        return order
    return [n for n in ("base", "adapter", "merged") if n in _dict(report.get("variants"))]


def _kind(report: dict[str, Any], name: str) -> str:
    kind = _get(report, "variants", name, "kind")
    return kind if isinstance(kind, str) else name


def _short(value: Any, n: int = 12) -> str:
    return str(value)[:n] if value else "n/a"


class _Run:
    """Paths into one run folder, kept relative when the reports folder was given relative."""

    def __init__(self, reports_dir: Path, run_id: str) -> None:
        self.reports_dir = reports_dir
        self.dir = reports_dir / run_id
        self.report = str(self.dir / "report.json")

    def at(self, key: str) -> Evidence:
        return Evidence(self.report, key)

    def file(self, name: str) -> list[Evidence]:
        path = self.dir / name
        return [Evidence(str(path))] if path.is_file() else []


def _baseline(report: dict[str, Any], run: _Run) -> Item:
    suite = _dict(report.get("suite"))
    about = (
        f"golden suite {suite.get('name', '?')} v{suite.get('version', '?')} "
        f"({suite.get('n_cases', '?')} cases, suite hash {_short(suite.get('content_hash'))})"
    )
    files = run.file("cases.jsonl") + run.file("summary.md")
    if report.get("kind") == "eval":
        return Item(
            "baseline",
            TITLES["baseline"],
            "missing",
            f"one model evaluated on the {about}; no base model beside it (use harness pipeline or compare)",
            (run.at("/metrics"), run.at("/suite"), *files),
        )
    order = _order(report)
    bases = [n for n in order if _kind(report, n) == "base"]
    if not bases:
        return Item(
            "baseline",
            TITLES["baseline"],
            "missing",
            f"no base variant in this run: {', '.join(order) or 'no variant'} evaluated on the {about} "
            "without a baseline",
            (run.at("/variants"), run.at("/suite"), *files),
        )
    others = [n for n in order if n not in bases]
    return Item(
        "baseline",
        TITLES["baseline"],
        "ok",
        f"{bases[0]} evaluated on the {about} beside {len(others)} candidate(s): {', '.join(others) or 'none'}",
        (run.at(f"/variants/{bases[0]}"), run.at("/suite"), run.at("/headline"), *files),
    )


def _training_files(report: dict[str, Any]) -> list[Evidence]:
    """training_metadata.json beside each adapter the run names, where it still exists."""
    found: list[Evidence] = []
    paths = [_get(report, "adapter", "path")]
    for name in _order(report):
        for src in _get(report, "variants", name, "sources") or []:
            if isinstance(src, dict) and src.get("role") == "adapter" and isinstance(src.get("path"), str):
                paths.append(str(Path(src["path"]).parent))
    for p in paths:
        if not isinstance(p, str):
            continue
        for folder in (Path(p), Path(p).parent):
            meta = folder / "training_metadata.json"
            if meta.is_file() and str(meta) not in {e.path for e in found}:
                found.append(Evidence(str(meta)))
                break
    return found


def _seeded_split(report: dict[str, Any], run: _Run) -> Item:
    tr = _dict(report.get("training"))
    seed = tr.get("seed", _get(tr, "config", "seed"))
    data = _dict(tr.get("data"))
    fraction = _get(tr, "config", "data", "validation_fraction")
    train, validation = data.get("train"), data.get("validation")
    if isinstance(seed, int) and isinstance(train, int) and isinstance(validation, int):
        return Item(
            "seeded_split",
            TITLES["seeded_split"],
            "ok",
            f"seed {seed}: {train} train / {validation} validation examples of {data.get('path', '?')} "
            f"(sha256 {_short(data.get('sha256'))}"
            + (f", validation fraction {fraction}" if fraction is not None else "")
            + ")",
            (run.at("/training/seed"), run.at("/training/data"), *_training_files(report)),
        )
    return Item(
        "seeded_split",
        TITLES["seeded_split"],
        "missing",
        "no seed and train/validation split recorded: the adapter was trained outside the harness "
        "(or by an older one), so the split cannot be reproduced from this run",
        (run.at("/training"),),
    )


def _training_metadata(report: dict[str, Any], run: _Run) -> Item:
    tr = _dict(report.get("training"))
    if not tr:
        return Item(
            "training_metadata",
            TITLES["training_metadata"],
            "missing",
            "no training metadata in this report: train with `harness train` / `harness pipeline`, "
            "or keep training_metadata.json beside the adapter",
            (run.at("/training"),),
        )
    want = ("base_model", "data", "config_hash", "packages", "steps")
    lacking = [k for k in want if not tr.get(k)]
    base = _dict(tr.get("base_model"))
    losses = " · ".join(
        f"{k.replace('_', ' ')} {tr[k]:.4f}" for k in ("train_loss", "validation_loss") if isinstance(tr.get(k), float)
    )
    detail = (
        f"config {tr.get('config_hash', '?')}, {tr.get('steps', '?')} steps on base {base.get('spec', '?')} "
        f"(weights {_short(base.get('weights_sha256'))}), data sha256 {_short(_get(tr, 'data', 'sha256'))}"
        + (f"; {losses}" if losses else "")
        + (f"; lacks {', '.join(lacking)}" if lacking else "")
    )
    return Item(
        "training_metadata",
        TITLES["training_metadata"],
        "partial" if lacking else "ok",
        detail,
        (run.at("/training"), *_training_files(report)),
    )


def _hygiene(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """adapter name -> its data hygiene report (older reports hold one, under `hygiene`)."""
    per = report.get("hygiene_by_variant")
    if isinstance(per, dict):
        return {k: v for k, v in per.items() if isinstance(v, dict)}
    return {"adapter": report["hygiene"]} if isinstance(report.get("hygiene"), dict) else {}


def _sanity(report: dict[str, Any], run: _Run) -> Item:
    tr = _dict(report.get("training"))
    doctor = tr.get("doctor")
    per = report.get("hygiene_by_variant")
    hygiene = _hygiene(report)
    parts: list[str] = []
    status: Status = "ok"
    evidence = []
    if isinstance(doctor, list):
        errors = [f for f in doctor if isinstance(f, dict) and f.get("level") == "error"]
        warnings = [f for f in doctor if isinstance(f, dict) and f.get("level") == "warning"]
        parts.append(f"doctor: {len(errors)} errors, {len(warnings)} warnings before training")
        status = "fail" if errors else status
        evidence.append(run.at("/training/doctor"))
    for name, h in hygiene.items():
        leaks = len(_get(h, "leakage", "exact") or []) + len(_get(h, "leakage", "near") or [])
        parts.append(
            f"data hygiene of {name}: {h.get('verdict', '?')} ({h.get('examples', '?')} examples, "
            f"{leaks} leaked golden cases, {len(h.get('pii') or [])} PII matches)"
        )
        if h.get("verdict") != "pass":
            status = "fail"
        evidence.append(run.at("/hygiene_by_variant" if isinstance(per, dict) else "/hygiene"))
    if not parts:
        return Item(
            "sanity_check",
            TITLES["sanity_check"],
            "missing",
            "neither the pre-training doctor nor a data hygiene check is recorded "
            "(give the run the adapter's training data: `training_data:` in the run file)",
            (run.at("/training"), run.at("/hygiene")),
        )
    if status == "ok" and (not isinstance(doctor, list) or not hygiene):
        status = "partial"
        parts.append("doctor not recorded" if not isinstance(doctor, list) else "no data hygiene check")
    return Item("sanity_check", TITLES["sanity_check"], status, "; ".join(parts), tuple(dict.fromkeys(evidence)))


def _regression_safety(report: dict[str, Any], run: _Run) -> Item:
    gates = report.get("gates")
    safety = [f for f in report.get("safety_findings") or [] if isinstance(f, dict)]
    bases = {n for n in _order(report) if _kind(report, n) == "base"}
    on_candidates = [f for f in safety if f.get("variant") not in bases]
    safety_text = f"{len(on_candidates)} safety findings on candidates ({len(safety) - len(on_candidates)} on the base)"
    if not isinstance(gates, dict) or not gates.get("verdict"):
        return Item(
            "regression_safety",
            TITLES["regression_safety"],
            "missing",
            f"no gate results: run `harness gate {run.dir.name}` with a gates.yaml; {safety_text}",
            (run.at("/gates"), run.at("/safety_findings")),
        )
    checks = [c for c in gates.get("checks") or [] if isinstance(c, dict)]
    counts: dict[str, int] = {}
    for c in checks:
        counts[str(c.get("verdict"))] = counts.get(str(c.get("verdict")), 0) + 1
    bad = [str(c.get("id")) for c in checks if c.get("verdict") in ("fail", "inconclusive")]
    policy = gates.get("policy")
    evidence = [run.at("/gates"), run.at("/safety_findings"), *run.file("cases.jsonl")]
    if isinstance(policy, str) and Path(policy).is_file():
        evidence.append(Evidence(policy))
    verdict = str(gates["verdict"])
    detail = (
        f"gates {verdict} ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))})"
        + (f"; not passing: {', '.join(bad[:6])}" + (" ..." if len(bad) > 6 else "") if bad else "")
        + f"; policy {policy or 'n/a'}; {safety_text}"
    )
    return Item(
        "regression_safety",
        TITLES["regression_safety"],
        "ok" if verdict == "pass" else "fail",
        detail,
        tuple(evidence),
    )


def _merge_parity(report: dict[str, Any], run: _Run) -> Item:
    order = _order(report)
    derived = [n for n in order if _get(report, "variants", n, "derived_from")]
    relations = report.get("relations")
    if not isinstance(relations, dict):
        parity = report.get("parity")
        relations = {"merged": parity} if isinstance(parity, dict) else {}
        derived = derived or (["merged"] if relations else [])
        key = "/parity"
    else:
        key = "/relations"
    if not derived:
        return Item(
            "merge_parity",
            TITLES["merge_parity"],
            "n/a",
            "no merged or GGUF export in this run: what ships is the adapter on its base",
            (run.at("/variant_order"),),
        )
    parts, status = [], "ok"
    for name in derived:
        rel = relations.get(name)
        src = _get(report, "variants", name, "derived_from") or "adapter"
        if not isinstance(rel, dict):
            parts.append(f"{name} vs {src}: not measured")
            status = "fail" if status == "fail" else "missing"
            continue
        verdict = rel.get("verdict") or ("pass" if rel.get("passed") else "fail")
        agreement = rel.get("token_agreement")
        parts.append(
            f"{name} vs {src}: {verdict}"
            + (f" (token agreement {agreement:.4f})" if isinstance(agreement, (int, float)) else "")
        )
        if verdict != "pass":
            status = "fail"
    one = key == "/parity"
    return Item(
        "merge_parity",
        TITLES["merge_parity"],
        status,  # type: ignore[arg-type]
        "; ".join(parts),
        tuple(run.at(key if one else f"{key}/{n}") for n in (derived[:1] if one else derived)),
    )


def _figures(serving: dict[str, Any]) -> str:
    def num(key: str, fmt: str) -> str:
        v = serving.get(key)
        return format(v, fmt) if isinstance(v, (int, float)) else "n/a"

    return (
        f"{num('tokens_per_s', '.1f')} tokens/s, latency p50 {num('latency_p50_s', '.3f')} s / "
        f"p95 {num('latency_p95_s', '.3f')} s per case, peak memory {num('peak_memory_mb', '.0f')} MB"
    )


def _serving(report: dict[str, Any], run: _Run) -> Item:
    order = _order(report)
    blocks = {n: _dict(_get(report, "variants", n, "timings")) for n in order}
    keys = {n: f"/variants/{n}/timings" for n in order}
    if report.get("kind") == "eval":  # one model, its timings at the top
        name = str(_get(report, "model", "spec") or "model")
        order, blocks, keys = [name], {name: _dict(report.get("timings"))}, {name: "/timings"}
    candidates = [n for n in order if _kind(report, n) != "base"] or order
    parts: list[str] = []
    measured: list[str] = []
    for name in order:
        timings = blocks[name]
        serving = timings.get("serving")
        if isinstance(serving, dict) and isinstance(serving.get("tokens_per_s"), (int, float)):
            kind = "CUDA" if serving.get("device") == "cuda" else "RSS"
            done, cases = serving.get("measured_cases"), serving.get("cases")
            some = isinstance(done, int) and isinstance(cases, int) and done != cases
            parts.append(
                f"{name}: {_figures(serving)} {kind}"
                + (f" (over {serving.get('measured_cases')} of {serving.get('cases')} cases)" if some else "")
            )
            measured.append(name)
        elif isinstance(serving, dict):
            parts.append(f"{name}: not measured, {serving.get('note') or 'no case was generated'}")
        elif isinstance(timings.get("generated_tokens_per_s"), (int, float)):
            parts.append(
                f"{name}: {timings['generated_tokens_per_s']} tokens/s; per-case latency and peak memory were not "
                "recorded (the report predates them: re-run the evaluation)"
            )
        else:
            parts.append(f"{name}: no serving figures")
    got = [n for n in candidates if n in measured]
    status: Status = "ok" if got and len(got) == len(candidates) else ("partial" if got else "missing")
    return Item(
        "serving",
        TITLES["serving"],
        status,
        "; ".join(parts) or "no variant in this report",
        tuple(run.at(keys[n]) for n in order),
    )


def _rollback(reports_dir: Path, run_id: str) -> Item:
    alias = reports_dir / ALIAS_FILE
    try:
        current = champion(reports_dir)
    except HarnessInputError as exc:
        return Item("rollback", TITLES["rollback"], "fail", str(exc), (Evidence(str(alias)),))
    if current is None:
        return Item(
            "rollback",
            TITLES["rollback"],
            "missing",
            "no champion yet: if this release goes wrong there is no promoted run to return to "
            "(`harness promote` the run that serves today first)",
            (),
        )
    evidence = [Evidence(str(alias))]
    champ_report = reports_dir / current / "report.json"
    if current == run_id:
        previous = _get(_read_alias(alias), "previous")
        if isinstance(previous, str) and (reports_dir / previous / "report.json").is_file():
            evidence.append(Evidence(str(reports_dir / previous / "report.json")))
        return Item(
            "rollback",
            TITLES["rollback"],
            "ok" if previous else "missing",
            f"this run is the champion; the rollback is the previous champion {previous}"
            if previous
            else "this run is already the champion and there is no earlier one to return to",
            tuple(evidence),
        )
    if not champ_report.is_file():
        return Item(
            "rollback",
            TITLES["rollback"],
            "fail",
            f"the champion {current} named in {alias} has no report in {reports_dir}",
            tuple(evidence),
        )
    variant = _get(_read_alias(alias), "variant")
    evidence.append(Evidence(str(champ_report)))
    return Item(
        "rollback",
        TITLES["rollback"],
        "ok",
        f"the current champion {current}" + (f" (variant {variant})" if variant else "") + " stays what to return to: "
        "promoting this run records it as `previous` in champion.json",
        tuple(evidence),
    )


def _read_alias(alias: Path) -> dict[str, Any]:
    import json

    try:
        return _dict(json.loads(alias.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return {}


def _hint(name: str, report: dict[str, Any]) -> str:
    """What the report knows that helps a person attest (never enough to attest for them)."""
    if name == "licence":
        licence = _get(report, "model", "provenance", "license") or _get(
            report, "training", "base_model", "provenance", "license"
        )
        data = _get(report, "training", "data", "path")
        return (
            f"base model licence per its provenance: {licence or 'not recorded'}; "
            f"training data: {data or 'not recorded'}"
        )
    if name == "privacy":
        pii = sum(len(h.get("pii") or []) for h in _hygiene(report).values())
        return f"the harness found {pii} PII matches in the training data it was given; a person reviews the rest"
    return ""


def build_checklist(
    reports_dir: Path,
    run_id: str,
    report: dict[str, Any],
    attestations: Mapping[str, str] | None = None,
    required: tuple[str, ...] = ATTESTATIONS,
) -> list[Item]:
    """Every item, in the order a reviewer reads them: evidence from the run first, then what the signer attests."""
    run = _Run(reports_dir, run_id)
    makers: list[Callable[[], Item]] = [
        lambda: _baseline(report, run),
        lambda: _seeded_split(report, run),
        lambda: _training_metadata(report, run),
        lambda: _sanity(report, run),
        lambda: _regression_safety(report, run),
        lambda: _merge_parity(report, run),
        lambda: _serving(report, run),
        lambda: _rollback(reports_dir, run_id),
    ]
    ids = ("baseline", "seeded_split", "training_metadata", "sanity_check", "regression_safety")
    ids += ("merge_parity", "serving", "rollback")
    items: list[Item] = []
    for item_id, make in zip(ids, makers):
        try:
            items.append(make())
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            items.append(
                Item(
                    item_id,
                    TITLES[item_id],
                    "missing",
                    f"the report's section has an unexpected shape ({type(exc).__name__}: {exc})",
                    (run.at(""),),
                )
            )
    given = attestations or {}
    for name in required:
        text = str(given.get(name) or "").strip()
        hint = _hint(name, report)
        items.append(
            Item(
                name,
                TITLES.get(name, name.replace("_", " ").replace("-", " ").capitalize()),
                "attested" if text else "unattested",
                text if text else f"to be attested by the signer: --attest {name}=..." + (f" ({hint})" if hint else ""),
                attested=True,
            )
        )
    return items


def summary(items: list[Item]) -> dict[str, str]:
    """id -> status: what the signed entry records of the evidence the signer saw."""
    return {i.id: i.status for i in items}


def render(items: list[Item], run_dir: Path | None = None, indent: str = "  ") -> str:
    """The checklist as text for the terminal, one item per line and its evidence under it.

    Evidence inside run_dir is shown relative to it (the caller prints the folder once), the rest as given.
    """

    def short(e: Evidence) -> str:
        if run_dir is not None and Path(e.path).parent == run_dir:
            return str(Evidence(Path(e.path).name, e.key))
        return str(e)

    width = max(len(i.status) for i in items) + 2 if items else 0
    lines: list[str] = []
    for i in items:
        lines.append(f"{indent}{'[' + i.status + ']':<{width}} {i.title}: {i.detail}")
        if i.evidence:
            lines.append(f"{indent}{'':<{width}}   evidence: {', '.join(short(e) for e in i.evidence)}")
    return "\n".join(lines)
