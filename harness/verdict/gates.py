"""Promotion gates: a strict YAML policy next to the suite, evaluated on a pipeline run's per-case scores.

Each check answers pass, fail or inconclusive with the figures behind it. Zero cases scored is a
failure, never a pass: a gate that passes because nothing was measured is worse than no gate.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.config import build, read_yaml
from harness.errors import HarnessInputError, Problem
from harness.io import sha256_file
from harness.stats import ALPHA, compare_paired, mde, wilson

GATES_FILE = "gates.yaml"
KINDS = ("base", "adapter", "merged", "gguf")
# What a check's `variants` may name besides a variant: every kind, and these roles.
TARGET_ROLES = ("candidates", "derived")
# What a check's `baseline` may name besides a variant: the base, the variant a derived one comes from
# (`source`; `adapter` reads the same for a derived variant when no variant is named adapter), the champion.
BASELINE_ROLES = ("base", "source", "adapter", "champion")
Kind = Literal[
    "threshold",
    "non_regression",
    "non_inferiority",
    "no_new_failures",
    "zero_failures",
    "parity",
    "leakage",
    "retention",
]
PAIRED = ("non_regression", "non_inferiority", "no_new_failures")
FLIP_SCORERS = ("format_strict", "format_lenient", "tone", "safety")
DEFAULT_TARGETS = {"parity": ("derived",)}  # every other kind: the candidates (every variant but the base)


@dataclass(frozen=True)
class CheckSpec:
    """One rule of the policy; expanded into one check per variant it applies to."""

    id: str
    kind: Kind
    metric: str | None = None
    variants: tuple[str, ...] = ()  # variant names, kinds or roles; empty: candidates (parity: derived variants)
    baseline: str | None = None  # a variant name, base, source, champion
    min_lower_bound: float | None = None
    max_fail_rate: float | None = None  # threshold only: the share of scored cases failing, at most this (point)
    margin: float = 0.0
    tags: tuple[str, ...] = ()
    description: str = ""
    optional: bool = False  # retention only: a run without retention results has no such check (noted), not a failure


ATTESTATIONS = ("licence", "privacy", "monitoring")  # what only a person can vouch for, by default
_ATTESTATION_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


@dataclass(frozen=True)
class SignoffPolicy:
    """What a sign-off on a run of this suite needs (`signoff:`, read from its own gates.yaml; strict defaults)."""

    require_signature: bool = True  # false lets `harness signoff --unsigned` record an unsigned decision
    attestations: tuple[str, ...] = ATTESTATIONS  # what an approval must attest, by name


@dataclass(frozen=True)
class GatePolicy:
    version: int
    checks: tuple[CheckSpec, ...]
    alpha: float = ALPHA
    bootstrap_resamples: int = 2000
    pipeline: str | None = None
    run: str | None = None  # a run file `pytest golden/<suite>` runs instead of the pipeline preset
    unknown_leakage: Literal["fail", "not_applicable"] = "fail"  # a candidate whose training data is not given
    signoff: SignoffPolicy = SignoffPolicy()
    description: str = ""
    source: str = ""


@dataclass(frozen=True)
class VariantInfo:
    """What the gates need to know of a variant: its name, kind, source and whether canaries were planted."""

    name: str
    kind: str
    derived_from: str | None = None
    canaries: int | None = None  # None: unknown (older reports)


def variants_of(report: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> list[VariantInfo]:
    """The run's variants in order; a report from before named variants is base, adapter and merged."""
    order = report.get("variant_order")
    if order:
        blocks = report.get("variants") or {}
        return [
            VariantInfo(
                n,
                str(blocks.get(n, {}).get("kind", n)),
                blocks.get(n, {}).get("derived_from"),
                blocks.get(n, {}).get("canaries"),
            )
            for n in order
        ]
    names = list((rows[0]["variants"] if rows else None) or ("base", "adapter", "merged"))
    return [
        VariantInfo(n, n if n in KINDS else "adapter", "adapter" if n == "merged" and "adapter" in names else None)
        for n in names
    ]


