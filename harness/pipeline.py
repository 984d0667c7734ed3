"""Three variants on one resident model: base, base+adapter and the merged export, with merge parity.

The base weights are loaded once. The adapter is attached with PEFT; "base" runs with the adapter
disabled; then the adapter is merged in place (no second copy, no reload), brought to the export dtype
(`merge_dtype`: by default the dtype the base checkpoint is stored in), evaluated on exactly the weights
it is saved with, and saved as a standalone safetensors folder.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from harness.env import tokenizer_sha256, weights_sha256
from harness.generate import replay_greedy
from harness.errors import HarnessInputError, Problem
from harness.gates import GatePolicy, evaluate_gates, flips
from harness.promote import champion_rows
from harness.cache import ResultCache
from harness.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_file, sha256_json
from harness.loading import Runtime, describe_model, dtype_name, load_model, load_tokenizer
from harness.models import ModelRef
from harness.parity import PARITY_STEPS, adapter_findings, case_parity, outputs_identical_everywhere, summarize_parity
from harness.runner import FORWARD_BATCH, REPLAY_BATCH, EvalOptions, evaluate, generation_keys, report_header, run_id_for
from harness.suite import Suite
from harness.train_config import MERGE_DTYPES
from harness.worker import plan_base_worker, start_base_worker

VARIANTS = ("base", "adapter", "merged")
HEADLINE = ("format_strict", "format_lenient")
HEADLINE_SCORES = ("tone", "safety")


def _headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    o = metrics["overall"]
    out: dict[str, float | None] = {k: o[k]["value"] for k in HEADLINE}
    for k in HEADLINE_SCORES:
        out[k] = o["scores"].get(k, {}).get("value")
    for label, f in o["fields"].items():
        out[f"{label}_accuracy"] = f["accuracy"]["value"]
        out[f"{label}_macro_f1"] = f["macro_f1"]
    return out


def _delta(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (None if a.get(k) is None or b.get(k) is None else round(float(b[k]) - float(a[k]), 4)) for k in a}  # type: ignore[arg-type]


def export_dtype(choice: str, ref: ModelRef) -> torch.dtype:
    """The merged export's dtype: as asked, or for "auto" the dtype the base checkpoint is stored in.

    A merged model is shipped in place of its base, so by default it keeps the base's precision (bf16 for
    most published checkpoints); a checkpoint that names no dtype counts as float32.
    """
    if choice not in MERGE_DTYPES:
        raise HarnessInputError(Problem("merge_dtype", f"unknown value {choice!r}", "use one of " + ", ".join(MERGE_DTYPES)))
    if choice == "auto":
        try:
            config = json.loads((Path(ref.path) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = {}
        stored = str(config.get("dtype") or config.get("torch_dtype"))
        choice = stored if stored in MERGE_DTYPES else "float32"
    return getattr(torch, choice)


def to_export_dtype(model: Any, export: torch.dtype, device: str) -> dict[str, Any]:
    """Bring a merged model to its export dtype before it is evaluated; returns what happened, for the report.

    On the CPU, half-precision matmuls are a slow path, so a narrower export keeps the runtime dtype and its
    weights are rounded to the export dtype in place: the model evaluated holds exactly the values saved.
    Elsewhere the model is converted and runs in the export dtype.
    """
    merged_in = next(model.parameters()).dtype
    info = {"merged_in": dtype_name(merged_in), "export_dtype": dtype_name(export), "evaluated_in": dtype_name(export), "rounded": False}
    if export == merged_in:
        return info
    if device == "cpu" and export.itemsize < merged_in.itemsize:
        with torch.no_grad():
            for p in model.parameters():
                if p.is_floating_point():
                    p.copy_(p.to(export))
        info.update(evaluated_in=dtype_name(merged_in), rounded=True)
    else:
        model.to(export)
        info["rounded"] = export.itemsize <= merged_in.itemsize  # narrower, or bf16 <-> fp16
    return info


def run_pipeline(
    suite: Suite,
    base_ref: ModelRef,
    adapter_dir: Path,
    reports_dir: Path,
    options: EvalOptions,
    device: str = "auto",
    run_id: str | None = None,
    training: dict[str, Any] | None = None,
    policy: GatePolicy | None = None,
    retention_dir: Path | None = None,
    retention_limit: int | None = None,
    merge_dtype: str = "auto",
    parallel_base: bool | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Evaluate the three variants; returns the run folder and the report.

    `parallel_base`: decode the base in a second process while the adapter decodes (harness.worker);
    None decides from the device, the cache, the cores, the memory and the number of cases to decode.
    """
    from peft import PeftModel

    if not (adapter_dir / "adapter_config.json").is_file():
        raise HarnessInputError(Problem(str(adapter_dir), "is not a PEFT adapter folder (no adapter_config.json)", "pass the adapter/ folder of a trained candidate"))
    started = time.perf_counter()
    export = export_dtype(merge_dtype, base_ref)
    runtime = Runtime.pick(device)
    tokenizer = load_tokenizer(base_ref)
    base = load_model(base_ref, runtime)
    base_hash = weights_sha256(base_ref.path)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    findings = adapter_findings(model)
    loaded = time.perf_counter()

    cache = ResultCache(options.cache_path) if options.cache_path else None
    adapter_sha = sha256_file(adapter_dir / "adapter_model.safetensors")
    dtype = describe_model(base)["dtype"]
    lora = f"{adapter_sha}:{sha256_file(adapter_dir / 'adapter_config.json')}"
    keys = {"base": f"base:{base_hash}:{dtype}", "adapter": f"adapter:{base_hash}:{lora}:{dtype}", "merged": f"merged:{base_hash}:{lora}:{dtype}:{dtype_name(export)}"}
    cases = suite.cases[: options.limit] if options.limit else suite.cases
    chats = [suite.chat(c) for c in cases]
    parity_keys: list[str] = []
    cached_parity: dict[int, dict[str, Any]] = {}
    regenerate: frozenset[str] = frozenset()
    if cache is not None:
        tok_hash, device_type = tokenizer_sha256(tokenizer), next(model.parameters()).device.type
        gk = {v: generation_keys(suite, cases, chats, keys[v], tok_hash, options, device_type) for v in VARIANTS}
        parity_keys = [sha256_json({"adapter": a, "merged": m, "steps": PARITY_STEPS}) for a, m in zip(gk["adapter"], gk["merged"])]
        for i, k in enumerate(parity_keys):
            hit = cache.get("parity", k)
            if hit is not None:
                cached_parity[i] = hit
        regenerate = frozenset(c.id for i, c in enumerate(cases) if i not in cached_parity)

    variants: dict[str, Any] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    gens: dict[str, Any] = {}
    retention: dict[str, Any] = {}

    def retain(variant: str, m: Any) -> None:
        """Capability retention (lm-eval) on the model as it is now, when asked for."""
        if retention_dir is not None:
            from harness.models import cache_dir
            from harness.retention import run_retention

            retention[variant] = run_retention(m, tokenizer, variant, retention_dir, cache_dir() / "lm_eval", limit=retention_limit, batch_size=min(options.batch_size, FORWARD_BATCH), cache_key=keys[variant])

    def evaluate_base(worker_timings: dict[str, Any] | None) -> None:
        with model.disable_adapter():
            records["base"], m, t, gens["base"] = evaluate(suite, model, tokenizer, options, cache=cache, model_key=keys["base"])
            retain("base", model)
        if worker_timings is not None and t["generated_cases"] == 0:
            t = {**worker_timings, "score_s": t["score_s"], "worker": "second process, 1 thread, beside the adapter's decode"}
        variants["base"] = {"metrics": m, "timings": t, "weights_sha256": base_hash}

    missing = sum(not cache.has("generations", k) for k in gk["base"]) if cache is not None else len(cases)
    worker_plan = plan_base_worker(parallel_base, runtime.device, cache is not None, missing, model, tokenizer, chats, options.batch_size, suite.generation.max_new_tokens)
    worker = start_base_worker(suite.path, base_ref.path, options, keys["base"], runtime.device) if worker_plan["used"] else None
    try:
        if worker is None:
            evaluate_base(None)
        records["adapter"], m, t, gens["adapter"] = evaluate(suite, model, tokenizer, options, keep_logits=PARITY_STEPS, cache=cache, model_key=keys["adapter"], regenerate=regenerate)
        variants["adapter"] = {"metrics": m, "timings": t, "weights_sha256": base_hash, "adapter_sha256": adapter_sha}
        retain("adapter", model)
        if worker is not None:
            worker_timings, failure = worker.finish()
            if failure:
                worker_plan.update(used=False, reason=f"the base worker failed ({failure}); the base was decoded here")
                print(f"harness: {worker_plan['reason']}", file=sys.stderr)
            evaluate_base(worker_timings)
    except BaseException:
        if worker is not None:
            worker.stop()
        raise

    merge_started = time.perf_counter()
    merged = model.merge_and_unload()
    export_info = {"requested": merge_dtype, **to_export_dtype(merged, export, runtime.device)}
    merge_s = time.perf_counter() - merge_started
    # The merged model should reproduce the adapter: prove it case by case with one forward pass each,
    # and decode only the cases where it does not.
    replay_started = time.perf_counter()
    need = [i for i in range(len(cases)) if i not in cached_parity]
    replayed = replay_greedy(merged, tokenizer, [suite.chat(cases[i]) for i in need], [gens["adapter"][i] for i in need], min(options.batch_size, REPLAY_BATCH), PARITY_STEPS)
    provided = {need[j]: g for j, g in enumerate(replayed) if g is not None}
    replay_s = time.perf_counter() - replay_started
    records["merged"], m, t, gens["merged"] = evaluate(suite, merged, tokenizer, options, keep_logits=PARITY_STEPS, cache=cache, model_key=keys["merged"], regenerate=regenerate, provided=provided)
    t = {**t, "replay_s": round(replay_s, 3), "replay_mismatches": len(need) - len(provided)}
    retain("merged", merged)

    rid = run_id or run_id_for(suite, f"{base_ref.spec}+{adapter_dir.parent.name}")
    run_dir = reports_dir / rid
    merged_dir = run_dir / "merged"
    merged.to(export)  # a no-op unless the weights were only rounded to it
    merged.save_pretrained(merged_dir, safe_serialization=True)
    tokenizer.save_pretrained(merged_dir)
    portable_tokenizer_config(merged_dir)
    variants["merged"] = {"metrics": m, "timings": {**t, "merge_s": round(merge_s, 3)}, "weights_sha256": weights_sha256(merged_dir), "path": str(merged_dir), "export": export_info, **describe_model(merged)}

    trained_nf4 = bool(training and training.get("precision", {}).get("weights") == "nf4")
    merge_note = (f"merged into the original (unquantized) base weights in {export_info['merged_in']}, exported as {export_info['export_dtype']}"
                  + (" (the base checkpoint's dtype)" if merge_dtype == "auto" else "")
                  + (f", weights rounded to it and evaluated in {export_info['evaluated_in']}" if export_info["evaluated_in"] != export_info["export_dtype"] else "")
                  + ("; the adapter was trained against nf4-dequantized weights, so small differences are expected" if trained_nf4 else ""))
    per_case = [cached_parity[i] if i in cached_parity else case_parity(a, b) for i, (a, b) in enumerate(zip(gens["adapter"], gens["merged"]))]
    if cache is not None:
        cache.put_many("parity", [(parity_keys[i], p) for i, p in enumerate(per_case) if i not in cached_parity])
    ids = [r["id"] for r in records["adapter"]]
    parity = summarize_parity(ids, per_case, merge_note)
    if not parity["passed"]:
        findings.append({"level": "error", "code": "merge_parity", "message": f"merged model differs from base+adapter: {parity['explanation']}"})
    if outputs_identical_everywhere(gens["base"], gens["adapter"]):
        findings.append({"level": "error", "code": "adapter_no_effect", "message": f"the adapter's outputs equal the base model's on all {len(ids)} cases: it was not applied or learned nothing"})

    headline = {v: _headline(variants[v]["metrics"]) for v in VARIANTS}
    report: dict[str, Any] = {
        **report_header("pipeline", rid, suite, len(ids), options, runtime),
        "model": {"spec": base_ref.spec, "path": str(base_ref.path), "weights_sha256": base_hash, "tokenizer_sha256": tokenizer_sha256(tokenizer), "provenance": base_ref.provenance},
        "adapter": {"path": str(adapter_dir), "sha256": adapter_sha, "config": json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))},
        "training": training,
        "variants": variants,
        "headline": headline,
        "comparisons": {"base->adapter": _delta(headline["base"], headline["adapter"]), "adapter->merged": _delta(headline["adapter"], headline["merged"])},
        "parity": parity,
        "findings": findings,
        "timings": {"load_s": round(loaded - started, 3), "total_s": round(time.perf_counter() - started, 3), "base_worker": worker_plan},
        "cache": cache.stats() if cache is not None else None,
    }
    rows = []
    for i, case_id in enumerate(ids):
        row: dict[str, Any] = {k: records["base"][i][k] for k in ("id", "tags", "expected", "reference", "messages", "case_hash")}
        row["variants"] = {v: {k: records[v][i][k] for k in ("output", "stop_reason", "new_tokens", "extraction", "scores")} for v in VARIANTS}
        row["parity"] = per_case[i]
        rows.append(row)
    report["hygiene"] = (training or {}).get("hygiene")
    report["retention"] = _retention_block(retention) if retention else None
    report["safety_findings"] = [
        {"variant": v, "case": row["id"], "detector": s["scorer"], "explanation": s["explanation"]}
        for row in rows for v in VARIANTS for s in row["variants"][v]["scores"] if s["scorer"].startswith("safety:") and s["value"] == 0.0
    ]
    champ_id, champ_rows = champion_rows(reports_dir)
    report["flips"] = {"base->adapter": flips(rows, "base", "adapter"), "adapter->merged": flips(rows, "adapter", "merged")}
    if champ_rows is not None:
        report["flips"]["champion->adapter"] = flips(rows, "adapter", "adapter", other_rows=champ_rows)
    report["gates"] = evaluate_gates(policy, report, rows, champ_rows, champ_id) if policy is not None else None
    atomic_write_jsonl(run_dir / "cases.jsonl", rows)
    atomic_write_text(run_dir / "summary.md", pipeline_summary(report))
    atomic_write_json(run_dir / "report.json", report)
    return run_dir, report


