"""From what a user writes (a run file, or `harness compare` flags) to a Plan the engine runs.

Everything that can be checked without loading a model is checked here, all problems at once: the run
file's keys, the suite, every variant's files and references, the gate policy against the run's variant
names. A mistake costs a second, not a model load.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import get_args

from harness.engine.loading import Runtime
from harness.errors import HarnessInputError, Problem
from harness.models.embedded import resolve
from harness.runs.evaluate import EvalOptions
from harness.runs.resident import Plan
from harness.suite.suite import load_suite
from harness.variants.spec import DataFormat, RunSpec, TrainingData, VariantSpec, load_run_file, resolve_variants
from harness.verdict.gates import GATES_FILE, GatePolicy, load_policy


def parse_variant_flag(kind: str, value: str) -> VariantSpec:
    """`NAME=PATH` or `NAME=PATH@FROM` (the variant it derives from), as `harness compare` flags take them."""
    name, sep, rest = value.partition("=")
    if not sep or not name or not rest:
        raise HarnessInputError(
            Problem(
                f"--{kind} {value}",
                "is not NAME=PATH",
                f"e.g. --{kind} mine=path/to/it" + ("@adapter-name" if kind != "adapter" else ""),
            )
        )
    path, at, source = rest.rpartition("@") if "@" in rest else (rest, "", "")
    return VariantSpec(name=name, kind=kind, path=path if at else rest, derived_from=source or None)  # type: ignore[arg-type]


def parse_training_data_flags(values: list[str], adapters: list[str]) -> dict[str, TrainingData]:
    """`--training-data NAME=FILE[:FORMAT]`: the data adapter NAME was trained on (FORMAT: messages, the default,
    instruction or text), so its leakage, duplicates and personal data are checked like the harness's own."""
    formats = get_args(DataFormat)
    out: dict[str, TrainingData] = {}
    for value in values:
        name, sep, rest = value.partition("=")
        path, colon, fmt = rest.rpartition(":") if rest.rpartition(":")[2] in formats else (rest, "", "messages")
        if not sep or not name or not path:
            raise HarnessInputError(
                Problem(
                    f"--training-data {value}",
                    "is not NAME=FILE[:FORMAT]",
                    "e.g. --training-data mine=data/train.jsonl (or data/train.jsonl:instruction)",
                )
            )
        if name in out:
            raise HarnessInputError(
                Problem(f"--training-data {value}", f"names {name!r} twice", "give one file per adapter")
            )
        out[name] = TrainingData(path=path, format=fmt)  # type: ignore[arg-type]
    known = {parse_variant_flag("adapter", a).name for a in adapters}
    for name in out:
        if name not in known:
            hint = ", ".join(sorted(known)) or "none given"
            raise HarnessInputError(
                Problem(
                    f"--training-data {name}=...",
                    f"names no --adapter variant (adapters: {hint})",
                    "use the NAME of an --adapter NAME=DIR flag",
                )
            )
    return out


def spec_from_flags(
    suite: str,
    base: str,
    adapters: list[str],
    merged: list[str],
    ggufs: list[str],
    with_base: bool = True,
    training_data: list[str] | None = None,
) -> RunSpec:
    """A run spec from flags: the base (unless left out), then adapters, merged folders and GGUF files in that order."""
    data = parse_training_data_flags(training_data or [], adapters)
    variants = [VariantSpec("base", "base")] if with_base else []
    variants += [
        replace(s, training_data=data.get(s.name)) for s in (parse_variant_flag("adapter", a) for a in adapters)
    ]
    variants += [parse_variant_flag("merged", m) for m in merged]
    variants += [parse_variant_flag("gguf", g) for g in ggufs]
    return RunSpec(suite=suite, variants=tuple(variants), base=base, source="command-line flags")


def plan_run(
    run: Path | RunSpec,
    options: EvalOptions,
    device: str = "auto",
    run_id: str | None = None,
    policy_override: GatePolicy | None = None,
    gates_path: Path | None = None,
) -> Plan:
    """Resolve a run file (or a spec built from flags) into a Plan: suite, base, variants, policy."""
    spec = load_run_file(run) if isinstance(run, Path) else run
    where = spec.source or "run"
    suite = load_suite(spec.suite)
    variants = resolve_variants(
        spec.variants, suite.system_prompt, where, spec.base
    )  # every mistake before any training
    if any(v.preset for v in spec.variants):
        variants = resolve_variants(
            tuple(_trained(v, spec.base) for v in spec.variants), suite.system_prompt, where, spec.base
        )
    names = [v.name for v in variants]
    policy: GatePolicy | None
    if policy_override is not None:
        policy = policy_override
        _check_policy_names(policy, names)
    elif gates_path is not None:
        policy = load_policy(gates_path, names)
    elif spec.gates == "none":
        policy = None
    elif spec.gates is not None:
        policy = load_policy(Path(spec.gates), names)
    else:
        default = suite.path / GATES_FILE
        policy = load_policy(default, names) if default.is_file() else None
    base_ref = resolve(spec.base)
    return Plan(
        suite,
        base_ref,
        variants,
        options,
        Runtime.pick(device),
        policy=policy,
        run_id=run_id,
        kind="compare",
        source=where,
    )


def _trained(v: VariantSpec, base: str) -> VariantSpec:
    """An adapter named by its training preset: the preset's candidate, trained now unless it already exists."""
    if not v.preset or v.kind != "adapter" or v.path is not None:
        return v
    from harness.training.config import load_train_config
    from trainers.sft_recipe import candidate_adapter

    cfg = load_train_config(v.preset)
    if cfg.model != base:
        raise HarnessInputError(
            Problem(
                f"variant {v.name}: preset {v.preset}",
                f"trains on {cfg.model!r}, not on the run's base {base!r}",
                "compare candidates of one base model in a run, or set the run's base to the preset's model",
            )
        )
    adapter, _ = candidate_adapter(cfg)
    return replace(v, preset=None, path=str(adapter))


def _check_policy_names(policy: GatePolicy, names: list[str]) -> None:
    """A policy loaded before the run's variants were known is checked against them now."""
    if policy.source and Path(policy.source).is_file():
        load_policy(Path(policy.source), names)