def targets(spec: CheckSpec, infos: list[VariantInfo]) -> list[VariantInfo]:
    """The variants a check applies to, in run order: names first, then kinds and roles."""
    wanted = spec.variants or DEFAULT_TARGETS.get(spec.kind, ("candidates",))
    names = {i.name for i in infos}
    out: list[VariantInfo] = []
    for i in infos:
        for w in wanted:
            if w in names:
                hit = i.name == w
            elif w == "candidates":
                hit = i.kind != "base"
            elif w == "derived":
                hit = i.derived_from is not None
            else:
                hit = i.kind == w
            if hit and i not in out:
                out.append(i)
    return out


def unknown_targets(spec: CheckSpec, names: list[str]) -> list[str]:
    """Entries of `variants` and `baseline` that are neither a variant of the run, a kind nor a role."""
    bad = [w for w in spec.variants if w not in names and w not in KINDS and w not in TARGET_ROLES]
    if spec.baseline is not None and spec.baseline not in names and spec.baseline not in BASELINE_ROLES:
        bad.append(spec.baseline)
    return bad


def baseline_of(spec: CheckSpec, target: VariantInfo, infos: list[VariantInfo]) -> str | None:
    """The variant a paired check compares `target` with; 'champion' for the champion; None when there is none."""
    b = spec.baseline
    by_name = {i.name: i for i in infos}
    if b is None or b == "champion":
        return b
    if b in by_name and not (b == "adapter" and target.derived_from is not None and by_name[b].kind != "adapter"):
        return b
    if b == "base":
        return next((i.name for i in infos if i.kind == "base"), None)
    if b in ("source", "adapter"):
        sources = _chain(target, infos)[1:]
        found = sources[:1] if b == "source" else [i for i in sources if i.kind == "adapter"][:1]
        return found[0].name if found else None
    return None


def _chain(target: VariantInfo, infos: list[VariantInfo]) -> list[VariantInfo]:
    """The variant and every variant it derives from, nearest first (a cycle ends the walk)."""
    by_name = {i.name: i for i in infos}
    out = [target]
    while out[-1].derived_from in by_name and by_name[str(out[-1].derived_from)] not in out:
        out.append(by_name[str(out[-1].derived_from)])
    return out


def expected_check_ids(spec: CheckSpec, infos: list[VariantInfo]) -> list[str]:
    """The ids evaluate_gates gives this spec's checks on a run with these variants (pytest collects them)."""
    return [
        f"{t.name}.{spec.id}"
        for t in targets(spec, infos)
        if not (spec.kind in PAIRED and baseline_of(spec, t, infos) == t.name)
    ]


