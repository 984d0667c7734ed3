"""A run over any number of named variants on one suite, paired case by case.

`run_variants` is the driver; each stage below it does one job and leaves its results on the `Run`:
open (run id, cache, the resident base with every adapter attached) -> identify (tokenizers, cache keys,
GGUF storage) -> plan parity (which parity results the cache lacks, so their sources keep logits) ->
evaluate (each variant in its own prompt format: cache, generate or replay its source, score) -> relate
(parity and the causes behind a derived variant's drift) -> findings -> case rows -> report (data
hygiene, flips, gates) -> write, atomically. `harness compare RUN.yaml` and `harness pipeline CONFIG`
both end here.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from harness.engine.cache import ResultCache
from harness.engine.generate import Generation, replay_greedy
from harness.engine.loading import describe_model, dtype_name
from harness.env import tokenizer_sha256, weights_sha256
from harness.errors import HarnessInputError, Problem, RunStopped
from harness.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_json
from harness.runs.evaluate import FORWARD_BATCH, REPLAY_BATCH, evaluate, generation_keys, report_header, run_id_for
from harness.runs.report import new_run_dir
from harness.runs.resident import (
    Outcome,
    Plan,
    Resident,
    borrow_template,
    export_dtype,
    external_tokenizer,
    gguf_storage,
    load_external,
    own_tokenizer,
    portable_tokenizer_config,
    release_memory,
    to_export_dtype,
)
from harness.runs.summary import summary
from harness.runs.worker import plan_base_worker, start_base_worker
from harness.scoring.registry import flip_metrics, headline_metrics
from harness.variants.derived import adapter_deltas, tokenizer_findings, tokenizer_summary, weight_diagnosis
from harness.variants.parity import (
    PARITY_STEPS,
    adapter_findings,
    case_parity,
    outputs_identical_everywhere,
    parity_thresholds,
    summarize_parity,
)
from harness.variants.spec import Variant, evaluation_order, source_chain
from harness.verdict.gates import evaluate_gates, flips
from harness.verdict.promote import champion_rows

__all__ = ["Plan", "comparison_pairs", "export_dtype", "portable_tokenizer_config", "run_variants", "summary"]


@dataclass
class Run:
    """One run's working state, filled in stage by stage."""

    plan: Plan
    id: str
    dir: Path
    cache: ResultCache | None
    canaries: tuple[str, ...]  # every variant's planted canaries: all are scored, so cached scores agree
    resident: Resident | None
    started: float
    loaded_at: float
    tokenizers: dict[str, Any] = field(default_factory=dict)  # what each variant is prompted with
    raw_tokenizers: dict[str, Any] = field(default_factory=dict)  # as shipped, when a template was borrowed
    borrowed: dict[str, str] = field(default_factory=dict)  # variant -> whose chat template it borrowed
    keys: dict[str, str] = field(default_factory=dict)  # cache identity of each variant's model
    rendered: dict[str, list[Any]] = field(default_factory=dict)
    generation_keys: dict[str, list[str]] = field(default_factory=dict)
    storage: dict[str, dict[str, Any]] = field(default_factory=dict)  # GGUF file types
    parity_keys: dict[str, list[str]] = field(default_factory=dict)
    cached_parity: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    parity_needed: dict[str, set[int]] = field(default_factory=dict)  # variant -> cases decoded with logits
    diagnosis: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    weight_checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    adapter_checks: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # _preflight's findings
    retention: dict[str, Any] = field(default_factory=dict)
    worker_plan: dict[str, Any] = field(default_factory=lambda: {"used": False, "reason": "no base variant"})

    @property
    def derived(self) -> list[Variant]:
        return [v for v in self.plan.variants if v.derived_from is not None]

    @property
    def base(self) -> Variant | None:
        return next((v for v in self.plan.variants if v.kind == "base"), None)


