"""A run over any number of named variants on one suite, paired case by case.

Stages: plan (variants resolved, cache keys, which parity results are missing) -> load the base weights
once with every adapter attached by name -> evaluate each variant in its own prompt format (cache ->
generate, or replay its source's outputs -> score) -> relations (parity and the causes behind a
derived variant's drift) -> findings and data hygiene -> gates -> one report written atomically.
`harness compare RUN.yaml` and `harness pipeline CONFIG` both end here.
"""

from __future__ import annotations

import copy
import gc
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from harness.engine.cache import ResultCache
from harness.variants.derived import adapter_deltas, tokenizer_findings, tokenizer_summary, weight_diagnosis
from harness.env import tokenizer_sha256, weights_sha256
from harness.errors import HarnessInputError, Problem
from harness.verdict.gates import GatePolicy, evaluate_gates, flips
from harness.engine.generate import Generation, replay_greedy
from harness.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, sha256_json
from harness.engine.loading import Runtime, attention_for, describe_model, dtype_name, load_model, load_tokenizer
from harness.models.embedded import ModelRef
from harness.variants.parity import PARITY_STEPS, adapter_findings, case_parity, outputs_identical_everywhere, parity_thresholds, summarize_parity
from harness.verdict.promote import champion_rows
from harness.scoring.registry import flip_metrics, headline_metrics
from harness.runs.evaluate import FORWARD_BATCH, REPLAY_BATCH, EvalOptions, evaluate, generation_keys, report_header, run_id_for
from harness.suite.suite import Case, Suite
from harness.variants.spec import Variant, evaluation_order, source_chain
from harness.runs.worker import plan_base_worker, start_base_worker



@dataclass
class Plan:
    """Everything a run needs before any model is loaded."""

    suite: Suite
    base_ref: ModelRef
    variants: list[Variant]
    options: EvalOptions
    runtime: Runtime
    policy: GatePolicy | None = None
    run_id: str | None = None
    kind: str = "compare"
    source: str = ""  # the run file, or the preset a pipeline came from
    retention_dir: Path | None = None
    retention_limit: int | None = None
    parallel_base: bool | None = None  # decode the base in a second process (CPU); None: decide
    slug: str | None = None  # what the run id names after the suite (default: base and variant names)

    @property
    def by_name(self) -> dict[str, Variant]:
        return {v.name: v for v in self.variants}

    @property
    def cases(self) -> list[Case]:
        """The cases this run evaluates (the first `limit` of the suite's, for smoke runs)."""
        return self.suite.cases[: self.options.limit] if self.options.limit else self.suite.cases


@dataclass
class Outcome:
    records: list[dict[str, Any]]
    metrics: dict[str, Any]
    timings: dict[str, Any]
    gens: list[Generation]
    info: dict[str, Any] = field(default_factory=dict)


def export_dtype(choice: str, ref: ModelRef) -> torch.dtype:
    """The merged export's dtype: as asked, or for "auto" the dtype the base checkpoint is stored in.

    A merged model is shipped in place of its base, so by default it keeps the base's precision (bf16 for
    most published checkpoints); a checkpoint that names no dtype counts as float32.
    """
    from harness.training.config import MERGE_DTYPES

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