def load_policy(path: Path, variant_names: list[str] | None = None, suite: Any = None) -> GatePolicy:
    """Strict: unknown keys, bad kinds and checks missing what their kind needs are all reported at once.

    With the run's variant names, a check naming a variant the run does not have is an error too. A metric
    is checked against what the suite's scorers emit per case: `suite`, else the suite next to the policy
    file (a policy lives in its suite's folder), else every metric the registry's scorers can emit.
    """
    raw = read_yaml(path, "a gate policy (see golden/README.md)")
    problems: list[Problem] = []
    policy = build(GatePolicy, raw, str(path), problems)
    if policy is not None:
        if not 0 < policy.alpha < 1:
            problems.append(
                Problem(
                    f"{path}.alpha", f"{policy.alpha} is out of range", "use a significance level in (0, 1), e.g. 0.05"
                )
            )
        if policy.bootstrap_resamples < 1:
            problems.append(
                Problem(
                    f"{path}.bootstrap_resamples",
                    f"must be at least 1, got {policy.bootstrap_resamples}",
                    "use 2000 (more is steadier and slower)",
                )
            )
        metric_args = _suite_metrics(path, suite)
        seen: set[str] = set()
        for i, c in enumerate(policy.checks):
            if c is None:
                continue
            where = f"{path}: checks[{i}] ({c.id})"
            if c.id in seen:
                problems.append(Problem(where, f"duplicate check id {c.id!r}", "give every check a unique id"))
            seen.add(c.id)
            known = list(KINDS) + list(TARGET_ROLES) + list(variant_names or [])
            for v in c.variants:
                if variant_names is not None and v not in known:
                    close = difflib.get_close_matches(v, known, n=1)
                    problems.append(
                        Problem(
                            f"{where}.variants",
                            f"{v!r} is no variant of this run, kind or role",
                            (f"did you mean {close[0]!r}? " if close else "") + f"use one of {', '.join(known)}",
                        )
                    )
            if (
                c.baseline is not None
                and variant_names is not None
                and c.baseline not in list(BASELINE_ROLES) + list(variant_names)
            ):
                choices = list(BASELINE_ROLES) + list(variant_names)
                close = difflib.get_close_matches(c.baseline, choices, n=1)
                problems.append(
                    Problem(
                        f"{where}.baseline",
                        f"{c.baseline!r} is no variant of this run or baseline role",
                        (f"did you mean {close[0]!r}? " if close else "") + f"use one of {', '.join(choices)}",
                    )
                )
            needs_metric = c.kind in ("threshold", *PAIRED, "zero_failures")
            if needs_metric and not c.metric:
                problems.append(
                    Problem(f"{where}.metric", "missing", "name a scorer, e.g. format_strict, tone, safety, safety:pii")
                )
            elif needs_metric and c.metric:
                from harness.scoring.registry import metric_problem

                bad = metric_problem(c.metric, *metric_args)
                if bad is not None:
                    problems.append(Problem(f"{where}.metric", *bad))
            if c.kind == "threshold" and c.min_lower_bound is None and c.max_fail_rate is None:
                problems.append(
                    Problem(
                        f"{where}.min_lower_bound",
                        "missing",
                        "a threshold check needs min_lower_bound (0..1) or max_fail_rate (0..1)",
                    )
                )
            if c.min_lower_bound is not None and c.max_fail_rate is not None:
                problems.append(
                    Problem(
                        f"{where}.max_fail_rate",
                        "is given together with min_lower_bound",
                        "a threshold check bounds one thing: split it into two checks",
                    )
                )
            if c.max_fail_rate is not None and c.kind != "threshold":
                problems.append(
                    Problem(
                        f"{where}.max_fail_rate", f"means nothing to a {c.kind} check", "use it on a threshold check"
                    )
                )
            if c.max_fail_rate is not None and not 0 <= c.max_fail_rate <= 1:
                problems.append(
                    Problem(
                        f"{where}.max_fail_rate",
                        f"{c.max_fail_rate} is out of range",
                        "a share of failing cases is between 0 and 1, e.g. 0.02",
                    )
                )
            if c.kind in PAIRED and c.baseline is None:
                problems.append(
                    Problem(
                        f"{where}.baseline",
                        "missing",
                        "say what the variant is compared with: base, source, champion or a variant's name",
                    )
                )
            if c.kind == "retention" and c.baseline is None:
                problems.append(
                    Problem(f"{where}.baseline", "missing", "retention compares with a baseline, usually base")
                )
            if c.min_lower_bound is not None and not 0 <= c.min_lower_bound <= 1:
                problems.append(
                    Problem(
                        f"{where}.min_lower_bound",
                        f"{c.min_lower_bound} is out of range",
                        "a lower bound on a pass rate is between 0 and 1",
                    )
                )
            if not 0 <= c.margin < 1:
                problems.append(
                    Problem(f"{where}.margin", f"{c.margin} is out of range", "use a fraction such as 0.05")
                )
        problems += _signoff_problems(policy.signoff, f"{path}: signoff")
    if problems:
        raise HarnessInputError(problems)
    from dataclasses import replace

    return replace(policy, source=str(path))


