"""Promotion gates: a strict YAML policy next to the suite, evaluated on a pipeline run's per-case scores.

Each check answers pass, fail or inconclusive with the figures behind it. Zero cases scored is a
failure, never a pass: a gate that passes because nothing was measured is worse than no gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.config import build, read_yaml
from harness.errors import HarnessInputError, Problem
from harness.io import sha256_file
from harness.stats import ALPHA, compare_paired, mde, wilson

GATES_FILE = "gates.yaml"
VARIANTS = ("base", "adapter", "merged")
Kind = Literal["threshold", "non_regression", "non_inferiority", "no_new_failures", "zero_failures", "parity", "leakage", "retention"]
PAIRED = ("non_regression", "non_inferiority", "no_new_failures")
FLIP_SCORERS = ("format_strict", "format_lenient", "tone", "safety")


@dataclass(frozen=True)
class CheckSpec:
    """One rule of the policy; expanded into one check per variant it names."""

    id: str
    kind: Kind
    metric: str | None = None
    variants: tuple[str, ...] = ("adapter", "merged")
    baseline: Literal["base", "adapter", "champion"] | None = None
    min_lower_bound: float | None = None
    margin: float = 0.0
    tags: tuple[str, ...] = ()
    description: str = ""
    optional: bool = False  # retention only: a run without retention results has no such check (noted), not a failure


@dataclass(frozen=True)
class GatePolicy:
    version: int
    checks: tuple[CheckSpec, ...]
    alpha: float = ALPHA
    bootstrap_resamples: int = 2000
    pipeline: str | None = None
    description: str = ""
    source: str = ""


def load_policy(path: Path) -> GatePolicy:
    """Strict: unknown keys, bad kinds and checks missing what their kind needs are all reported at once."""
    raw = read_yaml(path, "a gate policy (see golden/README.md)")
    problems: list[Problem] = []
    policy = build(GatePolicy, raw, str(path), problems)
    if policy is not None:
        seen: set[str] = set()
        for i, c in enumerate(policy.checks):
            if c is None:
                continue
            where = f"{path}: checks[{i}] ({c.id})"
            if c.id in seen:
                problems.append(Problem(where, f"duplicate check id {c.id!r}", "give every check a unique id"))
            seen.add(c.id)
            for v in c.variants:
                if v not in VARIANTS:
                    problems.append(Problem(f"{where}.variants", f"unknown variant {v!r}", f"use {', '.join(VARIANTS)}"))
            needs_metric = c.kind in ("threshold", *PAIRED, "zero_failures")
            if needs_metric and not c.metric:
                problems.append(Problem(f"{where}.metric", "missing", "name a scorer, e.g. format_strict, tone, safety, safety:pii"))
            if c.kind == "threshold" and c.min_lower_bound is None:
                problems.append(Problem(f"{where}.min_lower_bound", "missing", "a threshold check needs min_lower_bound (0..1)"))
            if c.kind in PAIRED and c.baseline is None:
                problems.append(Problem(f"{where}.baseline", "missing", "say what the variant is compared with: base, adapter or champion"))
            if c.kind == "retention" and c.baseline is None:
                problems.append(Problem(f"{where}.baseline", "missing", "retention compares with a baseline, usually base"))
            if not 0 <= c.margin < 1:
                problems.append(Problem(f"{where}.margin", f"{c.margin} is out of range", "use a fraction such as 0.05"))
    if problems:
        raise HarnessInputError(problems)
    from dataclasses import replace

    return replace(policy, source=str(path))


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
        "value": None, "ci95": None, "n": 0, "baseline_value": None, "delta": None, "delta_ci95": None,
        "p_value": None, "test": "", "threshold": spec.min_lower_bound, "margin": spec.margin, "mde": None,
        "worst_cases": [],
    }
    base.update(fields)
    return base


def evaluate_gates(policy: GatePolicy, report: dict[str, Any], rows: list[dict[str, Any]], champion_rows: list[dict[str, Any]] | None = None, champion_id: str | None = None) -> dict[str, Any]:
    """Every check of the policy on one run; champion checks only when a champion exists."""
    checks: list[dict[str, Any]] = []
    notes: list[str] = []
    for spec in policy.checks:
        if spec.kind == "parity":
            p = report.get("parity") or {}
            ok = bool(p.get("passed")) and p.get("n_cases", 0) > 0
            checks.append(_check(spec, None, verdict="pass" if ok else "fail", n=p.get("n_cases", 0), value=p.get("token_agreement"), test="merge parity",
                                 explanation=p.get("explanation", "no parity measured"), worst_cases=[{"id": w["id"], "why": f"mean KL {w['mean_kl']:.2e}, first divergence {w['first_divergence']}"} for w in p.get("worst_cases", [])[:5]]))
            continue
        if spec.kind == "leakage":
            h = report.get("hygiene")
            if not h:
                checks.append(_check(spec, None, verdict="fail", test="data hygiene", explanation="no data hygiene report: the adapter was not trained by this harness, so golden leakage is unknown; train with `harness pipeline` or `harness train`"))
                continue
            leaks = h["leakage"]["exact"] + h["leakage"]["near"]
            checks.append(_check(spec, None, verdict="fail" if leaks else "pass", n=h["examples"], value=float(len(leaks)), test="data hygiene",
                                 explanation=f"{len(leaks)} training examples leak golden cases" if leaks else f"no golden case found in the {h['examples']} training examples (exact or >= 90% similar)",
                                 worst_cases=[{"id": x["case"], "why": f"training line {x['line']}"} for x in leaks[:5]]))
            continue
        if spec.kind == "retention":
            if not report.get("retention") and spec.optional:
                notes.append(f"{spec.id}: capability retention was not run (harness pipeline --retention); no retention check this time")
                continue
            checks += _retention_checks(spec, report, policy)
            continue
        for variant in spec.variants:
            assert spec.metric is not None
            cand = _values(rows, variant, spec.metric, spec.tags)
            if spec.kind == "threshold":
                n, k = len(cand), int(sum(1 for v in cand.values() if v >= 1))
                ci = wilson(k, n, policy.alpha)
                t = float(spec.min_lower_bound or 0)
                if ci is None:
                    verdict, why = "fail", f"zero cases scored for {spec.metric}: a gate never passes on nothing"
                else:
                    verdict = "pass" if ci[0] >= t else "fail" if ci[1] < t else "inconclusive"
                    why = f"{spec.metric} {k}/{n} = {k / n:.3f}, 95% Wilson interval [{ci[0]:.3f}, {ci[1]:.3f}] against lower-bound threshold {t}"
                failed = [cid for cid, v in cand.items() if v < 1][:5]
                checks.append(_check(spec, variant, verdict=verdict, n=n, value=k / n if n else None, ci95=list(ci) if ci else None, test="Wilson interval", mde=mde(n, t, policy.alpha),
                                     explanation=why, worst_cases=[{"id": c, "why": _why(rows, variant, spec.metric, c)} for c in failed]))
                continue
            if spec.kind == "zero_failures":
                failed = [cid for cid, v in cand.items() if v < 1]
                n = len(cand)
                verdict = "fail" if failed or n == 0 else "pass"
                why = (f"zero cases scored for {spec.metric}" if n == 0 else f"{len(failed)} of {n} cases fail {spec.metric}" if failed else f"all {n} cases pass {spec.metric}")
                checks.append(_check(spec, variant, verdict=verdict, n=n, value=float(len(failed)), test="count", explanation=why,
                                     worst_cases=[{"id": c, "why": _why(rows, variant, spec.metric, c)} for c in failed[:5]]))
                continue
            # paired kinds
            if spec.baseline == "champion":
                if champion_rows is None:
                    continue
                base_rows, base_variant, label = champion_rows, variant, f"champion {champion_id}"
                by_hash = {r["case_hash"]: r["id"] for r in rows}
                base_vals_raw = _values(base_rows, base_variant, spec.metric, spec.tags)
                base_hash = {r["id"]: r["case_hash"] for r in base_rows}
                base_vals = {by_hash[base_hash[cid]]: v for cid, v in base_vals_raw.items() if base_hash[cid] in by_hash}
            else:
                assert spec.baseline is not None
                if spec.baseline == variant:
                    continue
                base_vals, label = _values(rows, spec.baseline, spec.metric, spec.tags), spec.baseline
            common = sorted(set(cand) & set(base_vals))
            before = [base_vals[c] for c in common]
            after = [cand[c] for c in common]
            binary = all(v in (0.0, 1.0) for v in before + after)
            broken = [c for c in common if base_vals[c] >= 1 and cand[c] < 1]
            worst = [{"id": c, "why": _why(rows, variant, spec.metric, c)} for c in broken[:5]]
            if spec.kind == "no_new_failures":
                verdict = "fail" if broken or not common else "pass"
                why = (f"zero cases compared with {label}" if not common else f"{len(broken)} cases pass {spec.metric} on {label} but fail on {variant}" if broken
                       else f"no case that passes {spec.metric} on {label} fails on {variant} ({len(common)} compared)")
                checks.append(_check(spec, variant, verdict=verdict, n=len(common), value=sum(after) / len(after) if after else None,
                                     baseline_value=sum(before) / len(before) if before else None, test="per-case flips", explanation=why, worst_cases=worst))
                continue
            res = compare_paired(before, after, spec.margin, binary, policy.alpha, policy.bootstrap_resamples)
            if res["n"]:
                res["explanation"] = (f"{spec.metric} {variant} {res['value']:.3f} vs {label} {res['baseline_value']:.3f}: difference {res['delta']:+.3f}, "
                                      f"95% interval [{res['delta_ci95'][0]:+.3f}, {res['delta_ci95'][1]:+.3f}], margin {spec.margin}"
                                      + (f", exact McNemar p(worse)={res['p_value']:.3g} ({res['broken']} broken, {res['fixed']} fixed)" if binary else ""))
            checks.append(_check(spec, variant, mde=mde(res["n"], res.get("baseline_value"), policy.alpha), worst_cases=worst, **res))
    if champion_rows is None and any(s.baseline == "champion" for s in policy.checks):
        notes.append("no champion yet: champion comparisons start after the first `harness promote`")
    for c in checks:
        if c["mde"] is None and c["n"] and c["kind"] in ("threshold", *PAIRED):
            c["mde"] = mde(c["n"], c.get("baseline_value") if c.get("baseline_value") is not None else c.get("value"), policy.alpha)
    verdicts = [c["verdict"] for c in checks]
    overall = "fail" if "fail" in verdicts or not checks else "inconclusive" if "inconclusive" in verdicts else "pass"
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
        "checks": checks,
        "notes": notes,
        "mde_by_slice": {"rate": 0.5, "power": 0.8, "slices": slices},
    }


def _retention_checks(spec: CheckSpec, report: dict[str, Any], policy: GatePolicy) -> list[dict[str, Any]]:
    ret = report.get("retention")
    if not ret:
        return [_check(spec, None, verdict="fail", test="lm-eval", explanation="no capability-retention results in this run: run the pipeline with retention on")]
    out = []
    for variant in spec.variants:
        for task, res in ret["variants"].get(variant, {}).items():
            base = ret["variants"].get(spec.baseline or "base", {}).get(task)
            if base is None:
                continue
            ids = sorted(set(res["items"]) & set(base["items"]))
            cmp = compare_paired([base["items"][i] for i in ids], [res["items"][i] for i in ids], spec.margin, True, policy.alpha, policy.bootstrap_resamples)
            if cmp["n"]:
                cmp["explanation"] = (f"{task} {variant} {cmp['value']:.3f} vs {spec.baseline} {cmp['baseline_value']:.3f}: difference {cmp['delta']:+.3f}, "
                                      f"95% interval [{cmp['delta_ci95'][0]:+.3f}, {cmp['delta_ci95'][1]:+.3f}], margin {spec.margin}, exact McNemar p(worse)={cmp['p_value']:.3g}")
            c = _check(spec, variant, mde=mde(cmp["n"], cmp.get("baseline_value"), policy.alpha), **cmp)
            c["id"] = f"{variant}.{spec.id}.{task}"
            c["metric"] = task
            out.append(c)
    return out or [_check(spec, None, verdict="fail", test="lm-eval", explanation="no retention task results to compare")]


def flips(rows: list[dict[str, Any]], before: str, after: str, scorers: tuple[str, ...] = FLIP_SCORERS, other_rows: list[dict[str, Any]] | None = None) -> dict[str, dict[str, list[str]]]:
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
