"""The eval job: generate over a suite, extract, score, aggregate, and write a report."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from harness import REPORT_SCHEMA_VERSION
from harness.env import hardware, package_versions, tokenizer_sha256, weights_sha256
from harness.extract import extract_json
from harness.generate import Generation, generate
from harness.loading import Runtime, describe_model, load_model, load_tokenizer
from harness.models import ModelRef
from harness.report import write_report
from harness.scoring import METRICS, aggregate, build_scorers, score_case, scorer_versions
from harness.suite import Suite


@dataclass(frozen=True)
class EvalOptions:
    batch_size: int = 64
    precision: str = "float32"
    progress: bool = True
    limit: int | None = None
    canaries: tuple[str, ...] = ()


def evaluate(
    suite: Suite,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    options: EvalOptions,
    keep_logits: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float], list[Generation]]:
    """Per-case records, aggregated metrics, timings and raw generations for one model on one suite."""
    cases = suite.cases[: options.limit] if options.limit else suite.cases
    if not cases:
        raise ValueError("zero cases to evaluate")
    chats = [suite.chat(c) for c in cases]
    t0 = time.perf_counter()
    outputs = generate(model, tokenizer, chats, suite.generation, batch_size=options.batch_size, precision=options.precision, progress=options.progress, keep_logits=keep_logits)
    t1 = time.perf_counter()
    records: list[dict[str, Any]] = []
    scorers = build_scorers(suite, options.canaries)
    for case, chat, gen in zip(cases, chats, outputs):
        ext = extract_json(gen.text)
        scores = score_case(gen.text, ext, case, suite, scorers)
        records.append(
            {
                "id": case.id,
                "tags": list(case.tags),
                "expected": case.expected,
                "reference": case.reference,
                "messages": chat,
                "output": gen.text,
                "stop_reason": gen.stop_reason,
                "prompt_tokens": gen.prompt_tokens,
                "new_tokens": len(gen.token_ids),
                "extraction": {"found": ext.obj is not None, "strict": ext.strict, "problem": ext.problem, "span": ext.span, "object": ext.obj, "detail": ext.detail},
                "scores": [s.to_json() for s in scores],
                "case_hash": case.content_hash,
            }
        )
    metrics = aggregate(records, suite)
    t2 = time.perf_counter()
    new_tokens = sum(r["new_tokens"] for r in records)
    timings = {
        "generate_s": round(t1 - t0, 3),
        "score_s": round(t2 - t1, 3),
        "cases_per_s": round(len(records) / (t1 - t0), 4),
        "generated_tokens": new_tokens,
        "generated_tokens_per_s": round(new_tokens / (t1 - t0), 2),
    }
    return records, metrics, timings, outputs


def report_header(kind: str, run_id: str, suite: Suite, n_cases: int, options: EvalOptions, runtime: Runtime) -> dict[str, Any]:
    """The part every report shares: what ran, on what, with which settings."""
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "kind": kind,
        "run_id": run_id,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "suite": {"name": suite.name, "version": suite.version, "content_hash": suite.content_hash, "path": str(suite.path), "n_cases": n_cases},
        "generation": {
            "decoding": "greedy",
            "max_new_tokens": suite.generation.max_new_tokens,
            "stop_at_json_end": suite.generation.stop_at_json_end,
            "batch_size": options.batch_size,
            "precision": options.precision,
            "device": runtime.device,
        },
        "environment": {"packages": package_versions(), "hardware": hardware()},
        "scorers": scorer_versions(),
        "metric_definitions": {k: vars(v) for k, v in METRICS.items()},
    }


def run_id_for(suite: Suite, model_spec: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model_spec).name or model_spec)[:40]
    return f"{stamp}-{suite.name}-{slug}"


def run_eval(
    suite: Suite,
    ref: ModelRef,
    reports_dir: Path,
    options: EvalOptions,
    device: str = "auto",
    trust_remote_code: bool = False,
    run_id: str | None = None,
) -> Path:
    """Load the model, evaluate the suite and write reports/<run-id>/; returns the run folder."""
    started = time.perf_counter()
    runtime = Runtime.pick(device)
    tokenizer = load_tokenizer(ref, trust_remote_code)
    model = load_model(ref, runtime, trust_remote_code)
    loaded = time.perf_counter()
    records, metrics, timings, _ = evaluate(suite, model, tokenizer, options)
    timings = {"load_s": round(loaded - started, 3), **timings, "total_s": round(time.perf_counter() - started, 3)}
    report: dict[str, Any] = {
        **report_header("eval", run_id or run_id_for(suite, ref.spec), suite, len(records), options, runtime),
        "model": {
            "spec": ref.spec,
            "path": str(ref.path),
            "weights_sha256": weights_sha256(ref.path),
            "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "provenance": ref.provenance,
            **describe_model(model),
        },
        "timings": timings,
        "metrics": metrics,
    }
    return write_report(reports_dir, report, records)