class Resident:
    """The base weights, loaded once, with every adapter of the run attached under its variant's name."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.tokenizer = load_tokenizer(plan.base_ref)
        self.base = load_model(plan.base_ref, plan.runtime)
        self.base_hash = weights_sha256(plan.base_ref.path)
        self.dtype = describe_model(self.base)["dtype"]
        self.peft: Any = None
        self.merged_away = False
        for v in plan.variants:
            if v.kind == "adapter":
                self._attach(v)

    def _attach(self, v: Variant) -> None:
        from peft import PeftModel

        try:
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.base, str(v.path), adapter_name=v.name)
            else:
                self.peft.load_adapter(str(v.path), adapter_name=v.name)
        except Exception as exc:  # noqa: BLE001 - whatever PEFT raises, the cause is the adapter folder
            raise HarnessInputError(Problem(f"variant {v.name}: {v.path}", f"PEFT could not attach the adapter to {self.plan.base_ref.spec} "
                                            f"({type(exc).__name__}: {str(exc)[:300]})",
                                            "check that the adapter was trained on this base model (target modules, shapes)")) from None
        self.peft.eval()

    def key(self, v: Variant) -> str:
        if v.kind == "base":
            return f"base:{self.base_hash}:{self.dtype}"
        lora = _lora_id(v) if v.kind == "adapter" else _lora_id(self.plan.by_name[str(v.derived_from)])
        if v.kind == "adapter":
            return f"adapter:{self.base_hash}:{lora}:{self.dtype}"
        return f"merged:{self.base_hash}:{lora}:{self.dtype}:{dtype_name(export_dtype(v.merge_dtype, self.plan.base_ref))}"

    @contextmanager
    def active(self, v: Variant) -> Iterator[Any]:
        """The resident model as this variant: adapters off for the base, one adapter on for an adapter."""
        if self.merged_away:
            raise RuntimeError("the resident weights were merged; base and adapters are evaluated before in-process merges")
        if v.kind == "base":
            if self.peft is None:
                yield self.base
            else:
                with self.peft.disable_adapter():
                    yield self.peft
        else:
            self.peft.set_adapter(v.name)
            yield self.peft

    def merge(self, v: Variant, last: bool) -> Any:
        """base + one adapter as a plain model; the resident copy is merged in place only by the last merge."""
        source = str(v.derived_from)
        model = self.peft if last else copy.deepcopy(self.peft)
        model.set_adapter(source)
        merged = model.merge_and_unload(adapter_names=[source])
        if last:
            self.merged_away = True
        return merged


def _lora_id(v: Variant) -> str:
    by_role = {s["role"]: s["sha256"] for s in v.sources}
    return f"{by_role.get('adapter')}:{by_role.get('adapter_config')}"


def _external_ref(v: Variant) -> ModelRef:
    assert v.path is not None
    return ModelRef(str(v.path), v.path.resolve(), {"source": f"{v.kind} {v.path.resolve()}"})


def _external_tokenizer(v: Variant) -> Any:
    """A user's merged folder or GGUF file is served with its own tokenizer: checking that one is the point."""
    assert v.path is not None
    if v.kind == "merged":
        return load_tokenizer(_external_ref(v))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(v.path.parent), gguf_file=v.path.name)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's file
        raise HarnessInputError(Problem(f"variant {v.name}: {v.path}", f"transformers could not read the GGUF's tokenizer ({type(exc).__name__}: {str(exc)[:300]})",
                                        "give a GGUF written by llama.cpp's converter, with its tokenizer embedded")) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def _load_external(v: Variant, runtime: Runtime) -> Any:
    """The model of a user's merged folder or GGUF file (GGUF tensors are dequantized by transformers)."""
    assert v.path is not None
    if v.kind == "merged":
        return load_model(_external_ref(v), runtime)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(v.path.parent), gguf_file=v.path.name, dtype=runtime.dtype,
                                                     attn_implementation=attention_for(runtime.device))
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's file
        raise HarnessInputError(Problem(f"variant {v.name}: {v.path}", f"transformers could not load the GGUF ({type(exc).__name__}: {str(exc)[:300]})",
                                        "give a GGUF of a supported architecture and tensor type (f16, q8_0, q4_k_m, ...)")) from None
    return model.to(runtime.device).eval()


def gguf_storage(path: Path) -> dict[str, Any]:
    """The GGUF's declared file type and the count of tensors per quantization type."""
    from gguf import GGUFReader, LlamaFileType

    reader = GGUFReader(str(path))
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    field_ = reader.fields.get("general.file_type")
    file_type = None
    if field_ is not None:
        try:
            file_type = LlamaFileType(int(field_.parts[field_.data[0]][0])).name.removeprefix("MOSTLY_")
        except (ValueError, IndexError):
            file_type = None
    return {"file_type": file_type, "tensor_types": types}