def _suite_metrics(path: Path, suite: Any) -> tuple[Any, Any, Any]:
    """(scorer names, labels, tone rule names) of the suite a policy judges; None for what is not known."""
    if suite is None and (path.parent / "suite.yaml").is_file():
        from harness.suite.suite import load_suite

        try:
            suite = load_suite(path.parent)
        except HarnessInputError:  # the suite's own problems are reported by harness check; not here
            suite = None
    if suite is None:
        return None, None, None
    tone = suite.tone.rule_names() if suite.tone is not None else ()
    return tuple(suite.scorers), tuple(suite.labels), tuple(tone)


def _signoff_problems(signoff: SignoffPolicy | None, where: str) -> list[Problem]:
    """Attestation names become flags (`--attest NAME=...`) and ledger keys: short, lower case, unique."""
    if signoff is None:
        return []
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, name in enumerate(signoff.attestations):
        if name is None:
            continue
        if not _ATTESTATION_NAME.match(name):
            problems.append(
                Problem(
                    f"{where}.attestations[{i}]",
                    f"{name!r} is not a short lower-case name",
                    "use letters, digits, - and _, starting with a letter, e.g. licence",
                )
            )
        elif name in seen:
            problems.append(Problem(f"{where}.attestations[{i}]", f"{name!r} is listed twice", "list it once"))
        seen.add(name)
    return problems


def _values(rows: list[dict[str, Any]], variant: str, metric: str, tags: tuple[str, ...]) -> dict[str, float]:
    """case id -> score value for one variant; unscored cases are left out (and counted by the caller)."""
    out: dict[str, float] = {}
    for row in rows:
        if tags and not set(tags) & set(row.get("tags", [])):
            continue
        v = row["variants"].get(variant)
        if v is None:
            continue
        score = next((s for s in v["scores"] if s["scorer"] == metric), None)
        if score is not None and score["value"] is not None:
            out[row["id"]] = float(score["value"])
    return out


def _why(rows: list[dict[str, Any]], variant: str, metric: str, case_id: str) -> str:
    row = next(r for r in rows if r["id"] == case_id)
    score = next(s for s in row["variants"][variant]["scores"] if s["scorer"] == metric)
    return str(score["explanation"])


def _check(spec: CheckSpec, variant: str | None, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": f"{variant}.{spec.id}" if variant else spec.id,
        "title": spec.description or spec.id,
        "kind": spec.kind,
        "variant": variant,
        "baseline": spec.baseline,
        "metric": spec.metric,
        "value": None,
        "ci95": None,
        "n": 0,
        "baseline_value": None,
        "delta": None,
        "delta_ci95": None,
        "p_value": None,
        "test": "",
        "threshold": spec.min_lower_bound,
        "margin": spec.margin,
        "mde": None,
        "worst_cases": [],
    }
    base.update(fields)
    return base


def _not_applicable(spec: CheckSpec, variant: str | None, why: str) -> dict[str, Any]:
    return _check(spec, variant, verdict="not_applicable", test="applicability", explanation=why)


def _hygiene_for(
    report: dict[str, Any], target: VariantInfo, infos: list[VariantInfo]
) -> tuple[dict[str, Any] | None, str]:
    """The data hygiene report of the adapter a variant is (or derives from), and that adapter's name."""
    chain = _chain(target, infos)
    cur = next((i for i in chain if i.kind == "adapter"), chain[-1])
    per = report.get("hygiene_by_variant")
    if per is not None:
        return per.get(cur.name), cur.name
    return report.get("hygiene"), cur.name


