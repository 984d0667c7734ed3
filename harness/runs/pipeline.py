"""`harness pipeline`: one way to produce a run: base, base+adapter and its in-process merge.

The three variants go through the same stages as any `harness compare` run (harness.compare): the base
weights are loaded once, the adapter is attached with PEFT, "base" runs with the adapter disabled, then the
adapter is merged in place, brought to the export dtype (`merge_dtype`: by default the dtype the base
checkpoint is stored in), evaluated on exactly the weights it is saved with, and saved as a standalone
safetensors folder. The adapter is evaluated in the prompt format its training recorded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from harness.engine.loading import Runtime
from harness.errors import HarnessInputError, Problem
from harness.models.embedded import ModelRef
from harness.runs.compare import run_variants
from harness.runs.evaluate import EvalOptions
from harness.runs.resident import Plan, export_dtype
from harness.suite.budget import BudgetReport, check_budget
from harness.suite.suite import Suite
from harness.variants.spec import VariantSpec, resolve_variants
from harness.verdict.gates import GatePolicy


def pipeline_variants(adapter_dir: Path, merge_dtype: str = "auto") -> tuple[VariantSpec, ...]:
    """The three variants every pipeline run evaluates, named as every earlier report named them."""
    return (
        VariantSpec("base", "base"),
        VariantSpec("adapter", "adapter", path=str(adapter_dir)),
        VariantSpec("merged", "merged", derived_from="adapter", merge_dtype=merge_dtype),
    )  # type: ignore[arg-type]


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
    token_budget: Literal["error", "warn"] = "error",
) -> tuple[Path, dict[str, Any]]:
    """Evaluate the three variants; returns the run folder and the report.

    `parallel_base`: decode the base in a second process while the adapter decodes (harness.worker);
    None decides from the device, the cache, the cores, the memory and the number of cases to decode.
    `token_budget`: what a reference answer longer than generation.max_new_tokens does (harness.suite.budget):
    "error" stops the run before any generation; "warn" (smoke runs with a deliberately tiny budget) prints it.
    """
    if not (adapter_dir / "adapter_config.json").is_file():
        raise HarnessInputError(
            Problem(
                str(adapter_dir),
                "is not a PEFT adapter folder (no adapter_config.json)",
                "pass the adapter/ folder of a trained candidate",
            )
        )
    export_dtype(merge_dtype, base_ref)  # a bad value is an input error before any model work
    variants = resolve_variants(
        pipeline_variants(adapter_dir, merge_dtype), suite.system_prompt, "harness pipeline", base_ref.spec
    )
    _check_token_budget(suite, base_ref, token_budget)
    plan = Plan(
        suite,
        base_ref,
        variants,
        options,
        Runtime.pick(device),
        policy=policy,
        run_id=run_id,
        kind="pipeline",
        retention_dir=retention_dir,
        retention_limit=retention_limit,
        parallel_base=parallel_base,
        slug=f"{base_ref.spec}+{adapter_dir.parent.name}",
    )
    return run_variants(plan, reports_dir, training=training)


def refuse_unfit_references(suite: Suite, base_ref: ModelRef) -> BudgetReport:
    """Raise when a reference cannot fit max_new_tokens under the base tokenizer. Entry points that train call
    it first: a suite whose ideal answer would be scored as truncated is not worth minutes of training."""
    report = check_budget(suite, base_ref.path, base_ref.spec, "base model")
    if report.errors:
        raise report.error()
    return report


def _check_token_budget(suite: Suite, base_ref: ModelRef, mode: Literal["error", "warn"]) -> None:
    """References the base tokenizer cannot fit in max_new_tokens would score the ideal answer as truncated:
    stop before generating (or, in "warn" mode, say so); near misses are printed, one line per case."""
    if mode == "error":
        report = refuse_unfit_references(suite, base_ref)
    else:
        report = check_budget(suite, base_ref.path, base_ref.spec, "base model")
    for case in report.findings:
        print(f"harness: token budget: {report.line(case)}", file=sys.stderr)
    if report.findings:
        print(
            f"harness: token budget: {len(report.errors)} references do not fit and {len(report.warnings)} fit with "
            f"under 10% to spare in max_new_tokens {report.max_new_tokens} ({report.suite_file})",
            file=sys.stderr,
        )