def _release_memory() -> None:
    """Return a freed model's memory before the next one loads (the caller drops its references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _headline(metrics: dict[str, Any], scorers: tuple[str, ...]) -> dict[str, float | None]:
    """The registry's headline metrics, then each label's accuracy and macro-F1."""
    o = metrics["overall"]
    out: dict[str, float | None] = {k: (o["scores"].get(k) or o.get(k) or {}).get("value") for k in headline_metrics(scorers)}
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


def run_variants(plan: Plan, reports_dir: Path, training: dict[str, Any] | None = None) -> tuple[Path, dict[str, Any]]:
    """Evaluate every variant of the plan, relate the derived ones to their sources, gate, write; returns the run folder and report."""
    started = time.perf_counter()
    suite, options, runtime = plan.suite, plan.options, plan.runtime
    by_name = plan.by_name
    order = evaluation_order(plan.variants)
    cases = plan.cases
    if not cases:
        raise HarnessInputError(Problem(str(suite.path), "has no cases to evaluate", "add cases, or drop --limit 0"))
    rid = plan.run_id or run_id_for(suite, plan.slug or f"{plan.base_ref.spec}+{'-'.join(v.name for v in plan.variants if v.kind != 'base')}")
    run_dir = reports_dir / rid
    if (run_dir / "report.json").exists():
        raise HarnessInputError(Problem(f"run id {rid}", f"{run_dir} already holds a report", "pick another --run-id, or leave it out for a fresh one"))
    cache = ResultCache(options.cache_path) if options.cache_path else None
    device_type = torch.device(runtime.device).type
    scoring_canaries = tuple(dict.fromkeys(c for v in plan.variants for c in v.canaries)) or options.canaries
    needs_resident = any(v.kind in ("base", "adapter") or v.in_process for v in plan.variants)
    resident = Resident(plan) if needs_resident else None
    loaded_at = time.perf_counter()

    # identities and tokenizers first: cache keys, and which parity results still have to be measured
    tokenizers: dict[str, Any] = {}
    raw_tokenizers: dict[str, Any] = {}  # as shipped; `tokenizers` may borrow a missing chat template to measure the weights
    borrowed: dict[str, str] = {}
    keys: dict[str, str] = {}
    for v in plan.variants:
        if v.kind in ("base", "adapter") or v.in_process:
            assert resident is not None
            tokenizers[v.name] = _own_tokenizer(v, resident.tokenizer)
            keys[v.name] = resident.key(v)
        else:
            keys[v.name] = f"{v.kind}:{','.join(s['sha256'] for s in v.sources)}:{dtype_name(runtime.dtype)}"
    rendered = {v.name: [v.prompt_format.render(suite, c) for c in cases] for v in plan.variants}
    derived = [v for v in plan.variants if v.derived_from is not None]
    parity_needed: dict[str, set[int]] = {}
    cached_parity: dict[str, dict[int, dict[str, Any]]] = {}
    parity_keys: dict[str, list[str]] = {}
    findings: list[dict[str, Any]] = []
    diagnosis: dict[str, list[dict[str, Any]]] = {v.name: [] for v in derived}
    weight_checks: dict[str, dict[str, Any]] = {}
    storage: dict[str, dict[str, Any]] = {}

    outcomes: dict[str, Outcome] = {}
    retention: dict[str, Any] = {}
    worker = None
    worker_plan: dict[str, Any] = {"used": False, "reason": "no base variant"}
    try:
        for v in order:
            if v.kind not in ("base", "adapter") and not v.in_process:
                # only the tokenizer now: a derived model is loaded when its turn comes and freed after it
                raw_tokenizers[v.name] = tokenizers[v.name] = _external_tokenizer(v)
                if v.prompt_format.kind == "chat" and not getattr(tokenizers[v.name], "chat_template", None):
                    tokenizers[v.name], borrowed[v.name] = _borrow_template(plan, v, tokenizers)
                if v.kind == "gguf":
                    storage[v.name] = gguf_storage(v.path)  # type: ignore[arg-type]
        gk = {v.name: generation_keys(suite, cases, rendered[v.name], keys[v.name], tokenizer_sha256(tokenizers[v.name]), options, device_type, v.prompt_format)
              for v in plan.variants}
        for d in derived:
            src = str(d.derived_from)
            parity_keys[d.name] = [sha256_json({"adapter": a, "merged": m, "steps": PARITY_STEPS}) for a, m in zip(gk[src], gk[d.name])]
            cached_parity[d.name] = {}
            if cache is not None:
                for i, k in enumerate(parity_keys[d.name]):
                    hit = cache.get("parity", k)
                    if hit is not None:
                        cached_parity[d.name][i] = hit
            missing = {i for i in range(len(cases)) if i not in cached_parity[d.name]}
            parity_needed[d.name] = missing
            parity_needed.setdefault(src, set()).update(missing)

        base_v = next((v for v in plan.variants if v.kind == "base"), None)
        base_is_source = base_v is not None and bool(parity_needed.get(base_v.name))
        if base_v is not None and resident is not None and base_v.prompt_format.is_default and not base_is_source and any(v.kind == "adapter" for v in plan.variants):
            missing = sum(not cache.has("generations", k) for k in gk[base_v.name]) if cache is not None else len(cases)
            worker_plan = plan_base_worker(plan.parallel_base, runtime.device, cache is not None, missing, resident.base, resident.tokenizer,
                                           [suite.chat(c) for c in cases], options.batch_size, suite.generation.max_new_tokens)
            if worker_plan["used"]:
                # the worker scores with the run's canaries too, so its cached scores are the ones this process looks up
                worker = start_base_worker(suite.path, plan.base_ref.path, replace(options, canaries=scoring_canaries), keys[base_v.name], runtime.device)
        elif base_v is not None:
            worker_plan = {"used": False, "reason": "the base is evaluated here (a parity source, another prompt format, or no adapter beside it)"}

        in_process = [v for v in order if v.in_process]
        deferred_base = worker is not None
        for v in order:
            if v.kind == "base" and deferred_base:
                continue
            if deferred_base and v.kind != "adapter" and base_v is not None:
                outcomes[base_v.name] = _finish_worker(worker, worker_plan, lambda: _eval_resident(plan, resident, base_v, tokenizers[base_v.name], keys, parity_needed, cache, scoring_canaries, retention))
                worker, deferred_base = None, False
            if v.kind in ("base", "adapter"):
                outcomes[v.name] = _eval_resident(plan, resident, v, tokenizers[v.name], keys, parity_needed, cache, scoring_canaries, retention)
                continue
            src = by_name[str(v.derived_from)] if v.derived_from else None
            if v.in_process:
                assert resident is not None and src is not None
                merge_started = time.perf_counter()
                model = resident.merge(v, last=v is in_process[-1])
                export = export_dtype(v.merge_dtype, plan.base_ref)
                info = {"requested": v.merge_dtype, **to_export_dtype(model, export, runtime.device)}
                merge_s = time.perf_counter() - merge_started
            else:
                model = _load_external(v, runtime)
                info = {}
                merge_s = None
                diagnosis[v.name] += _derived_checks(plan, v, model, {**tokenizers, **raw_tokenizers}, resident, weight_checks, storage)
                if v.name in borrowed:
                    diagnosis[v.name].append({"level": "info", "code": "chat_template_borrowed", "variant": v.name,
                                              "message": f"{v.name} was prompted with {borrowed[v.name]}'s chat template, since its own tokenizer has none: "
                                                         "its scores measure the weights, not the tokenizer it ships with"})
            tok = tokenizers[v.name]
            outcome = _eval_derived(plan, v, src, model, tokenizers, keys, rendered, outcomes, parity_needed, cache, scoring_canaries)
            outcome.info = info
            outcomes[v.name] = outcome
            if merge_s is not None:
                outcome.timings["merge_s"] = round(merge_s, 3)
            if plan.retention_dir is not None:
                retention[v.name] = _retention(plan, model, tok, v.name, keys[v.name])
            if v.in_process:
                out_dir = run_dir / v.name
                model.to(export)  # a no-op unless the weights were only rounded to it
                model.save_pretrained(out_dir, safe_serialization=True)
                tok.save_pretrained(out_dir)
                portable_tokenizer_config(out_dir)
                outcome.info.update(path=str(out_dir), weights_sha256=weights_sha256(out_dir), **describe_model(model))
            del model
            _release_memory()
        if deferred_base and base_v is not None:
            outcomes[base_v.name] = _finish_worker(worker, worker_plan, lambda: _eval_resident(plan, resident, base_v, tokenizers[base_v.name], keys, parity_needed, cache, scoring_canaries, retention))
            worker = None
    except BaseException:
        if worker is not None:
            worker.stop()
        raise

    ids = [c.id for c in cases]
    relations: dict[str, Any] = {}
    per_case_rel: dict[str, list[dict[str, Any]]] = {}
    for d in derived:
        src = str(d.derived_from)
        a, b = outcomes[src].gens, outcomes[d.name].gens
        comparable = tokenizers[src].get_vocab() == tokenizers[d.name].get_vocab()
        per = [cached_parity[d.name][i] if i in cached_parity[d.name] else _case_relation(a[i], b[i], comparable) for i in range(len(cases))]
        if cache is not None and comparable:
            cache.put_many("parity", [(parity_keys[d.name][i], p) for i, p in enumerate(per) if i not in cached_parity[d.name]])
        per_case_rel[d.name] = per
        thresholds = parity_thresholds(d.kind, (storage.get(d.name) or {}).get("file_type"))
        note = _relation_note(plan, d, outcomes[d.name].info, storage.get(d.name), training)
        rel = summarize_parity(ids, per, note, thresholds)
        rel.update(source=src, diagnosis=diagnosis[d.name], weights=weight_checks.get(d.name), comparable_tokens=comparable,
                   same_prompts=sum(1 for i in range(len(cases)) if _same_prompt(by_name[src], d, tokenizers, rendered, i)))
        relations[d.name] = rel
        findings += [f for f in diagnosis[d.name] if f["level"] in ("error", "warning")]
        if not rel["passed"]:
            cause = next((f["message"] for f in diagnosis[d.name] if f["level"] == "error"), None)
            findings.append({"level": "error", "code": "derived_parity" if d.kind != "merged" or not d.in_process else "merge_parity", "variant": d.name,
                             "message": f"{d.name} differs from {src}: {rel['explanation']}" + (f"; likely cause: {cause}" if cause else "")})

    for v in plan.variants:
        if v.kind == "adapter":
            findings += [{**f, "variant": v.name} for f in outcomes[v.name].info.get("adapter_findings", [])]
            if base_v is not None and outputs_identical_everywhere(outcomes[base_v.name].gens, outcomes[v.name].gens):
                findings.append({"level": "error", "code": "adapter_no_effect", "variant": v.name,
                                 "message": f"{v.name}'s outputs equal the base model's on all {len(ids)} cases: it was not applied or learned nothing"})
            if resident is not None and tokenizers[v.name] is not resident.tokenizer:
                findings += [f for f in tokenizer_findings(v.name, tokenizers[v.name], "the base", resident.tokenizer, v.prompt_format.kind == "chat")
                             if f["level"] != "info"]

    hygiene = _hygiene(plan, training)
    variants_block: dict[str, Any] = {}
    for v in plan.variants:
        o = outcomes[v.name]
        block: dict[str, Any] = {**v.to_json(), "metrics": o.metrics, "timings": o.timings, "tokenizer": tokenizer_summary(raw_tokenizers.get(v.name, tokenizers[v.name])),
                                 "weights_sha256": resident.base_hash if resident is not None and (v.kind in ("base", "adapter")) else None}
        if v.kind == "adapter":
            block["adapter_sha256"] = next(s["sha256"] for s in v.sources if s["role"] == "adapter")
            block["adapter_config"] = v.adapter_config
            block["training"] = _training_summary(v.training)
        if v.in_process:
            block.update(weights_sha256=o.info.get("weights_sha256"), path=o.info.get("path"), export={k: o.info[k] for k in ("requested", "merged_in", "export_dtype", "evaluated_in", "rounded")},
                         **{k: o.info[k] for k in ("class", "parameters", "dtype") if k in o.info})
        elif v.kind in ("merged", "gguf"):
            block["path"] = str(v.path)
            if v.kind == "gguf":
                block["storage"] = storage.get(v.name)
        variants_block[v.name] = block
    headline = {v.name: _headline(outcomes[v.name].metrics, suite.scorers) for v in plan.variants}
    pairs = comparison_pairs(plan)
    rows = []
    for i, case_id in enumerate(ids):
        first = outcomes[plan.variants[0].name].records[i]
        row: dict[str, Any] = {k: first[k] for k in ("id", "tags", "expected", "reference", "messages", "case_hash")}
        row["variants"] = {v.name: {k: outcomes[v.name].records[i][k] for k in ("output", "stop_reason", "new_tokens", "extraction", "scores")}
                           for v in plan.variants}
        for v in plan.variants:
            if "prompt" in outcomes[v.name].records[i]:
                row["variants"][v.name]["prompt"] = outcomes[v.name].records[i]["prompt"]
        row["relations"] = {d.name: per_case_rel[d.name][i] for d in derived}
        if len(derived) == 1:
            row["parity"] = row["relations"][derived[0].name]  # what readers of one-derived-variant reports read
        rows.append(row)
    report: dict[str, Any] = {
        **report_header(plan.kind, rid, suite, len(ids), options, runtime),
        "run_file": plan.source,
        "model": {"spec": plan.base_ref.spec, "path": str(plan.base_ref.path), "weights_sha256": resident.base_hash if resident else None,
                  "tokenizer_sha256": tokenizer_sha256(resident.tokenizer) if resident else None, "provenance": plan.base_ref.provenance},
        "variant_order": [v.name for v in plan.variants],
        "variants": variants_block,
        "headline": headline,
        "comparisons": {f"{a}->{b}": _delta(headline[a], headline[b]) for a, b in pairs},
        "relations": relations,
        "findings": findings,
        "training": training,
        "hygiene": next(iter(hygiene.values())) if len(hygiene) == 1 else None,  # one adapter's report, where readers expect one
        "hygiene_by_variant": hygiene,
        "timings": {"load_s": round(loaded_at - started, 3), "total_s": round(time.perf_counter() - started, 3), "base_worker": worker_plan},
        "cache": cache.stats() if cache is not None else None,
    }
    adapters = [v for v in plan.variants if v.kind == "adapter"]
    if len(adapters) == 1:
        a = adapters[0]
        report["adapter"] = {"name": a.name, "path": str(a.path), "sha256": variants_block[a.name]["adapter_sha256"], "config": a.adapter_config}
    if len(derived) == 1:
        report["parity"] = relations[derived[0].name]
    report["retention"] = _retention_block(retention) if retention else None
    report["safety_findings"] = [
        {"variant": v.name, "case": row["id"], "detector": s["scorer"], "explanation": s["explanation"]}
        for row in rows for v in plan.variants for s in row["variants"][v.name]["scores"] if s["scorer"].startswith("safety:") and s["value"] == 0.0
    ]
    champ_id, champ_rows, champ_variant = champion_rows(reports_dir)
    flip_on = flip_metrics(suite.scorers)
    report["flips"] = {f"{a}->{b}": flips(rows, a, b, flip_on) for a, b in pairs}
    if champ_rows is not None:
        for v in plan.variants:
            if v.kind == "adapter":
                report["flips"][f"champion->{v.name}"] = flips(rows, champ_variant or v.name, v.name, flip_on, other_rows=champ_rows)
    report["gates"] = evaluate_gates(plan.policy, report, rows, champ_rows, champ_id, champ_variant) if plan.policy is not None else None
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(run_dir / "cases.jsonl", rows)
    atomic_write_text(run_dir / "summary.md", summary(report))
    atomic_write_json(run_dir / "report.json", report)
    return run_dir, report


def _own_tokenizer(v: Variant, base_tokenizer: Any) -> Any:
    """An adapter folder's own tokenizer when it ships one that differs from the base's (that is what it was trained with)."""
    if v.kind != "adapter" or v.path is None or not (v.path / "tokenizer_config.json").is_file():
        return base_tokenizer
    ref = ModelRef(str(v.path), v.path, {})
    own = load_tokenizer(ref)
    return base_tokenizer if tokenizer_sha256(own) == tokenizer_sha256(base_tokenizer) else own


def _borrow_template(plan: Plan, v: Variant, tokenizers: dict[str, Any]) -> tuple[Any, str]:
    """A copy of a derived variant's tokenizer with the chat template of the variant it derives from."""
    for src in source_chain(plan.by_name, v.name)[1:]:
        template = getattr(tokenizers.get(src.name), "chat_template", None)
        if template:
            patched = copy.copy(tokenizers[v.name])
            patched.chat_template = template
            return patched, src.name
    raise HarnessInputError(Problem(f"variant {v.name}: {v.path}", "its tokenizer has no chat template and it derives from no variant that has one",
                                    "give it prompt_format: {kind: template, template: ...} or ship the chat template with its tokenizer"))