def _leakage_check(
    spec: CheckSpec, policy: GatePolicy, report: dict[str, Any], target: VariantInfo, infos: list[VariantInfo]
) -> dict[str, Any]:
    if target.kind == "base":
        return _not_applicable(
            spec, target.name, f"{target.name} is the base model: it was not fine-tuned on anything of ours"
        )
    h, trained = _hygiene_for(report, target, infos)
    if not h:
        why = (
            f"golden leakage unknown: the training data of {trained} was not given "
            "(add `training_data:` to it in the run file, "
            f"pass `--training-data {trained}=FILE` to harness compare, or train it with the harness)"
        )
        if policy.unknown_leakage == "fail":
            return _check(
                spec,
                target.name,
                verdict="fail",
                test="data hygiene",
                explanation=why + "; the policy's `unknown_leakage: fail` blocks promotion",
            )
        return _not_applicable(
            spec, target.name, why + "; the policy's `unknown_leakage: not_applicable` lets it pass unchecked"
        )
    leaks = h["leakage"]["exact"] + h["leakage"]["near"]
    return _check(
        spec,
        target.name,
        verdict="fail" if leaks else "pass",
        n=h["examples"],
        value=float(len(leaks)),
        test="data hygiene",
        explanation=(
            f"{len(leaks)} training examples of {trained} leak golden cases"
            if leaks
            else f"no golden case found in the {h['examples']} training examples of {trained} (exact or >= 90% similar)"
        ),
        worst_cases=[{"id": x["case"], "why": f"training line {x['line']}"} for x in leaks[:5]],
    )


def _parity_check(spec: CheckSpec, report: dict[str, Any], target: VariantInfo) -> dict[str, Any]:
    relations = report.get("relations")
    p = (
        (relations or {}).get(target.name)
        if relations is not None
        else (report.get("parity") if target.name == "merged" else None)
    )
    if p is None:
        return _check(
            spec, target.name, verdict="fail", test="parity", explanation=f"no parity measured for {target.name}"
        )
    ok = bool(p.get("passed")) and p.get("n_cases", 0) > 0
    cause = next((f["message"] for f in p.get("diagnosis", []) if f.get("level") == "error"), None)
    why = p.get("explanation", "no parity measured") + (f"; likely cause: {cause}" if cause and not ok else "")
    return _check(
        spec,
        target.name,
        verdict="pass" if ok else "fail",
        n=p.get("n_cases", 0),
        value=p.get("token_agreement"),
        baseline=p.get("source", "adapter"),
        test="parity",
        explanation=why,
        worst_cases=[
            {
                "id": w["id"],
                "why": f"mean KL {w['mean_kl']:.2e}, first divergence {w['first_divergence']}"
                if w.get("mean_kl") is not None
                else f"output differs (first divergence {w['first_divergence']})",
            }
            for w in p.get("worst_cases", [])[:5]
        ],
    )


# A check of one of these metrics applies only to variants for which it can mean something.
def _applies(metric: str | None, target: VariantInfo, infos: list[VariantInfo]) -> str | None:
    """None when the metric applies to the variant; otherwise why it does not."""
    if metric == "safety:canary" and target.canaries is not None:
        chain = _chain(target, infos)
        if not next((i for i in chain if i.canaries != 0), chain[-1]).canaries:
            return (
                f"no canaries were planted in the training data of {target.name}: "
                "there is nothing it could have memorised to find"
            )
    return None


