"""Pre-flight checks for a training recipe: the mistakes that waste GPU days, caught in seconds.

Errors stop the run; warnings print. Checks that concern labels run the recipe's real collator on real
examples instead of reasoning about settings, so they cannot drift from what training does.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.suite.suite import Suite
from harness.training.config import TrainConfig
from harness.training.data import UNKNOWN_TEXT_FORMAT, DataSplit, Example, split_text, template_parts
from harness.training.hygiene import find_leakage
from harness.variants.prompts import PromptFormat, from_training_data

LR_WARN = 1e-3
TRUNCATION_WARN = 0.02
TEMPLATE_MISMATCH_WARN = 0.05  # texts off data.template: up to this share stray lines (warning), above a wrong template
SHOW_LINES = 3


@dataclass(frozen=True)
class Finding:
    level: str  # "error" | "warning" | "info"
    code: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"[{self.level}] {self.code}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


def tokenize_example(tokenizer: Any, ex: Example) -> tuple[list[int], int]:
    """Token ids of prompt+completion and where the completion starts, as the recipe tokenizes them."""
    if ex.text is not None:
        ids = tokenizer(ex.text + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        return list(ids), 0
    if isinstance(ex.prompt, str):
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(ex.prompt + ex.completion + (tokenizer.eos_token or ""), add_special_tokens=False)["input_ids"]
        return list(full), len(p)
    p = tokenizer.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(ex.prompt + ex.completion, tokenize=True, return_dict=False)
    n = 0
    while n < min(len(p), len(full)) and p[n] == full[n]:
        n += 1
    return list(full), n


def length_distribution(lengths: Sequence[int]) -> dict[str, float]:
    arr = np.asarray(lengths)
    return {
        "n": int(arr.size),
        "min": int(arr.min()),
        "p50": float(np.percentile(arr, 50)),
        "p90": float(np.percentile(arr, 90)),
        "p99": float(np.percentile(arr, 99)),
        "max": int(arr.max()),
        "mean": float(arr.mean()),
    }


def check_labels(
    tokenizer: Any, collator: Callable[[list[dict[str, Any]]], dict[str, Any]], examples: Sequence[Example]
) -> list[Finding]:
    """Collate a short and a long example together and inspect the labels the model will see."""
    if len(examples) < 2:
        return []
    tokenized = sorted((tokenize_example(tokenizer, e) for e in examples[:16]), key=lambda t: len(t[0]))
    short, long_ = tokenized[0], tokenized[-1]
    if len(short[0]) == len(long_[0]):
        return []
    feats = []
    for ids, start in (short, long_):
        feats.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
    batch = collator(feats)
    labels, mask = batch["labels"], batch.get("attention_mask")
    findings: list[Finding] = []
    row = 0  # the short example is padded
    n_real = len(short[0])
    if mask is not None:
        padded = (mask[row] == 0).nonzero().flatten().tolist()
    else:
        padded = list(range(n_real, labels.shape[1]))
    if padded and any(int(labels[row, i]) != -100 for i in padded):
        findings.append(
            Finding(
                "error",
                "labels_on_padding",
                "the loss is computed over padding tokens",
                "mask padded positions with -100 (use the recipe's collator)",
            )
        )
    eos = tokenizer.eos_token_id
    pad_set = set(padded)
    eos_positions = [i for i in range(labels.shape[1]) if i not in pad_set and int(batch["input_ids"][row, i]) == eos]
    last = (
        eos_positions[-1] if eos_positions else None
    )  # the EOS that closes the answer (templates may add a newline after it)
    if last is not None and int(labels[row, last]) == -100:
        same = tokenizer.pad_token_id == eos
        findings.append(
            Finding(
                "error",
                "eos_masked",
                "the end-of-sequence token is masked out of the labels"
                + (" because the pad token equals EOS" if same else "")
                + ": the model never learns to stop",
                "mask padding by attention mask, not by token id, or set a pad token different from EOS",
            )
        )
    return findings


def diagnose(
    cfg: TrainConfig,
    tokenizer: Any,
    data: DataSplit,
    module_names: Sequence[str],
    collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
    suite: Suite | None,
    bf16_capable: bool,
) -> tuple[list[Finding], dict[str, Any]]:
    """Every check; returns findings and the token-length distribution."""
    findings: list[Finding] = []
    t = cfg.training
    if t.learning_rate >= LR_WARN:
        findings.append(
            Finding(
                "warning",
                "lr_high",
                (
                    f"learning rate {t.learning_rate:g} is high for LoRA (>= {LR_WARN:g}); "
                    "loss spikes and format collapse are likely"
                ),
                "use 1e-4 to 5e-4, or shorten the run and watch the loss",
            )
        )
    if t.precision == "fp16" and bf16_capable:
        findings.append(
            Finding(
                "warning",
                "fp16_on_bf16_device",
                "fp16 is asked for on a device that supports bf16 (fp16 overflows and needs loss scaling)",
                "set training.precision: bf16 or auto",
            )
        )

    linear = {n for n in module_names}
    targets = [m for m in cfg.lora.target_modules if m != "all-linear"]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in linear):
            leaves = sorted({n.rsplit(".", 1)[-1] for n in linear})
            close = difflib.get_close_matches(target, leaves, n=1)
            findings.append(
                Finding(
                    "error",
                    "target_module_unmatched",
                    f"LoRA target module {target!r} matches no linear layer of {cfg.model}",
                    f"did you mean {close[0]!r}? linear layers: {', '.join(leaves)}"
                    if close
                    else f"linear layers: {', '.join(leaves)}",
                )
            )

    lengths = [len(tokenize_example(tokenizer, e)[0]) for e in data.train + data.validation]
    dist = length_distribution(lengths) if lengths else {}
    over = sum(1 for n in lengths if n > t.max_length)
    if dist:
        dist["over_max_length"] = over
    if lengths and over / len(lengths) > TRUNCATION_WARN:
        findings.append(
            Finding(
                "warning",
                "truncation",
                (
                    f"{over} of {len(lengths)} examples ({100 * over / len(lengths):.1f}%) "
                    f"exceed max_length {t.max_length} and will be cut (p99 {dist['p99']:.0f}, max {dist['max']})"
                ),
                f"raise training.max_length to at least {int(dist['p99']) + 1}",
            )
        )

    train_keys = {e.key() for e in data.train}
    overlap = [e.line for e in data.validation if e.key() in train_keys]
    if overlap:
        findings.append(
            Finding(
                "error",
                "validation_overlap",
                f"{len(overlap)} validation examples also appear in training (lines {overlap[:5]})",
                "deduplicate the data",
            )
        )

    findings += check_labels(tokenizer, collator, data.train)
    findings += prompt_format_findings(cfg, tokenizer, data, suite)
    if suite is not None:
        findings += golden_leakage(suite, data.train + data.validation)
    if not data.train:
        findings.append(
            Finding(
                "error",
                "no_training_examples",
                "the training split is empty",
                "add data or lower data.validation_fraction",
            )
        )
    return findings, dist


def golden_leakage(suite: Suite, examples: Sequence[Example]) -> list[Finding]:
    """Golden prompts found verbatim or nearly verbatim in training data make every score a lie."""
    exact, near = find_leakage(suite, examples)
    out = []
    if exact:
        pairs = [(e["line"], e["case"]) for e in exact]
        out.append(
            Finding(
                "error",
                "golden_in_training",
                f"{len(exact)} training examples contain golden case prompts of {suite.name} (line, case): {pairs[:5]}",
                "remove them from the training data",
            )
        )
    if near:
        pairs = [(e["line"], e["case"]) for e in near]
        out.append(
            Finding(
                "error",
                "golden_near_duplicate",
                (
                    f"{len(near)} training examples nearly duplicate golden cases of {suite.name} "
                    f"(line, case): {pairs[:5]}"
                ),
                "remove or rewrite them",
            )
        )
    return out


def prompt_format_findings(cfg: TrainConfig, tokenizer: Any, data: DataSplit, suite: Suite | None) -> list[Finding]:
    """Training prompts the evaluation would not reproduce: the candidate is scored in the format it learned.

    Messages data is evaluated through the same chat template it was trained with; template formats
    (instruction, text) are checked here: a format that cannot be known, texts that do not follow the
    template, and evaluation prompts that end in the middle of a training token.
    """
    d = cfg.data
    if d.format == "messages":
        return []
    if d.template is None:  # text (instruction requires a template: load_train_config)
        what = f"{UNKNOWN_TEXT_FORMAT}; the candidate's metadata records prompt_format: null"
        return [
            Finding(
                "warning",
                "eval_format_unknown",
                what,
                "set data.template to the part of each text before the answer, {instruction} standing for the "
                'user\'s message (e.g. "<s>[INST] {instruction} [/INST]" for texts like '
                '"<s>[INST] question [/INST] answer </s>")',
            )
        ]
    examples = sorted(data.train + data.validation, key=lambda e: e.line)
    findings: list[Finding] = []
    eos = tokenizer.eos_token or ""
    pairs: list[tuple[Example, str, str]] = []  # example, evaluation prompt, training text (as TRL tokenizes it)
    if d.format == "text":
        off = _off_template(examples, d.template, eos, pairs)
        if off:
            few = len(off) <= TEMPLATE_MISMATCH_WARN * len(examples)
            shown = "; ".join(off[:SHOW_LINES]) + (" ..." if len(off) > SHOW_LINES else "")
            fix = (
                "fix or drop those lines"
                if few
                else (
                    "set data.template to the text that comes before the answer in every line ({instruction} for the "
                    "user's message), or rewrite the lines that do not follow it"
                )
            )
            what = (
                f"{len(off)} of {len(examples)} texts in {d.path} do not follow data.template {d.template!r}, "
                f"so the candidate is evaluated on prompts laid out unlike them: {shown}"
            )
            findings.append(Finding("warning" if few else "error", "template_mismatch", what, fix))
    else:
        pairs = [(e, e.prompt, e.prompt + e.completion + eos) for e in examples if isinstance(e.prompt, str)]
    fmt = from_training_data(d.format, d.template, d.system_prompt, suite.system_prompt if suite is not None else None)
    findings += token_seams(tokenizer, fmt, pairs)
    if suite is not None and suite.system_prompt:
        what = (
            f"the candidate is evaluated in its training format ({fmt.describe()}), without the system prompt of "
            f"suite {suite.name}: it was trained without it (chat variants, such as the base, still get it)"
        )
        fix = "none needed; to train with the suite's instructions, use data.format: messages with data.suite set"
        findings.append(Finding("info", "eval_without_suite_system_prompt", what, fix))
    return findings


def _off_template(
    examples: Sequence[Example], template: str, eos: str, pairs: list[tuple[Example, str, str]]
) -> list[str]:
    """Why each text does not follow the template; the ones that do go to `pairs` for the token check."""
    head, tail = template_parts(template)
    off: list[str] = []
    for e in examples:
        text = e.text or ""
        parts = split_text(text, template)
        if parts is None:
            why = f"does not start with {head!r}" if not text.startswith(head) else f"has no {tail!r} after the message"
            off.append(f"line {e.line} {why}")
            continue
        pairs.append((e, text[: len(text) - len(parts[1])], text if text.endswith(eos) else text + eos))
    return off


def token_seams(tokenizer: Any, fmt: PromptFormat, pairs: Sequence[tuple[Example, str, str]]) -> list[Finding]:
    """Evaluation prompts whose tokens do not start the training tokens (TRL tokenizes strings with special tokens).

    The classic case is a template ending in a space: training reads ' {"' as one token, the evaluation
    prompt ends in a lone ' ' the model never saw there, and its first answer token changes.
    """
    seams: list[str] = []
    for e, prompt, full in pairs:
        p_ids = fmt.encode(tokenizer, prompt)
        f_ids = [int(t) for t in tokenizer(full, add_special_tokens=True)["input_ids"]]
        if f_ids[: len(p_ids)] == p_ids:
            continue
        if seams:
            seams.append(f"line {e.line}")
            continue
        k = next((i for i, (a, b) in enumerate(zip(p_ids, f_ids)) if a != b), min(len(p_ids), len(f_ids)))
        ends, reads = tokenizer.decode(p_ids[k:]), tokenizer.decode(f_ids[k : k + 1])
        seams.append(f"line {e.line}: the prompt ends in {ends!r} where training reads {reads!r}")
    if not seams:
        return []
    shown = ", ".join(seams[:SHOW_LINES]) + (", ..." if len(seams) > SHOW_LINES else "")
    what = (
        f"{len(seams)} of {len(pairs)} evaluation prompts end inside a token of their training text, so the "
        f"candidate continues from a token split it never saw in training ({shown})"
    )
    fix = "end data.template where a token ends: usually drop its trailing space, the answer's first token carries it"
    return [Finding("warning", "prompt_token_boundary", what, fix)]