def _finish_worker(worker: Any, worker_plan: dict[str, Any], evaluate_base: Any) -> Outcome:
    worker_timings, failure = worker.finish()
    if failure:
        worker_plan.update(used=False, reason=f"the base worker failed ({failure}); the base was decoded here")
        print(f"harness: {worker_plan['reason']}", file=sys.stderr)
    outcome: Outcome = evaluate_base()
    if worker_timings is not None and outcome.timings["generated_cases"] == 0:
        outcome.timings = {**worker_timings, "score_s": outcome.timings["score_s"], "worker": "second process, 1 thread, beside the adapter's decode"}
    return outcome


def _eval_resident(plan: Plan, resident: Resident | None, v: Variant, tok: Any, keys: dict[str, str], parity_needed: dict[str, set[int]],
                   cache: ResultCache | None, canaries: tuple[str, ...], retention: dict[str, Any]) -> Outcome:
    assert resident is not None
    cases = plan.cases
    need = parity_needed.get(v.name, set())
    with resident.active(v) as model:
        records, metrics, timings, gens = evaluate(plan.suite, model, tok, plan.options, keep_logits=PARITY_STEPS if need else 0, cache=cache,
                                                   model_key=keys[v.name], regenerate=frozenset(cases[i].id for i in need), fmt=v.prompt_format, canaries=canaries)
        info: dict[str, Any] = {}
        if v.kind == "adapter":
            info["adapter_findings"] = adapter_findings(model, v.name)
        if plan.retention_dir is not None:
            retention[v.name] = _retention(plan, model, tok, v.name, keys[v.name])
    return Outcome(records, metrics, timings, gens, info)