def run_variants(plan: Plan, reports_dir: Path, training: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Evaluate every variant of the plan, relate the derived ones to their sources, gate, write.

    Returns the run folder and the report. `training` is the harness's own training record, when the
    run's adapter was trained here (the pipeline).
    """
    run = _open(plan, reports_dir)
    _identify(run)
    _preflight(run)
    _plan_parity(run)
    _evaluate(run)
    relations, per_case = _relate(run, training)
    findings = _findings(run, relations)
    rows = _case_rows(run, per_case)
    report = _report(run, rows, relations, findings, training, reports_dir)
    run.dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(run.dir / "cases.jsonl", rows)
    atomic_write_text(run.dir / "summary.md", summary(report))
    atomic_write_json(run.dir / "report.json", report)
    return run.dir, report


def _open(plan: Plan, reports_dir: Path) -> Run:
    """Refuse what cannot run before any model loads, then load the base once with every adapter attached."""
    started = time.perf_counter()
    if not plan.cases:
        raise HarnessInputError(
            Problem(str(plan.suite.path), "has no cases to evaluate", "add cases, or drop --limit 0")
        )
    others = "-".join(v.name for v in plan.variants if v.kind != "base")
    rid = plan.run_id or run_id_for(plan.suite, plan.slug or f"{plan.base_ref.spec}+{others}")
    run_dir = new_run_dir(reports_dir, rid)
    options = plan.options
    canaries = tuple(dict.fromkeys(c for v in plan.variants for c in v.canaries)) or options.canaries
    needs_resident = any(v.kind in ("base", "adapter") or v.in_process for v in plan.variants)
    resident = Resident(plan) if needs_resident else None
    cache = ResultCache(options.cache_path) if options.cache_path else None
    return Run(plan, rid, run_dir, cache, canaries, resident, started, time.perf_counter())


def _identify(run: Run) -> None:
    """Each variant's tokenizer, cache key and rendered prompts; a derived model itself loads only in its turn."""
    plan = run.plan
    for v in plan.variants:
        if v.kind in ("base", "adapter") or v.in_process:
            assert run.resident is not None
            run.tokenizers[v.name] = own_tokenizer(v, run.resident.tokenizer)
            run.keys[v.name] = run.resident.key(v)
        else:
            hashes = ",".join(s["sha256"] for s in v.sources)
            run.keys[v.name] = f"{v.kind}:{hashes}:{dtype_name(plan.runtime.dtype)}"
    for v in evaluation_order(plan.variants):
        if v.kind in ("base", "adapter") or v.in_process:
            continue
        run.raw_tokenizers[v.name] = run.tokenizers[v.name] = external_tokenizer(v)
        if v.prompt_format.kind == "chat" and not getattr(run.tokenizers[v.name], "chat_template", None):
            run.tokenizers[v.name], run.borrowed[v.name] = borrow_template(plan, v, run.tokenizers)
        if v.kind == "gguf":
            assert v.path is not None
            run.storage[v.name] = gguf_storage(v.path)
    cases = plan.cases
    device_type = torch.device(plan.runtime.device).type
    for v in plan.variants:
        run.rendered[v.name] = [v.prompt_format.render(plan.suite, c) for c in cases]
        run.generation_keys[v.name] = generation_keys(
            plan.suite,
            cases,
            run.rendered[v.name],
            run.keys[v.name],
            tokenizer_sha256(run.tokenizers[v.name]),
            plan.options,
            device_type,
            v.prompt_format,
        )


def _preflight(run: Run) -> None:
    """Static checks of every attached adapter before anything decodes: an adapter that is an identity, or that
    matched no layer, makes every figure of the run meaningless, so the run stops here (exit 1)."""
    if run.resident is None:
        return
    errors: list[dict[str, str]] = []
    for v in run.plan.variants:
        if v.kind != "adapter":
            continue
        with run.resident.active(v) as model:
            run.adapter_checks[v.name] = adapter_findings(model, v.name)
        errors += [{**f, "variant": v.name} for f in run.adapter_checks[v.name] if f["level"] == "error"]
    if errors:
        raise RunStopped(errors, f"run {run.id}; nothing was written")


def _plan_parity(run: Run) -> None:
    """Which cases still need a parity measurement: those are decoded with logits, by both sides."""
    n = len(run.plan.cases)
    for d in run.derived:
        src = str(d.derived_from)
        pairs = zip(run.generation_keys[src], run.generation_keys[d.name])
        run.parity_keys[d.name] = [sha256_json({"adapter": a, "merged": m, "steps": PARITY_STEPS}) for a, m in pairs]
        hits: dict[int, dict[str, Any]] = {}
        if run.cache is not None:
            for i, k in enumerate(run.parity_keys[d.name]):
                hit = run.cache.get("parity", k)
                if hit is not None:
                    hits[i] = hit
        run.cached_parity[d.name] = hits
        missing = {i for i in range(n) if i not in hits}
        run.parity_needed[d.name] = missing
        run.parity_needed.setdefault(src, set()).update(missing)
        run.diagnosis[d.name] = []


def _evaluate(run: Run) -> None:
    """Every variant in evaluation order; the base may decode in a second process beside the adapters."""
    worker = _start_base_worker(run)
    try:
        for v in evaluation_order(run.plan.variants):
            if worker is not None and v.kind == "base":
                continue
            if worker is not None and v.kind != "adapter":
                worker = _collect_base(run, worker)  # before any merge: the resident weights are still the base
            if v.kind in ("base", "adapter"):
                run.outcomes[v.name] = _eval_resident(run, v)
            else:
                run.outcomes[v.name] = _eval_derived_variant(run, v)
        if worker is not None:
            worker = _collect_base(run, worker)
    except BaseException:
        if worker is not None:
            worker.stop()
        raise


def _start_base_worker(run: Run) -> Any:
    """A second process for the base's decode (CPU, when it pays off); None when the base is decoded here."""
    plan, base_v, resident = run.plan, run.base, run.resident
    if base_v is None or resident is None:
        return None
    reason = "the base is evaluated here (a parity source, another prompt format, or no adapter beside it)"
    is_source = bool(run.parity_needed.get(base_v.name))
    has_adapter = any(v.kind == "adapter" for v in plan.variants)
    if not base_v.prompt_format.is_default or is_source or not has_adapter:
        run.worker_plan = {"used": False, "reason": reason}
        return None
    cache = run.cache
    keys = run.generation_keys[base_v.name]
    missing = sum(not cache.has("generations", k) for k in keys) if cache is not None else len(keys)
    run.worker_plan = plan_base_worker(
        plan.parallel_base,
        plan.runtime.device,
        cache is not None,
        missing,
        resident.base,
        resident.tokenizer,
        [plan.suite.chat(c) for c in plan.cases],
        plan.options.batch_size,
        plan.suite.generation.max_new_tokens,
    )
    if not run.worker_plan["used"]:
        return None
    # the worker scores with the run's canaries too, so its cached scores are the ones this process looks up
    options = replace(plan.options, canaries=run.canaries)
    return start_base_worker(plan.suite.path, plan.base_ref.path, options, run.keys[base_v.name], plan.runtime.device)


def _collect_base(run: Run, worker: Any) -> None:
    """The worker's decode read back through the cache (or redone here if it failed); returns no worker."""
    base_v = run.base
    assert base_v is not None
    worker_timings, failure = worker.finish()
    if failure:
        run.worker_plan.update(used=False, reason=f"the base worker failed ({failure}); the base was decoded here")
        print(f"harness: {run.worker_plan['reason']}", file=sys.stderr)
    outcome = _eval_resident(run, base_v)
    if worker_timings is not None and outcome.timings["generated_cases"] == 0:
        outcome.timings = {
            **worker_timings,
            "score_s": outcome.timings["score_s"],
            "worker": "second process, 1 thread, beside the adapter's decode",
        }
    run.outcomes[base_v.name] = outcome
    return None


def _evaluate_as(run: Run, v: Variant, model: Any, provided: dict[int, Generation] | None = None) -> Any:
    """One variant through the evaluator: its prompt format, cache key and the run's canaries; the cases a
    parity check still needs are decoded again with their logits kept."""
    plan, need = run.plan, run.parity_needed.get(v.name, set())
    return evaluate(
        plan.suite,
        model,
        run.tokenizers[v.name],
        plan.options,
        keep_logits=PARITY_STEPS if need else 0,
        cache=run.cache,
        model_key=run.keys[v.name],
        regenerate=frozenset(plan.cases[i].id for i in need),
        provided=provided,
        fmt=v.prompt_format,
        canaries=run.canaries,
    )


def _eval_resident(run: Run, v: Variant) -> Outcome:
    """The base or one adapter, on the resident weights."""
    plan, resident = run.plan, run.resident
    assert resident is not None
    tok = run.tokenizers[v.name]
    with resident.active(v) as model:
        records, metrics, timings, gens = _evaluate_as(run, v, model)
        info: dict[str, Any] = {}
        if v.kind == "adapter":
            info["adapter_findings"] = run.adapter_checks[v.name]  # measured by _preflight, before any decoding
        if plan.retention_dir is not None:
            run.retention[v.name] = _retention(plan, model, tok, v.name, run.keys[v.name])
    return Outcome(records, metrics, timings, gens, info)


def _eval_derived_variant(run: Run, v: Variant) -> Outcome:
    """A merged or GGUF variant: merged here or loaded from the user's file, checked, evaluated, freed."""
    plan = run.plan
    src = plan.by_name[str(v.derived_from)] if v.derived_from else None
    merge_s: float | None = None
    if v.in_process:
        assert run.resident is not None and src is not None
        merge_started = time.perf_counter()
        last = v is [w for w in evaluation_order(plan.variants) if w.in_process][-1]
        model = run.resident.merge(v, last=last)
        export = export_dtype(v.merge_dtype, plan.base_ref)
        info = {"requested": v.merge_dtype, **to_export_dtype(model, export, plan.runtime.device)}
        merge_s = time.perf_counter() - merge_started
    else:
        model = load_external(v, plan.runtime)
        info = {}
        run.diagnosis[v.name] += _derived_checks(run, v, model)
        if v.name in run.borrowed:
            run.diagnosis[v.name].append(
                {
                    "level": "info",
                    "code": "chat_template_borrowed",
                    "variant": v.name,
                    "message": (
                        f"{v.name} was prompted with {run.borrowed[v.name]}'s chat template, since its own tokenizer "
                        "has none: its scores measure the weights, not the tokenizer it ships with"
                    ),
                }
            )
    tok = run.tokenizers[v.name]
    outcome = _eval_derived(run, v, src, model)
    outcome.info = info
    if merge_s is not None:
        outcome.timings["merge_s"] = round(merge_s, 3)
    if plan.retention_dir is not None:
        run.retention[v.name] = _retention(plan, model, tok, v.name, run.keys[v.name])
    if v.in_process:
        out_dir = run.dir / v.name
        model.to(export)  # a no-op unless the weights were only rounded to it
        model.save_pretrained(out_dir, safe_serialization=True)
        tok.save_pretrained(out_dir)
        portable_tokenizer_config(out_dir)
        outcome.info.update(path=str(out_dir), weights_sha256=weights_sha256(out_dir), **describe_model(model))
    del model
    release_memory()
    return outcome


def _eval_derived(run: Run, v: Variant, src: Variant | None, model: Any) -> Outcome:
    """Evaluate a merged or GGUF variant; where it sees the same prompt tokens as its source, replay the
    source's outputs.

    Replaying (one forward pass over prompt + the source's tokens) proves step by step that greedy decoding
    of this model picks the same tokens; only the cases where it does not are decoded.
    """
    plan = run.plan
    tok = run.tokenizers[v.name]
    need = sorted(run.parity_needed.get(v.name, set()))
    provided: dict[int, Generation] = {}
    replay_s, mismatches, replayable = 0.0, 0, []
    if src is not None and need and run.tokenizers[src.name].get_vocab() == tok.get_vocab():
        started = time.perf_counter()
        replayable = [i for i in need if _same_prompt(run, src, v, i)]
        if replayable:
            known = [run.outcomes[src.name].gens[i] for i in replayable]
            prompt_ids = [v.prompt_format.encode(tok, run.rendered[v.name][i]) for i in replayable]
            replayed = replay_greedy(
                model, tok, [], known, min(plan.options.batch_size, REPLAY_BATCH), PARITY_STEPS, prompt_ids=prompt_ids
            )
            provided = {replayable[j]: g for j, g in enumerate(replayed) if g is not None}
            mismatches = len(replayable) - len(provided)
        replay_s = time.perf_counter() - started
    records, metrics, timings, gens = _evaluate_as(run, v, model, provided)
    timings = {
        **timings,
        "replay_s": round(replay_s, 3),
        "replay_mismatches": mismatches,
        "replayable_cases": len(replayable),
    }
    return Outcome(records, metrics, timings, gens)


def _relate(run: Run, training: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """Per derived variant: its parity with its source, case by case and summarized against its thresholds."""
    plan = run.plan
    ids = [c.id for c in plan.cases]
    relations: dict[str, Any] = {}
    per_case: dict[str, list[dict[str, Any]]] = {}
    for d in run.derived:
        src = str(d.derived_from)
        a, b = run.outcomes[src].gens, run.outcomes[d.name].gens
        comparable = run.tokenizers[src].get_vocab() == run.tokenizers[d.name].get_vocab()
        cached = run.cached_parity[d.name]
        per = [cached[i] if i in cached else _case_relation(a[i], b[i], comparable) for i in range(len(ids))]
        if run.cache is not None and comparable:
            run.cache.put_many(
                "parity", [(run.parity_keys[d.name][i], p) for i, p in enumerate(per) if i not in cached]
            )
        per_case[d.name] = per
        thresholds = parity_thresholds(d.kind, (run.storage.get(d.name) or {}).get("file_type"))
        note = _relation_note(plan, d, run.outcomes[d.name].info, run.storage.get(d.name), training)
        rel = summarize_parity(ids, per, note, thresholds)
        same = sum(1 for i in range(len(ids)) if _same_prompt(run, plan.by_name[src], d, i))
        rel.update(
            source=src,
            diagnosis=run.diagnosis[d.name],
            weights=run.weight_checks.get(d.name),
            comparable_tokens=comparable,
            same_prompts=same,
        )
        relations[d.name] = rel
    return relations, per_case


def _findings(run: Run, relations: dict[str, Any]) -> list[dict[str, Any]]:
    """What a reviewer must read: broken derivations with their likely cause, adapters without effect,
    tokenizers that differ from the base's."""
    findings: list[dict[str, Any]] = []
    for d in run.derived:
        rel, diagnosis = relations[d.name], run.diagnosis[d.name]
        findings += [f for f in diagnosis if f["level"] in ("error", "warning")]
        if not rel["passed"]:
            cause = next((f["message"] for f in diagnosis if f["level"] == "error"), None)
            code = "derived_parity" if d.kind != "merged" or not d.in_process else "merge_parity"
            findings.append(
                {
                    "level": "error",
                    "code": code,
                    "variant": d.name,
                    "message": f"{d.name} differs from {rel['source']}: {rel['explanation']}"
                    + (f"; likely cause: {cause}" if cause else ""),
                }
            )
    base_v, resident = run.base, run.resident
    n = len(run.plan.cases)
    for v in run.plan.variants:
        if v.kind != "adapter":
            continue
        findings += [{**f, "variant": v.name} for f in run.outcomes[v.name].info.get("adapter_findings", [])]
        if base_v is not None and outputs_identical_everywhere(
            run.outcomes[base_v.name].gens, run.outcomes[v.name].gens
        ):
            findings.append(
                {
                    "level": "error",
                    "code": "adapter_no_effect",
                    "variant": v.name,
                    "message": f"{v.name}'s outputs equal the base model's on all {n} cases: "
                    "it was not applied or learned nothing",
                }
            )
        if resident is not None and run.tokenizers[v.name] is not resident.tokenizer:
            chat = v.prompt_format.kind == "chat"
            findings += [
                f
                for f in tokenizer_findings(v.name, run.tokenizers[v.name], "the base", resident.tokenizer, chat)
                if f["level"] != "info"
            ]
    return findings


def _case_rows(run: Run, per_case: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """cases.jsonl: per case, every variant's output and scores and every derived variant's relation."""
    variants, derived = run.plan.variants, run.derived
    rows = []
    for i in range(len(run.plan.cases)):
        first = run.outcomes[variants[0].name].records[i]
        row: dict[str, Any] = {k: first[k] for k in ("id", "tags", "expected", "reference", "messages", "case_hash")}
        row["variants"] = {}
        for v in variants:
            record = run.outcomes[v.name].records[i]
            row["variants"][v.name] = {
                k: record[k] for k in ("output", "stop_reason", "new_tokens", "extraction", "scores")
            }
            if "prompt" in record:
                row["variants"][v.name]["prompt"] = record["prompt"]
        row["relations"] = {d.name: per_case[d.name][i] for d in derived}
        if len(derived) == 1:
            row["parity"] = row["relations"][derived[0].name]  # what readers of one-derived-variant reports read
        rows.append(row)
    return rows


def _variant_block(run: Run, v: Variant) -> dict[str, Any]:
    """One variant's entry in the report: identity, metrics, timings, tokenizer and how it was made."""
    o, resident = run.outcomes[v.name], run.resident
    on_base = resident is not None and v.kind in ("base", "adapter")
    block: dict[str, Any] = {
        **v.to_json(),
        "metrics": o.metrics,
        "timings": o.timings,
        "tokenizer": tokenizer_summary(run.raw_tokenizers.get(v.name, run.tokenizers[v.name])),
        "weights_sha256": resident.base_hash if on_base and resident is not None else None,
    }
    if v.kind == "adapter":
        block["adapter_sha256"] = next(s["sha256"] for s in v.sources if s["role"] == "adapter")
        block["adapter_config"] = v.adapter_config
        block["training"] = _training_summary(v.training)
    if v.in_process:
        export = {k: o.info[k] for k in ("requested", "merged_in", "export_dtype", "evaluated_in", "rounded")}
        block.update(
            weights_sha256=o.info.get("weights_sha256"),
            path=o.info.get("path"),
            export=export,
            **{k: o.info[k] for k in ("class", "parameters", "dtype") if k in o.info},
        )
    elif v.kind in ("merged", "gguf"):
        block["path"] = str(v.path)
        if v.kind == "gguf":
            block["storage"] = run.storage.get(v.name)
    return block


def _report(
    run: Run,
    rows: list[dict[str, Any]],
    relations: dict[str, Any],
    findings: list[dict[str, Any]],
    training: dict[str, Any] | None,
    reports_dir: Path,
) -> dict[str, Any]:
    """report.json: headline and deltas per pair, relations, findings, hygiene, safety, flips and the gates."""
    plan, resident = run.plan, run.resident
    variants_block = {v.name: _variant_block(run, v) for v in plan.variants}
    headline = {v.name: _headline(run.outcomes[v.name].metrics, plan.suite.scorers) for v in plan.variants}
    pairs = comparison_pairs(plan)
    hygiene = _hygiene(plan, training)
    report: dict[str, Any] = {
        **report_header(plan.kind, run.id, plan.suite, len(rows), plan.options, plan.runtime),
        "run_file": plan.source,
        "model": {
            "spec": plan.base_ref.spec,
            "path": str(plan.base_ref.path),
            "weights_sha256": resident.base_hash if resident else None,
            "tokenizer_sha256": tokenizer_sha256(resident.tokenizer) if resident else None,
            "provenance": plan.base_ref.provenance,
        },
        "variant_order": [v.name for v in plan.variants],
        "variants": variants_block,
        "headline": headline,
        "comparisons": {f"{a}->{b}": _delta(headline[a], headline[b]) for a, b in pairs},
        "relations": relations,
        "findings": findings,
        "training": training,
        # one adapter's hygiene where readers expect one
        "hygiene": next(iter(hygiene.values())) if len(hygiene) == 1 else None,
        "hygiene_by_variant": hygiene,
        "timings": {
            "load_s": round(run.loaded_at - run.started, 3),
            "total_s": round(time.perf_counter() - run.started, 3),
            "base_worker": run.worker_plan,
        },
        "cache": run.cache.stats() if run.cache is not None else None,
    }
    adapters = [v for v in plan.variants if v.kind == "adapter"]
    if len(adapters) == 1:
        a = adapters[0]
        report["adapter"] = {
            "name": a.name,
            "path": str(a.path),
            "sha256": variants_block[a.name]["adapter_sha256"],
            "config": a.adapter_config,
        }
    if len(run.derived) == 1:
        report["parity"] = relations[run.derived[0].name]
    report["retention"] = _retention_block(run.retention) if run.retention else None
    report["safety_findings"] = [
        {"variant": v.name, "case": row["id"], "detector": s["scorer"], "explanation": s["explanation"]}
        for row in rows
        for v in plan.variants
        for s in row["variants"][v.name]["scores"]
        if s["scorer"].startswith("safety:") and s["value"] == 0.0
    ]
    champ_id, champ_rows, champ_variant = champion_rows(reports_dir)
    flip_on = flip_metrics(plan.suite.scorers)
    report["flips"] = {f"{a}->{b}": flips(rows, a, b, flip_on) for a, b in pairs}
    if champ_rows is not None:
        for v in adapters:
            report["flips"][f"champion->{v.name}"] = flips(
                rows, champ_variant or v.name, v.name, flip_on, other_rows=champ_rows
            )
    report["gates"] = (
        evaluate_gates(plan.policy, report, rows, champ_rows, champ_id, champ_variant)
        if plan.policy is not None
        else None
    )
    return report


def _same_prompt(run: Run, a: Variant, b: Variant, i: int) -> bool:
    """Whether two variants see the same prompt tokens for case i (then one's outputs can be replayed
    through the other)."""
    ids = _prompt_ids(b, run.tokenizers[b.name], run.rendered, i)
    return ids is not None and ids == _prompt_ids(a, run.tokenizers[a.name], run.rendered, i)


def _headline(metrics: dict[str, Any], scorers: tuple[str, ...]) -> dict[str, float | None]:
    """The registry's headline metrics, then each label's accuracy and macro-F1."""
    o = metrics["overall"]
    out: dict[str, float | None] = {
        k: (o["scores"].get(k) or o.get(k) or {}).get("value") for k in headline_metrics(scorers)
    }
    for label, f in o["fields"].items():
        out[f"{label}_accuracy"] = f["accuracy"]["value"]
        out[f"{label}_macro_f1"] = f["macro_f1"]
    return out


def _delta(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if a.get(k) is None or b.get(k) is None else round(float(b[k]) - float(a[k]), 4)) for k in a}  # type: ignore[arg-type]


def comparison_pairs(plan: Plan) -> list[tuple[str, str]]:
    """The pairs a report compares: base -> every candidate, and source -> every derived variant."""
    names = [v.name for v in plan.variants]
    base = next((v.name for v in plan.variants if v.kind == "base"), None)
    pairs: list[tuple[str, str]] = []
    for v in plan.variants:
        if v.kind == "base":
            continue
        if base is not None and v.kind == "adapter":
            pairs.append((base, v.name))
        if v.derived_from is not None:
            pairs.append((v.derived_from, v.name))
        elif base is not None and v.kind != "adapter":
            pairs.append((base, v.name))
    return sorted(set(pairs), key=lambda p: (names.index(p[1]), names.index(p[0])))


def _prompt_ids(v: Variant, tok: Any, rendered: dict[str, list[Any]], i: int) -> list[int] | None:
    try:
        return v.prompt_format.encode(tok, rendered[v.name][i])
    except ValueError:
        return None


def _case_relation(a: Generation, b: Generation, comparable: bool) -> dict[str, Any]:
    if comparable and a.logits is not None and b.logits is not None:
        return case_parity(a, b)
    return {
        "steps": 0,
        "compared_steps": 0,
        "token_agreement": 1.0 if a.text == b.text else 0.0,
        "first_divergence": None if a.text == b.text else 0,
        "max_abs_logit_diff": None,
        "mean_kl": None,
        "identical_output": a.text == b.text,
        "text_only": True,
    }


def _derived_checks(run: Run, v: Variant, model: Any) -> list[dict[str, Any]]:
    """Tokenizer identity with the source, and what the weights say about how this variant was made."""
    plan, resident, tokenizers = run.plan, run.resident, {**run.tokenizers, **run.raw_tokenizers}
    out: list[dict[str, Any]] = []
    src_name = str(v.derived_from) if v.derived_from else None
    if src_name is not None:
        chat = v.prompt_format.kind == "chat"
        out += tokenizer_findings(v.name, tokenizers[v.name], src_name, tokenizers[src_name], chat)
    if resident is None or resident.merged_away:
        return out
    chain = source_chain(plan.by_name, v.name)[1:]
    adapter = next((c for c in chain if c.kind == "adapter"), None)
    if src_name is None and adapter is None:
        return out
    from safetensors.torch import load_file

    base_state: dict[str, torch.Tensor] = {}
    for f in sorted(Path(plan.base_ref.path).glob("*.safetensors")):
        base_state.update(load_file(str(f)))
    deltas = adapter_deltas(resident.peft, adapter.name) if adapter is not None and resident.peft is not None else {}
    derived_state = {k: t.detach() for k, t in model.state_dict().items()}
    if v.kind == "gguf":
        kind = (run.storage.get(v.name) or {}).get("file_type")
    else:
        kind = dtype_name(next(model.parameters()).dtype)
    if v.kind == "merged" and v.path is not None:
        kind = _stored_dtype(v.path) or kind
    quantized = v.kind == "gguf" and str(kind).upper() not in ("F32", "ALL_F32", "F16", "BF16")
    storage = f"{kind}" + (" GGUF" if v.kind == "gguf" else "")
    file_type = kind if v.kind == "gguf" else None
    w = weight_diagnosis(
        v.name,
        derived_state,
        base_state,
        deltas,
        adapter.name if adapter else None,
        storage,
        quantized,
        file_type=file_type,
    )
    run.weight_checks[v.name] = {k: val for k, val in w.items() if k != "findings"}
    out += w["findings"]
    del base_state, derived_state
    return out


def _stored_dtype(folder: Path) -> str | None:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    value = config.get("dtype") or config.get("torch_dtype")
    return str(value) if value else None


def _relation_note(
    plan: Plan, v: Variant, info: dict[str, Any], storage: dict[str, Any] | None, training: dict[str, Any] | None
) -> str:
    src = plan.by_name[str(v.derived_from)]
    trained_nf4 = bool(((src.training or training) or {}).get("precision", {}).get("weights") == "nf4")
    if v.in_process:
        return (
            f"merged here into the original (unquantized) base weights in {info['merged_in']}, "
            f"exported as {info['export_dtype']}"
            + (" (the base checkpoint's dtype)" if v.merge_dtype == "auto" else "")
            + (
                f", weights rounded to it and evaluated in {info['evaluated_in']}"
                if info["evaluated_in"] != info["export_dtype"]
                else ""
            )
            + (
                "; the adapter was trained against nf4-dequantized weights, so small differences are expected"
                if trained_nf4
                else ""
            )
        )
    if v.kind == "gguf":
        ft = (storage or {}).get("file_type") or "unknown type"
        return (
            f"GGUF file ({ft}) loaded through transformers' GGUF support "
            f"(dequantized to {dtype_name(plan.runtime.dtype)}), compared with {src.name}"
        )
    return (
        f"merged folder supplied by the user ({_stored_dtype(v.path) if v.path else 'unknown'} weights), "
        f"compared with {src.name}"
    )


def _training_summary(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if not meta:
        return None
    keep = (
        "name",
        "config_hash",
        "steps",
        "tokens_per_s",
        "train_loss",
        "validation_loss",
        "precision",
        "prompt_format",
    )
    return {k: meta.get(k) for k in keep if k in meta}


def _hygiene(plan: Plan, training: dict[str, Any] | None) -> dict[str, Any]:
    """Per adapter: the data hygiene report recorded at training, or one computed now from the training data
    it names."""
    from harness.training.hygiene import hygiene_report

    out: dict[str, Any] = {}
    for v in plan.variants:
        if v.kind != "adapter":
            continue
        meta = v.training
        if meta and meta.get("hygiene"):
            out[v.name] = meta["hygiene"]
            continue
        if v.training_data is None:
            continue
        from harness.training.config import DataConfig
        from harness.training.data import load_examples, split

        td = v.training_data
        cfg = DataConfig(
            path=td.path,
            format=td.format,
            template=td.template,
            system_prompt=td.system_prompt,
            validation_fraction=0.0,
        )
        examples, sha = load_examples(cfg, None)
        data = split(examples, 0.0, 0, sha)
        out[v.name] = {
            **hygiene_report(td.path, data, plan.suite, {}, 0),
            "source": "training data named in the run file",
        }
    return out


def _retention(plan: Plan, model: Any, tok: Any, name: str, key: str) -> dict[str, Any]:
    from harness.models.embedded import cache_dir
    from harness.runs.retention import run_retention

    assert plan.retention_dir is not None
    return run_retention(
        model,
        tok,
        name,
        plan.retention_dir,
        cache_dir() / "lm_eval",
        limit=plan.retention_limit,
        batch_size=min(plan.options.batch_size, FORWARD_BATCH),
        cache_key=key,
    )


def _retention_block(results: dict[str, Any]) -> dict[str, Any]:
    """Per variant and task: the rate with its Wilson interval and the per-item outcomes the gate pairs."""
    from harness.stats import wilson

    out: dict[str, Any] = {
        "variants": {},
        "wall_s": {v: r["wall_s"] for v, r in results.items()},
        "lm_eval": next(iter(results.values()))["lm_eval"],
    }
    for variant, r in results.items():
        block = {}
        for task, res in r["tasks"].items():
            items = {k: float(v) for k, v in res["items"].items()}
            k = int(sum(items.values()))
            ci = wilson(k, len(items))
            block[task] = {
                "metric": res["metric"],
                "value": res["value"],
                "ci95": list(ci) if ci else None,
                "n": res["n"],
                "items": items,
                "version": res.get("version"),
            }
        out["variants"][variant] = block
    return out