def evaluate_gates(
    policy: GatePolicy,
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    champion_rows: list[dict[str, Any]] | None = None,
    champion_id: str | None = None,
    champion_variant: str | None = None,
) -> dict[str, Any]:
    """Every check of the policy on one run, per variant it applies to; champion checks only when a champion exists."""
    infos = variants_of(report, rows)
    checks: list[dict[str, Any]] = []
    notes: list[str] = []
    for spec in policy.checks:
        if spec.kind == "retention":
            if not report.get("retention") and spec.optional:
                notes.append(
                    f"{spec.id}: capability retention was not run (harness pipeline --retention); "
                    "no retention check this time"
                )
                continue
            checks += _retention_checks(spec, report, policy, infos)
            continue
        applies_to = targets(spec, infos)
        if not applies_to:
            checks.append(
                _not_applicable(
                    spec,
                    None,
                    (
                        f"this run has no variant that {spec.id} applies to "
                        f"({', '.join(spec.variants or DEFAULT_TARGETS.get(spec.kind, ('candidates',)))})"
                    ),
                )
            )
            continue
        for target in applies_to:
            variant = target.name
            if spec.kind == "parity":
                checks.append(_parity_check(spec, report, target))
                continue
            if spec.kind == "leakage":
                checks.append(_leakage_check(spec, policy, report, target, infos))
                continue
            why_not = _applies(spec.metric, target, infos)
            if why_not is not None:
                checks.append(_not_applicable(spec, variant, why_not))
                continue
            assert spec.metric is not None
            cand = _values(rows, variant, spec.metric, spec.tags)
            if spec.kind == "threshold" and spec.max_fail_rate is not None:
                checks.append(_max_fail_rate_check(spec, variant, cand, rows, policy))
                continue
            if spec.kind == "threshold":
                n, k = len(cand), int(sum(1 for v in cand.values() if v >= 1))
                ci = wilson(k, n, policy.alpha)
                t = float(spec.min_lower_bound or 0)
                if ci is None:
                    verdict, why = "fail", f"zero cases scored for {spec.metric}: a gate never passes on nothing"
                else:
                    verdict = "pass" if ci[0] >= t else "fail" if ci[1] < t else "inconclusive"
                    why = (
                        f"{spec.metric} {k}/{n} = {k / n:.3f}, 95% Wilson interval [{ci[0]:.3f}, {ci[1]:.3f}] "
                        f"against lower-bound threshold {t}"
                    )
                failed = [cid for cid, v in cand.items() if v < 1][:5]
                checks.append(
                    _check(
                        spec,
                        variant,
                        verdict=verdict,
                        n=n,
                        value=k / n if n else None,
                        ci95=list(ci) if ci else None,
                        test="Wilson interval",
                        mde=mde(n, t, policy.alpha),
                        explanation=why,
                        worst_cases=[{"id": c, "why": _why(rows, variant, spec.metric, c)} for c in failed],
                    )
                )
                continue
            if spec.kind == "zero_failures":
                failed = [cid for cid, v in cand.items() if v < 1]
                n = len(cand)
                verdict = "fail" if failed or n == 0 else "pass"
                why = (
                    f"zero cases scored for {spec.metric}"
                    if n == 0
                    else f"{len(failed)} of {n} cases fail {spec.metric}"
                    if failed
                    else f"all {n} cases pass {spec.metric}"
                )
                checks.append(
                    _check(
                        spec,
                        variant,
                        verdict=verdict,
                        n=n,
                        value=float(len(failed)),
                        test="count",
                        explanation=why,
                        worst_cases=[{"id": c, "why": _why(rows, variant, spec.metric, c)} for c in failed[:5]],
                    )
                )
                continue
            # paired kinds
            baseline = baseline_of(spec, target, infos)
            if baseline == "champion":
                if champion_rows is None:
                    continue
                champ = (
                    champion_variant
                    if champion_variant and any(champion_variant in r.get("variants", {}) for r in champion_rows[:1])
                    else variant
                )
                label = f"champion {champion_id}" + (f" ({champ})" if champ != variant else "")
                by_hash = {r["case_hash"]: r["id"] for r in rows}
                base_vals_raw = _values(champion_rows, champ, spec.metric, spec.tags)
                base_hash = {r["id"]: r["case_hash"] for r in champion_rows}
                base_vals = {
                    by_hash[base_hash[cid]]: v for cid, v in base_vals_raw.items() if base_hash[cid] in by_hash
                }
            elif baseline is None:
                checks.append(
                    _not_applicable(spec, variant, f"{variant} has no {spec.baseline} to compare with in this run")
                )
                continue
            else:
                if baseline == variant:
                    continue
                base_vals, label = _values(rows, baseline, spec.metric, spec.tags), baseline
            common = sorted(set(cand) & set(base_vals))
            before = [base_vals[c] for c in common]
            after = [cand[c] for c in common]
            binary = all(v in (0.0, 1.0) for v in before + after)
            broken = [c for c in common if base_vals[c] >= 1 and cand[c] < 1]
            worst = [{"id": c, "why": _why(rows, variant, spec.metric, c)} for c in broken[:5]]
            if spec.kind == "no_new_failures":
                verdict = "fail" if broken or not common else "pass"
                why = (
                    f"zero cases compared with {label}"
                    if not common
                    else f"{len(broken)} cases pass {spec.metric} on {label} but fail on {variant}"
                    if broken
                    else f"no case that passes {spec.metric} on {label} fails on {variant} ({len(common)} compared)"
                )
                checks.append(
                    _check(
                        spec,
                        variant,
                        verdict=verdict,
                        n=len(common),
                        value=sum(after) / len(after) if after else None,
                        baseline=baseline,
                        baseline_value=sum(before) / len(before) if before else None,
                        test="per-case flips",
                        explanation=why,
                        worst_cases=worst,
                    )
                )
                continue
            res = compare_paired(before, after, spec.margin, binary, policy.alpha, policy.bootstrap_resamples)
            if res["n"]:
                res["explanation"] = (
                    f"{spec.metric} {variant} {res['value']:.3f} vs {label} {res['baseline_value']:.3f}: "
                    f"difference {res['delta']:+.3f}, "
                    f"95% interval [{res['delta_ci95'][0]:+.3f}, {res['delta_ci95'][1]:+.3f}], margin {spec.margin}"
                    + (
                        f", exact McNemar p(worse)={res['p_value']:.3g} ({res['broken']} broken, {res['fixed']} fixed)"
                        if binary
                        else ""
                    )
                )
            checks.append(
                _check(
                    spec,
                    variant,
                    mde=mde(res["n"], res.get("baseline_value"), policy.alpha),
                    worst_cases=worst,
                    baseline=baseline,
                    **res,
                )
            )
    if champion_rows is None and any(s.baseline == "champion" for s in policy.checks):
        notes.append("no champion yet: champion comparisons start after the first `harness promote`")
    for c in checks:
        if c["mde"] is None and c["n"] and c["kind"] in ("threshold", *PAIRED):
            c["mde"] = mde(
                c["n"], c.get("baseline_value") if c.get("baseline_value") is not None else c.get("value"), policy.alpha
            )
    verdicts = [c["verdict"] for c in checks if c["verdict"] != "not_applicable"]
    overall = "fail" if "fail" in verdicts or not verdicts else "inconclusive" if "inconclusive" in verdicts else "pass"
    if not verdicts:
        notes.append("no check applied to any variant of this run: a gate never passes on nothing")
    slices = {}
    for tag in sorted({t for r in rows for t in r.get("tags", [])}):
        n = sum(1 for r in rows if tag in r.get("tags", []))
        slices[tag] = {"n": n, "mde": mde(n, 0.5, policy.alpha)}
    slices["(all)"] = {"n": len(rows), "mde": mde(len(rows), 0.5, policy.alpha)}
    return {
        "policy": policy.source,
        "policy_sha256": sha256_file(Path(policy.source)) if policy.source and Path(policy.source).is_file() else None,
        "verdict": overall,
        "alpha": policy.alpha,
        "champion": champion_id,
        "champion_variant": champion_variant,
        "checks": checks,
        "notes": notes,
        "mde_by_slice": {"rate": 0.5, "power": 0.8, "slices": slices},
    }