def _same_prompt(a: Variant, b: Variant, tokenizers: dict[str, Any], rendered: dict[str, list[Any]], i: int) -> bool:
    """Whether two variants see the same prompt tokens for case i (then one's outputs can be replayed through the other)."""
    ids = _prompt_ids(b, tokenizers[b.name], rendered, i)
    return ids is not None and ids == _prompt_ids(a, tokenizers[a.name], rendered, i)


def _eval_derived(plan: Plan, v: Variant, src: Variant | None, model: Any, tokenizers: dict[str, Any], keys: dict[str, str],
                  rendered: dict[str, list[Any]], outcomes: dict[str, Outcome], parity_needed: dict[str, set[int]],
                  cache: ResultCache | None, canaries: tuple[str, ...]) -> Outcome:
    """Evaluate a merged or GGUF variant; where it sees the same prompt tokens as its source, replay the source's outputs.

    Replaying (one forward pass over prompt + the source's tokens) proves step by step that greedy decoding
    of this model picks the same tokens; only the cases where it does not are decoded.
    """
    cases = plan.cases
    tok = tokenizers[v.name]
    need = sorted(parity_needed.get(v.name, set()))
    provided: dict[int, Generation] = {}
    replay_s, mismatches, replayable = 0.0, 0, []
    if src is not None and need and tokenizers[src.name].get_vocab() == tok.get_vocab():
        started = time.perf_counter()
        replayable = [i for i in need if _same_prompt(src, v, tokenizers, rendered, i)]
        if replayable:
            known = [outcomes[src.name].gens[i] for i in replayable]
            replayed = replay_greedy(model, tok, [], known, min(plan.options.batch_size, REPLAY_BATCH), PARITY_STEPS,
                                     prompt_ids=[v.prompt_format.encode(tok, rendered[v.name][i]) for i in replayable])
            provided = {replayable[j]: g for j, g in enumerate(replayed) if g is not None}
            mismatches = len(replayable) - len(provided)
        replay_s = time.perf_counter() - started
    records, metrics, timings, gens = evaluate(plan.suite, model, tok, plan.options, keep_logits=PARITY_STEPS if need else 0, cache=cache,
                                               model_key=keys[v.name], regenerate=frozenset(cases[i].id for i in need), provided=provided,
                                               fmt=v.prompt_format, canaries=canaries)
    timings = {**timings, "replay_s": round(replay_s, 3), "replay_mismatches": mismatches, "replayable_cases": len(replayable)}
    return Outcome(records, metrics, timings, gens)