def _retention_block(results: dict[str, Any]) -> dict[str, Any]:
    """Per variant and task: the rate with its Wilson interval and the per-item outcomes the gate pairs."""
    from harness.stats import wilson

    out: dict[str, Any] = {"variants": {}, "wall_s": {v: r["wall_s"] for v, r in results.items()}, "lm_eval": next(iter(results.values()))["lm_eval"]}
    for variant, r in results.items():
        block = {}
        for task, res in r["tasks"].items():
            items = {k: float(v) for k, v in res["items"].items()}
            k = int(sum(items.values()))
            ci = wilson(k, len(items))
            block[task] = {"metric": res["metric"], "value": res["value"], "ci95": list(ci) if ci else None, "n": res["n"], "items": items, "version": res.get("version")}
        out["variants"][variant] = block
    return out


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def pipeline_summary(report: dict[str, Any]) -> str:
    h = report["headline"]
    lines = [
        f"# {report['suite']['name']} v{report['suite']['version']}: base vs adapter vs merged",
        "",
        f"run `{report['run_id']}` · {report['suite']['n_cases']} cases · base `{report['model']['spec']}` (weights `{report['model']['weights_sha256'][:12]}`) · adapter `{report['adapter']['sha256'][:12]}`",
        "",
        "| metric | base | adapter | merged |",
        "|---|---|---|---|",
    ]
    for k in h["base"]:
        lines.append(f"| {k} | {_fmt(h['base'][k])} | {_fmt(h['adapter'][k])} | {_fmt(h['merged'][k])} |")
    p = report["parity"]
    lines += ["", f"Merge parity: **{p['verdict']}** ({p['explanation']}). {p['merge']}.", ""]
    for v in VARIANTS:
        f = report["variants"][v]["metrics"]["overall"]["failures"]
        lines.append(f"- {v} format failures: " + ", ".join(f"{k} {n}" for k, n in f.items()))
    ret = report.get("retention")
    if ret:
        lines += ["", "## Capability retention (lm-eval)", "", "| task | base | adapter | merged |", "|---|---|---|---|"]
        for task in ret["variants"].get("base", {}):
            lines.append(f"| {task} | " + " | ".join(_fmt(ret["variants"].get(v, {}).get(task, {}).get("value")) for v in VARIANTS) + " |")
    g = report.get("gates")
    if g:
        lines += ["", f"## Gates: **{g['verdict']}**", "", "| check | verdict | value | interval | explanation |", "|---|---|---|---|---|"]
        for c in g["checks"]:
            ci = c.get("delta_ci95") or c.get("ci95")
            val = c.get("delta") if c.get("delta") is not None else c.get("value")
            lines.append(f"| {c['id']} | {c['verdict']} | {'' if val is None else f'{val:.3f}'} | {'' if not ci else f'[{ci[0]:.3f}, {ci[1]:.3f}]'} | {c['explanation']} |")
        lines += [f"- {n}" for n in g.get("notes", [])]
    if report["findings"]:
        lines += ["", "## Findings", ""] + [f"- **{f['level']}** {f['code']}: {f['message']}" for f in report["findings"]]
    tr = report.get("training") or {}
    if tr:
        lines += ["", f"Training: {tr.get('steps')} steps, {tr.get('tokens_per_s')} tokens/s, precision {tr.get('precision')}, train loss {tr.get('train_loss')}"]
    tv = {v: report["variants"][v]["timings"] for v in VARIANTS}
    worker = report["timings"].get("base_worker") or {}
    lines += ["", f"Evaluation: {report['timings']['total_s']} s in all; generation seconds: base {tv['base']['generate_s']}, adapter {tv['adapter']['generate_s']}, "
              f"merged {tv['merged']['generate_s']} (+ replay {tv['merged'].get('replay_s')}). Base: {worker.get('reason', 'decoded in this process')}.", ""]
    return "\n".join(lines)


def portable_tokenizer_config(folder: Path) -> None:
    """Name the tokenizer class that every transformers version knows, so exporters can read the folder.

    transformers 5 writes `"tokenizer_class": "TokenizersBackend"`, a name 4.x does not have; llama.cpp's
    converter pins transformers 4.x and then refuses the folder. `PreTrainedTokenizerFast` loads the same
    tokenizer.json in both (same ids, special tokens and chat template under 5.x; tested).
    """
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        atomic_write_json(path, config)