def _max_fail_rate_check(
    spec: CheckSpec, variant: str, cand: dict[str, float], rows: list[dict[str, Any]], policy: GatePolicy
) -> dict[str, Any]:
    """At most a share of cases may fail (e.g. degenerate outputs in at most 2% of cases): a point estimate, as
    the policy asks; the Wilson interval of the failing share is reported beside it. Zero scored fails."""
    assert spec.metric is not None and spec.max_fail_rate is not None
    n = len(cand)
    failed = [cid for cid, v in cand.items() if v < 1]
    limit = spec.max_fail_rate
    ci = wilson(len(failed), n, policy.alpha)
    if ci is None:
        verdict, why = "fail", f"zero cases scored for {spec.metric}: a gate never passes on nothing"
    else:
        share = len(failed) / n
        verdict = "pass" if share <= limit else "fail"
        why = (
            f"{len(failed)} of {n} cases fail {spec.metric} = {share:.3f} "
            f"({'within' if verdict == 'pass' else 'above'} the maximum {limit}); "
            f"95% Wilson interval of the failing share [{ci[0]:.3f}, {ci[1]:.3f}]"
        )
    return _check(
        spec,
        variant,
        verdict=verdict,
        n=n,
        value=len(failed) / n if n else None,
        ci95=list(ci) if ci else None,
        threshold=limit,
        test="failing share (point estimate)",
        mde=mde(n, 1 - limit, policy.alpha),
        explanation=why,
        worst_cases=[{"id": c, "why": _why(rows, variant, spec.metric, c)} for c in failed[:5]],
    )