def _prompt_ids(v: Variant, tok: Any, rendered: dict[str, list[Any]], i: int) -> list[int] | None:
    try:
        return v.prompt_format.encode(tok, rendered[v.name][i])
    except ValueError:
        return None


def _case_relation(a: Generation, b: Generation, comparable: bool) -> dict[str, Any]:
    if comparable and a.logits is not None and b.logits is not None:
        return case_parity(a, b)
    return {"steps": 0, "compared_steps": 0, "token_agreement": 1.0 if a.text == b.text else 0.0, "first_divergence": None if a.text == b.text else 0,
            "max_abs_logit_diff": None, "mean_kl": None, "identical_output": a.text == b.text, "text_only": True}


def _derived_checks(plan: Plan, v: Variant, model: Any, tokenizers: dict[str, Any], resident: Resident | None,
                    weight_checks: dict[str, dict[str, Any]], storage: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tokenizer identity with the source, and what the weights say about how this variant was made."""
    out: list[dict[str, Any]] = []
    src_name = str(v.derived_from) if v.derived_from else None
    if src_name is not None:
        out += tokenizer_findings(v.name, tokenizers[v.name], src_name, tokenizers[src_name], v.prompt_format.kind == "chat")
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
    kind = (storage.get(v.name) or {}).get("file_type") if v.kind == "gguf" else dtype_name(next(model.parameters()).dtype)
    if v.kind == "merged" and v.path is not None:
        kind = _stored_dtype(v.path) or kind
    quantized = v.kind == "gguf" and str(kind).upper() not in ("F32", "ALL_F32", "F16", "BF16")
    w = weight_diagnosis(v.name, derived_state, base_state, deltas, adapter.name if adapter else None, f"{kind}" + (" GGUF" if v.kind == "gguf" else ""), quantized)
    weight_checks[v.name] = {k: val for k, val in w.items() if k != "findings"}
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


def _relation_note(plan: Plan, v: Variant, info: dict[str, Any], storage: dict[str, Any] | None, training: dict[str, Any] | None) -> str:
    src = plan.by_name[str(v.derived_from)]
    trained_nf4 = bool(((src.training or training) or {}).get("precision", {}).get("weights") == "nf4")
    if v.in_process:
        return (f"merged here into the original (unquantized) base weights in {info['merged_in']}, exported as {info['export_dtype']}"
                + (" (the base checkpoint's dtype)" if v.merge_dtype == "auto" else "")
                + (f", weights rounded to it and evaluated in {info['evaluated_in']}" if info["evaluated_in"] != info["export_dtype"] else "")
                + ("; the adapter was trained against nf4-dequantized weights, so small differences are expected" if trained_nf4 else ""))
    if v.kind == "gguf":
        ft = (storage or {}).get("file_type") or "unknown type"
        return f"GGUF file ({ft}) loaded through transformers' GGUF support (dequantized to {dtype_name(plan.runtime.dtype)}), compared with {src.name}"
    return f"merged folder supplied by the user ({_stored_dtype(v.path) if v.path else 'unknown'} weights), compared with {src.name}"


def _training_summary(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    if not meta:
        return None
    keep = ("name", "config_hash", "steps", "tokens_per_s", "train_loss", "validation_loss", "precision", "prompt_format")
    return {k: meta.get(k) for k in keep if k in meta}


def _hygiene(plan: Plan, training: dict[str, Any] | None) -> dict[str, Any]:
    """Per adapter: the data hygiene report recorded at training, or one computed now from the training data it names."""
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
        from harness.training.data import load_examples, split
        from harness.training.config import DataConfig

        td = v.training_data
        cfg = DataConfig(path=td.path, format=td.format, template=td.template, system_prompt=td.system_prompt, validation_fraction=0.0)
        examples, sha = load_examples(cfg, None)
        data = split(examples, 0.0, 0, sha)
        out[v.name] = {**hygiene_report(td.path, data, plan.suite, {}, 0), "source": "training data named in the run file"}
    return out


def _retention(plan: Plan, model: Any, tok: Any, name: str, key: str) -> dict[str, Any]:
    from harness.models.embedded import cache_dir
    from harness.runs.retention import run_retention

    assert plan.retention_dir is not None
    return run_retention(model, tok, name, plan.retention_dir, cache_dir() / "lm_eval", limit=plan.retention_limit,
                         batch_size=min(plan.options.batch_size, FORWARD_BATCH), cache_key=key)


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


def summary(report: dict[str, Any]) -> str:
    """summary.md: one column per variant, a parity line per derived variant, the gates and the findings."""
    names = report["variant_order"]
    h = report["headline"]
    kinds = report["variants"]
    lines = [
        f"# {report['suite']['name']} v{report['suite']['version']}: " + " vs ".join(names),
        "",
        f"run `{report['run_id']}` · {report['suite']['n_cases']} cases · base `{report['model']['spec']}`"
        + (f" (weights `{report['model']['weights_sha256'][:12]}`)" if report["model"].get("weights_sha256") else ""),
        "",
        "| variant | kind | derived from | prompt format |",
        "|---|---|---|---|",
    ]
    from harness.variants.prompts import PromptFormat

    for n in names:
        v = kinds[n]
        fmt = PromptFormat(**v["prompt_format"]).describe() if v.get("prompt_format") else "chat"
        lines.append(f"| {n} | {v.get('kind')} | {v.get('derived_from') or ''} | {fmt} |")
    lines += ["", "| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for k in h[names[0]]:
        lines.append(f"| {k} | " + " | ".join(_fmt(h[n].get(k)) for n in names) + " |")
    for n, p in report.get("relations", {}).items():
        lines += ["", f"Parity {n} vs {p['source']}: **{p['verdict']}** ({p['explanation']}). {p['merge']}."]
        lines += [f"- {f['level']} {f['code']}: {f['message']}" for f in p.get("diagnosis", []) if f["level"] != "info"]
        lines += [f"- {f['message']}" for f in p.get("diagnosis", []) if f["level"] == "info"]
    lines.append("")
    for n in names:
        f = report["variants"][n]["metrics"]["overall"]["failures"]
        lines.append(f"- {n} format failures: " + ", ".join(f"{k} {c}" for k, c in f.items()))
    ret = report.get("retention")
    if ret:
        lines += ["", "## Capability retention (lm-eval)", "", "| task | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        first = next(iter(ret["variants"].values()), {})
        for task in first:
            lines.append(f"| {task} | " + " | ".join(_fmt(ret["variants"].get(n, {}).get(task, {}).get("value")) for n in names) + " |")
    g = report.get("gates")
    if g:
        lines += ["", f"## Gates: **{g['verdict']}**", "", "| check | verdict | value | interval | explanation |", "|---|---|---|---|---|"]
        for c in g["checks"]:
            ci = c.get("delta_ci95") or c.get("ci95")
            val = c.get("delta") if c.get("delta") is not None else c.get("value")
            lines.append(f"| {c['id']} | {c['verdict']} | {'' if val is None else f'{val:.3f}'} | {'' if not ci else f'[{ci[0]:.3f}, {ci[1]:.3f}]'} | {c['explanation']} |")
        lines += [f"- {n}" for n in g.get("notes", [])]
    if report["findings"]:
        lines += ["", "## Findings", ""] + [f"- **{f['level']}** {f['code']}" + (f" ({f['variant']})" if f.get("variant") else "") + f": {f['message']}"
                                           for f in report["findings"]]
    tr = report.get("training") or {}
    if tr:
        lines += ["", f"Training: {tr.get('steps')} steps, {tr.get('tokens_per_s')} tokens/s, precision {tr.get('precision')}, train loss {tr.get('train_loss')}"]
    t = {n: report["variants"][n]["timings"] for n in names}
    worker = report["timings"].get("base_worker") or {}
    lines += ["", f"Evaluation: {report['timings']['total_s']} s in all; generation seconds: "
              + ", ".join(f"{n} {t[n].get('generate_s')}" + (f" (+ replay {t[n]['replay_s']})" if t[n].get("replay_s") else "") for n in names)
              + f". Base: {worker.get('reason', 'decoded in this process')}.", ""]
    return "\n".join(lines)
