"""Training recipe configuration: frozen dataclasses loaded strictly from a preset YAML."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, get_args

from harness.config import build, read_yaml
from harness.errors import HarnessInputError, Problem

MergeDtype = Literal["auto", "bfloat16", "float16", "float32"]  # the merged export; auto: the base checkpoint's dtype
MERGE_DTYPES: tuple[str, ...] = get_args(MergeDtype)


@dataclass(frozen=True)
class DataConfig:
    """Where the examples come from and how they become prompt/completion pairs."""

    path: str
    format: Literal["messages", "instruction", "text"] = "messages"
    validation_fraction: float = 0.1
    suite: str | None = None  # golden suite: system prompt, contract for assistant JSON, leakage check
    system_prompt: str | None = None  # overrides the suite's system prompt
    # instruction: the prompt, {instruction} standing for the user's message; the response follows it.
    # text: the part of each text before the answer, {instruction} standing for the user's message; optional,
    # but without it the prompt format the candidate must be evaluated in is unknown (the doctor warns)
    template: str | None = None
    max_examples: int | None = None
    canaries: int = (
        0  # plant this many unique canary strings in a copy of the data: a memorisation test (messages format)
    )
    allow_leakage: bool = False  # golden cases in the training data block the run unless this is true


@dataclass(frozen=True)
class LoraConfigSpec:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("all-linear",)
    bias: Literal["none", "all", "lora_only"] = "none"


@dataclass(frozen=True)
class QuantConfig:
    """auto: nf4 QLoRA on CUDA; on CPU the fastest measured path (fp32 weights with bf16 autocast)."""

    mode: Literal["auto", "nf4", "none"] = "auto"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


@dataclass(frozen=True)
class TrainingConfig:
    learning_rate: float = 2e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.0
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    grad_accum: int = 1
    max_length: int = 512
    optimizer: str = "adamw_torch"
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    gradient_checkpointing: bool = False
    group_by_length: bool = False
    completion_only_loss: bool = True
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    save_steps: int = 20
    logging_steps: int = 1


@dataclass(frozen=True)
class TrainConfig:
    name: str
    model: str
    data: DataConfig
    seed: int = 42
    output_dir: str = "runs/candidates"
    lora: LoraConfigSpec = field(default_factory=LoraConfigSpec)
    quantization: QuantConfig = field(default_factory=QuantConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_suite: str | None = None
    merge_dtype: MergeDtype = "auto"
    source: str = ""  # the YAML file it came from

    def with_overrides(
        self, model: str | None = None, output_dir: str | None = None, max_steps: int | None = None
    ) -> TrainConfig:
        cfg = self
        if model:
            cfg = replace(cfg, model=model)
        if output_dir:
            cfg = replace(cfg, output_dir=output_dir)
        if max_steps is not None:
            cfg = replace(cfg, training=replace(cfg.training, max_steps=max_steps))
        return cfg


TEMPLATE_EXAMPLES = {
    "instruction": 'e.g. template: "### Instruction:\\n{instruction}\\n### Response:\\n"',
    "text": 'e.g. template: "<s>[INST] {instruction} [/INST]" for texts like "<s>[INST] question [/INST] answer </s>"',
}
RESERVED_PLACEHOLDERS = ("{prompt}", "{system}")  # harness.prompts fills them in at evaluation; training would not


def template_problems(data: DataConfig) -> list[tuple[str, str]]:
    """(what, fix) for a data.template that training and evaluation could not both read the same way."""
    template = data.template
    if data.format == "messages":
        if template is not None:
            return [
                (
                    "is not read for the messages format: the tokenizer's chat template builds its prompts",
                    "remove data.template, or set data.format: instruction for prompts built from a template",
                )
            ]
        return []
    example = TEMPLATE_EXAMPLES[data.format]
    if template is None:
        if data.format == "instruction":
            return [
                (
                    "missing: the instruction format builds every prompt from it",
                    f"add one containing {{instruction}} once, {example}",
                )
            ]
        return []  # text: optional, the doctor warns that the evaluation format is then unknown
    out: list[tuple[str, str]] = []
    n = template.count("{instruction}")
    if n != 1:
        where = "the prompt" if data.format == "instruction" else "the part of each text before the answer"
        out.append(
            (
                f"contains {{instruction}} {n} times; it must mark the user's message exactly once",
                f"write {where} with one {{instruction}}, {example}",
            )
        )
    elif data.format == "text" and not template.split("{instruction}", 1)[1]:
        out.append(
            (
                "ends with {instruction}: nothing marks where the user's message ends and the answer starts",
                f"end it with the text that comes between message and answer in every line, {example}",
            )
        )
    for name in RESERVED_PLACEHOLDERS:
        if name in template:
            out.append(
                (
                    f"contains {name}: training keeps it as literal text, the evaluation format would fill it in",
                    "remove it (write the text itself); {instruction} is the only placeholder training fills in",
                )
            )
    return out


def load_train_config(path: str | Path) -> TrainConfig:
    """Load a preset; every unknown key, missing key and bad value is reported together."""
    p = Path(path)
    raw = read_yaml(p)
    raw.pop("source", None)
    problems: list[Problem] = []
    cfg = build(TrainConfig, raw, "", problems)
    problems = [Problem(f"{p}: key '{pr.where}'", pr.what, pr.fix) for pr in problems]
    if cfg is not None:
        t = cfg.training
        checks = [
            (cfg.lora.r >= 1, "lora.r", "must be at least 1"),
            (cfg.lora.alpha >= 1, "lora.alpha", "must be at least 1"),
            (0.0 <= cfg.lora.dropout < 1.0, "lora.dropout", "must be in [0, 1)"),
            (bool(cfg.lora.target_modules), "lora.target_modules", "must name at least one module or 'all-linear'"),
            (0.0 <= cfg.data.validation_fraction < 0.9, "data.validation_fraction", "must be in [0, 0.9)"),
            (t.learning_rate > 0, "training.learning_rate", "must be positive"),
            (
                t.batch_size >= 1 and t.grad_accum >= 1,
                "training.batch_size",
                "batch_size and grad_accum must be at least 1",
            ),
            (t.max_length >= 16, "training.max_length", "must be at least 16"),
            (t.epochs > 0 or t.max_steps > 0, "training.epochs", "set epochs > 0 or max_steps > 0"),
        ]
        problems += [Problem(f"{p}: key '{key}'", what, "fix the value") for ok, key, what in checks if not ok]
        problems += [Problem(f"{p}: key 'data.template'", what, fix) for what, fix in template_problems(cfg.data)]
    if problems or cfg is None:
        raise HarnessInputError(
            problems or [Problem(str(p), "could not be loaded", "see the presets in trainers/configs/")]
        )
    return replace(cfg, source=str(p))