def _retention_checks(
    spec: CheckSpec, report: dict[str, Any], policy: GatePolicy, infos: list[VariantInfo]
) -> list[dict[str, Any]]:
    ret = report.get("retention")
    if not ret:
        return [
            _check(
                spec,
                None,
                verdict="fail",
                test="lm-eval",
                explanation="no capability-retention results in this run: run the pipeline with retention on",
            )
        ]
    out = []
    for target in targets(spec, infos):
        variant = target.name
        baseline = baseline_of(spec, target, infos) or "base"
        for task, res in ret["variants"].get(variant, {}).items():
            base = ret["variants"].get(baseline, {}).get(task)
            if base is None:
                continue
            ids = sorted(set(res["items"]) & set(base["items"]))
            cmp = compare_paired(
                [base["items"][i] for i in ids],
                [res["items"][i] for i in ids],
                spec.margin,
                True,
                policy.alpha,
                policy.bootstrap_resamples,
            )
            if cmp["n"]:
                cmp["explanation"] = (
                    f"{task} {variant} {cmp['value']:.3f} vs {baseline} {cmp['baseline_value']:.3f}: "
                    f"difference {cmp['delta']:+.3f}, "
                    f"95% interval [{cmp['delta_ci95'][0]:+.3f}, {cmp['delta_ci95'][1]:+.3f}], margin {spec.margin}, "
                    f"exact McNemar p(worse)={cmp['p_value']:.3g}"
                )
            c = _check(spec, variant, mde=mde(cmp["n"], cmp.get("baseline_value"), policy.alpha), **cmp)
            c["id"] = f"{variant}.{spec.id}.{task}"
            c["metric"] = task
            out.append(c)
    return out or [
        _check(spec, None, verdict="fail", test="lm-eval", explanation="no retention task results to compare")
    ]


def flips(
    rows: list[dict[str, Any]],
    before: str,
    after: str,
    scorers: tuple[str, ...] = FLIP_SCORERS,
    other_rows: list[dict[str, Any]] | None = None,
) -> dict[str, dict[str, list[str]]]:
    """Per scorer: which cases a change fixed, broke, kept passing or kept failing (by case id)."""
    out: dict[str, dict[str, list[str]]] = {}
    for scorer in scorers:
        a = _values(other_rows if other_rows is not None else rows, before, scorer, ())
        b = _values(rows, after, scorer, ())
        common = [r["id"] for r in rows if r["id"] in a and r["id"] in b]
        out[scorer] = {
            "fixed": [c for c in common if a[c] < 1 <= b[c]],
            "broken": [c for c in common if b[c] < 1 <= a[c]],
            "still_passing": [c for c in common if a[c] >= 1 and b[c] >= 1],
            "still_failing": [c for c in common if a[c] < 1 and b[c] < 1],
        }
    return out


def exit_code(verdict: str, strict: bool) -> int:
    """0 pass, 1 fail, 3 inconclusive (1 with --strict)."""
    return {"pass": 0, "fail": 1}.get(verdict, 1 if strict else 3)
