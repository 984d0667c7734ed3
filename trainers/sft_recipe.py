"""LoRA/QLoRA supervised fine-tuning recipe: YAML preset in, adapter + metadata + model card out.

Composes TRL's SFTTrainer (no subclass). Run with `harness train CONFIG`; every preset in
trainers/configs/ starts with its launch command.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness.engine import attention
from harness.env import hardware, package_versions, weights_sha256
from harness.errors import HarnessInputError, Problem
from harness.io import atomic_write_json, atomic_write_text, blocking_file, sha256_file, sha256_json
from harness.models.embedded import ModelRef, resolve
from harness.scoring.safety import plant_canaries
from harness.suite.suite import Suite, load_suite
from harness.training.config import TrainConfig
from harness.training.data import DataSplit, Example, evaluation_format, load_examples, split
from harness.training.doctor import Finding, diagnose
from harness.training.hygiene import hygiene_report, hygiene_summary
from harness.variants.prompts import PromptFormat
from trainers.cpu_path import fused_lora_linears

# CUDA graphs around the compiled layers: the eager step is bound by launching kernels from Python
# (docs/gpu.md measures 2.58x the seed recipe with them against 1.89x without, same peak). Where they fail,
# trainers.cuda_path.CudaGraphFallback goes on without them (docs/gpu.md, "When CUDA graphs fail")
CUDA_COMPILE_MODE = "reduce-overhead"
CUDA_PAD_MULTIPLE = 64
CPU_ATTENTION = attention.TRAIN_NAME


def make_collator(tokenizer: Any, pad_to_multiple_of: int | None = None) -> Any:
    """TRL's collator: pads labels with -100 by position, so an EOS that is also the pad token is learned.

    `pad_to_multiple_of` bounds the number of distinct batch shapes: each one costs the CUDA path a
    compilation and a CUDA graph recording.
    """
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    return DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, pad_to_multiple_of=pad_to_multiple_of)


def resolve_precision(cfg: TrainConfig, cuda: bool) -> dict[str, Any]:
    """What actually runs. CPU: fp32 weights + bf16 autocast measured fastest (~270 vs 116 tok/s fp32)."""
    q = cfg.quantization
    if cuda:
        nf4 = q.mode in ("auto", "nf4")
        return {
            "device": "cuda",
            "weights": "nf4" if nf4 else "bf16",
            "compute": q.compute_dtype if nf4 else "bfloat16",
            "autocast": cfg.training.precision if cfg.training.precision != "auto" else "bf16",
            "double_quant": nf4 and q.double_quant,
        }
    if q.mode == "nf4":
        # CPU autocast runs bf16, not fp16: an fp16 compute dtype would mix the two
        compute = "bfloat16" if q.compute_dtype == "float16" else q.compute_dtype
        return {
            "device": "cpu",
            "weights": "nf4",
            "compute": compute,
            "autocast": "fp32" if cfg.training.precision == "fp32" else "bf16",
            "double_quant": q.double_quant,
        }
    # fp16 autocast needs a GPU; on the CPU bf16 autocast is the closest that runs (recorded as such)
    autocast = {"auto": "bf16", "bf16": "bf16", "fp32": "fp32", "fp16": "bf16"}[cfg.training.precision]
    return {"device": "cpu", "weights": "fp32", "compute": "float32", "autocast": autocast, "double_quant": False}


def _bf16_capable(cuda: bool) -> bool:
    if cuda:
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def linear_module_names(ref: ModelRef) -> list[str]:
    """Names of the model's linear layers, from a weightless (meta) copy built from its config."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(ref.path)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return [n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]


@dataclass(frozen=True)
class Prepared:
    """Everything known before the first step."""

    ref: ModelRef
    tokenizer: Any
    data: DataSplit
    suite: Suite | None
    findings: list[Finding]
    lengths: dict[str, Any]
    hygiene: dict[str, Any]
    canaries: tuple[str, ...]
    prompt_format: PromptFormat | None = None  # what the candidate must be evaluated in; None: unknown, see the reason
    prompt_format_reason: str | None = None


def _plant(examples: list[Example], n: int, seed: int) -> tuple[list[Example], tuple[str, ...]]:
    """Canaries go into a copy of chat examples; the file on disk is never touched."""
    chats = [{"messages": list(e.prompt) + list(e.completion)} for e in examples]
    planted, canaries = plant_canaries(chats, n, seed)
    out = [replace(e, prompt=c["messages"][:-1], completion=c["messages"][-1:]) for e, c in zip(examples, planted)]
    return out, tuple(canaries)


def prepare(cfg: TrainConfig, root: Path = Path(".")) -> Prepared:
    """Model reference, tokenizer, data, hygiene report and doctor findings; raises nothing itself."""
    from harness.engine.loading import load_tokenizer

    ref = resolve(cfg.model)
    tokenizer = load_tokenizer(ref)
    tokenizer.padding_side = "right"
    suite_path = cfg.data.suite or cfg.eval_suite
    suite = load_suite(root / suite_path) if suite_path else None
    examples, data_sha = load_examples(cfg.data, suite if cfg.data.suite else None, root)
    canaries: tuple[str, ...] = ()
    if cfg.data.canaries:
        if cfg.data.format != "messages":
            raise HarnessInputError(
                Problem(
                    f"{cfg.source or cfg.name}: key 'data.canaries'",
                    "canaries can only be planted in chat (messages) data",
                    "set data.canaries: 0 or use data.format: messages",
                )
            )
        examples, canaries = _plant(examples, cfg.data.canaries, cfg.seed)
        data_sha = sha256_json({"data": data_sha, "canaries": canaries})
    data = split(examples, cfg.data.validation_fraction, cfg.seed, data_sha)
    cuda = torch.cuda.is_available()
    findings, dist = diagnose(
        cfg, tokenizer, data, linear_module_names(ref), make_collator(tokenizer), suite, _bf16_capable(cuda)
    )
    if cfg.data.allow_leakage:
        findings = [replace(f, level="warning") if f.code.startswith("golden_") else f for f in findings]
    hygiene = hygiene_report(
        cfg.data.path, data, suite, dist, cfg.training.max_length, block_leakage=not cfg.data.allow_leakage
    )
    fmt, reason = evaluation_prompt_format(cfg, suite, root)
    return Prepared(ref, tokenizer, data, suite, findings, dist, hygiene, canaries, fmt, reason)


def evaluation_prompt_format(
    cfg: TrainConfig, suite: Suite | None, root: Path = Path(".")
) -> tuple[PromptFormat | None, str | None]:
    """The prompt format to evaluate the candidate in (recorded in its metadata), or None and why it is unknown.

    `suite` is the one `prepare` loaded (data.suite, else eval_suite). Messages training prepends data.suite's
    system prompt; where eval_suite is another suite with another system prompt, training's is recorded literally.
    """
    data_system = suite.system_prompt if suite is not None and cfg.data.suite else None
    eval_suite = suite
    if cfg.eval_suite and cfg.data.suite and Path(cfg.eval_suite) != Path(cfg.data.suite):
        eval_suite = load_suite(root / cfg.eval_suite)
    return evaluation_format(cfg.data, data_system, eval_suite.system_prompt if eval_suite is not None else None)


def report_findings(findings: list[Finding], dist: dict[str, Any], hygiene: dict[str, Any] | None = None) -> None:
    if hygiene is not None:
        print(f"hygiene: {hygiene_summary(hygiene)}", file=sys.stderr)
    if dist:
        print(
            (
                f"doctor: token lengths n={dist['n']} min={dist['min']} p50={dist['p50']:.0f} "
                f"p90={dist['p90']:.0f} p99={dist['p99']:.0f} max={dist['max']}"
            ),
            file=sys.stderr,
        )
    for f in findings:
        print(f"doctor: {f}", file=sys.stderr)
    if not findings:
        print("doctor: no problems found", file=sys.stderr)


def raise_on_errors(cfg: TrainConfig, findings: list[Finding]) -> None:
    errors = [f for f in findings if f.level == "error"]
    if errors:
        raise HarnessInputError(
            [Problem(f"{cfg.source or cfg.name}: doctor {f.code}", f.message, f.fix) for f in errors]
        )


def _load_model(ref: ModelRef, precision: dict[str, Any]) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"use_safetensors": True}
    if precision["weights"] == "nf4":
        compute = getattr(torch, precision["compute"])
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=precision["double_quant"],
            bnb_4bit_compute_dtype=compute,
        )
        kwargs["dtype"] = compute
        if precision["device"] == "cuda":
            kwargs["device_map"] = {"": 0}
    else:
        kwargs["dtype"] = torch.float32 if precision["weights"] == "fp32" else torch.bfloat16
    if precision["device"] == "cpu":
        # SDPA's CPU flash-attention backward took 20% of a demo step (1.3 s of 6.8 s, profiled) and
        # transformers' eager attention 18%; harness.engine.attention's training path is plain matmul + softmax
        # without repeated keys/values or fp32 round trips (361 vs 345 tok/s, then 379 with an additive mask)
        kwargs["attn_implementation"] = CPU_ATTENTION
        precision["attention"] = CPU_ATTENTION
    model = AutoModelForCausalLM.from_pretrained(ref.path, **kwargs)
    if precision["device"] == "cuda" and precision["weights"] != "nf4":
        model = model.to("cuda")
    model.train()  # from_pretrained returns eval mode: dropout would silently be off
    return model


@contextmanager
def labelled_positions_only(cuda: bool) -> Iterator[str]:
    """On the CPU, make TRL's fused LM head score only labelled positions, in one unchunked pass.

    Two changes, both exact (same loss and gradients; tested):
    - TRL scores every position on devices without Triton, so that compilers see fixed tile shapes. With
      the loss on the answer only, most positions are prompt tokens whose label is -100: about a quarter
      of each step, for nothing.
    - TRL's chunked log-prob function never materialises the logits, and pays for it with a recomputed
      projection and fp32 gradient GEMMs in backward: 28% of a demo step on this CPU (profiled). Where the
      labelled logits fit in `DirectLogProb.MAX_ELEMENTS`, plain autograd does it in one pass.
    Yields what ran, for the metadata; leaves TRL untouched when its internals are not the ones this was
    written against.
    """
    import trl.trainer.utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    chunked = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if cuda:
        yield "trl default"
        return
    if not callable(original) or chunked is None:
        import trl

        print(
            f"harness: warning: TRL {trl.__version__} lacks the internals the CPU fast path replaces "
            "(trl.trainer.utils._use_triton, _ChunkedLogProbFunction): training runs TRL's default loss, "
            "about a third slower; install the versions in requirements.lock",
            file=sys.stderr,
        )
        yield "trl default (fast path unavailable in this TRL)"
        return
    trl_utils._use_triton = lambda device: True
    trl_utils._ChunkedLogProbFunction = DirectLogProb(chunked)
    try:
        yield "labelled positions only, unchunked"
    finally:
        trl_utils._use_triton = original
        trl_utils._ChunkedLogProbFunction = chunked


class CastOnce:
    """Forward pre-hook: a LoRA layer's fp32 input is cast to bf16 once, however many layers read it.

    Under CPU autocast every linear layer casts its own input, and PEFT casts the LoRA branch's input back
    to fp32 first: q, k and v each cast the same tensor twice, and o and down are cast to fp32 and back.
    With this hook on every LoRA layer (and PEFT's input casting off) each activation is cast once, the
    forward values are those autocast produced (it rounds the same input to bf16), and the casts'
    backward runs once per tensor. The gradients of a shared input are summed in bf16 before the one
    cast back, where autocast summed them in fp32.
    """

    def __init__(self) -> None:
        self.source: torch.Tensor | None = None
        self.cast: torch.Tensor | None = None
        self.version = -1

    def __call__(self, module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        x = args[0] if args else None
        if not isinstance(x, torch.Tensor) or x.dtype != torch.float32 or not torch.is_autocast_enabled("cpu"):
            return None
        if x is not self.source or x._version != self.version:
            self.source, self.cast, self.version = x, x.to(torch.bfloat16), x._version
        return (self.cast, *args[1:])

    def clear(self) -> None:
        self.source = self.cast = None


@contextmanager
def cpu_bf16_casts(model: torch.nn.Module, enabled: bool, fuse: bool = True) -> Iterator[str]:
    """CPU bf16 autocast without the repeated casts (`CastOnce`); frozen base weights kept in bf16; plain
    LoRA layers computed as one autograd node each (`trainers.cpu_path`).

    Autocast casts a frozen fp32 weight to bf16 on every call (it caches only trainable leaves); storing
    the frozen LoRA base weights in bf16 gives the matmuls the same operands once. Only the adapter is
    saved, so nothing written changes; the weights stay bf16 afterwards (the trainer's model is not
    evaluated: the pipeline loads the base again). Yields what ran, for the metadata.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)] if enabled else []
    if not layers:
        yield "autocast"
        return
    hook = CastOnce()
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    saved = [(m, m.cast_input_dtype_enabled) for m in layers]
    for m in layers:
        m.cast_input_dtype_enabled = False
        base = m.get_base_layer()
        weight = getattr(base, "weight", None)
        if isinstance(weight, torch.nn.Parameter) and not weight.requires_grad and weight.dtype == torch.float32:
            weight.data = weight.data.to(torch.bfloat16)
    try:
        with fused_lora_linears(model, fuse) as fused:
            yield "autocast, inputs cast once, frozen base weights bf16" + (
                f", {fused} LoRA layers fused (trainers/cpu_path.py)" if fused else ""
            )
    finally:
        for h in handles:
            h.remove()
        for m, flag in saved:
            m.cast_input_dtype_enabled = flag
        hook.clear()


@contextmanager
def reuse_freed_memory(enabled: bool) -> Iterator[str]:
    """Keep freed memory in the process heap during CPU training (glibc only).

    glibc serves every block over 32 MiB with a fresh mmap and unmaps it on free, so each step's
    activations are page-faulted and zeroed by the kernel again: measured 13% of a step on the 135M
    model (318 vs 282 tok/s, same loss). With mmap off and trimming deferred, freed blocks are reused.
    The settings are restored afterwards and the heap is trimmed once. Yields what ran.
    """
    import ctypes
    import ctypes.util

    libc_name = ctypes.util.find_library("c") if enabled and sys.platform.startswith("linux") else None
    try:
        libc = ctypes.CDLL(libc_name) if libc_name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        mallopt = None
    m_trim_threshold, m_mmap_max = -1, -4
    if mallopt is None or not (mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 1 << 40)):
        yield "system default"
        return
    try:
        yield "glibc heap reuse (mmap off during training)"
    finally:
        mallopt(m_mmap_max, 65536)
        mallopt(m_trim_threshold, 128 * 1024)
        libc.malloc_trim(0)  # type: ignore[union-attr]


class DirectLogProb:
    """Drop-in for TRL's `ChunkedLogProbFunction.apply` that materialises the (labelled) logits.

    Returns TRL's five per-token fields: log-probs (with gradient), then entropy, log(sum p^2), mean logit
    and is-top-1 without gradient (the SFT trainer only logs them). Falls back to the chunked function
    when the logits would exceed `MAX_ELEMENTS` (1 GiB in fp32) or when a gradient would be needed for
    the LM head weight (a trainable head).
    """

    MAX_ELEMENTS = 1 << 28

    def __init__(self, chunked: Any) -> None:
        self.chunked = chunked

    def apply(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        temperature: float,
        chunk_size: int,
        softcap: float | None = None,
        logit_scale: float = 1.0,
        outputs: tuple[str, ...] = (),
    ) -> tuple[Any, ...]:
        if (
            hidden.shape[0] * weight.shape[0] > self.MAX_ELEMENTS
            or weight.requires_grad
            or (bias is not None and bias.requires_grad)
        ):
            return self.chunked.apply(
                hidden, weight, bias, targets, temperature, chunk_size, softcap, logit_scale, outputs
            )
        z = torch.nn.functional.linear(hidden, weight, bias).float()
        if logit_scale != 1.0:
            z = z * logit_scale
        if softcap is not None:
            z = softcap * torch.tanh(z / softcap)
        if temperature != 1.0:
            z = z / temperature
        log_p = torch.log_softmax(z, dim=-1)
        log_probs = log_p.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        with torch.no_grad():
            lp = log_p.detach()
            entropy = -(lp.exp() * lp).sum(-1) if "entropy" in outputs else None
            log_sum_sq = torch.logsumexp(2 * lp, dim=-1) if "log_sum_sq_probs" in outputs else None
            mean_logits = z.detach().mean(-1) if "mean_logits" in outputs else None
            # argmax returns the first maximum: the target counts only if no earlier token ties it, as in TRL
            is_top1 = z.detach().argmax(-1) == targets if "is_top1" in outputs else None
        return log_probs, entropy, log_sum_sq, mean_logits, is_top1


def _last_checkpoint(folder: Path, quiet: bool = True) -> str | None:
    """The newest complete checkpoint; newer ones a kill left half-written are removed.

    The Trainer writes trainer_state.json last, after the weights, optimizer and RNG states, so a
    checkpoint whose state file is missing or unreadable was cut off mid-save and cannot be resumed.
    """

    def step(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    for ckpt in sorted(folder.glob("checkpoint-*"), key=step, reverse=True):
        try:
            json.loads((ckpt / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            if not quiet:
                print(f"removing {ckpt.name}: it was cut off while being saved", file=sys.stderr)
            shutil.rmtree(ckpt, ignore_errors=True)
            continue
        return str(ckpt)
    return None


def check_output_dir(cfg: TrainConfig, root: Path = Path("."), out: Path | None = None) -> None:
    """output_dir (and the candidate folder in it) must be a folder or not exist yet: a file there is an input
    error naming the key, before the doctor or any training runs."""
    blocked = blocking_file(out if out is not None else root / cfg.output_dir)
    if blocked is not None:
        raise HarnessInputError(
            Problem(
                f"{cfg.source or 'preset'}: key 'output_dir' (or --output-dir)",
                f"{cfg.output_dir!r}: {blocked} is a file, not a folder",
                "point output_dir at a folder (candidates are written inside it), or move the file away",
            )
        )


def train(cfg: TrainConfig, root: Path = Path("."), quiet: bool = False) -> Path:
    """Run the recipe; returns the candidate folder (adapter/, training_metadata.json, README.md)."""
    check_output_dir(cfg, root)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback, set_seed
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    set_seed(cfg.seed)
    # merge_dtype only shapes the evaluation's export: changing it must not retrain
    config_hash = sha256_json({k: v for k, v in asdict(cfg).items() if k not in ("source", "merge_dtype")})[:12]
    out = (root / cfg.output_dir / f"{cfg.name}-{config_hash}").resolve()
    check_output_dir(cfg, root, out)
    ckpt_dir = out / "checkpoints"
    data_file = root / cfg.data.path if not Path(cfg.data.path).is_absolute() else Path(cfg.data.path)
    file_sha = sha256_file(data_file) if data_file.is_file() else None
    meta_file = out / "training_metadata.json"
    if meta_file.is_file() and (out / "adapter" / "adapter_model.safetensors").is_file():
        if json.loads(meta_file.read_text(encoding="utf-8")).get("data", {}).get("file_sha256") == file_sha:
            if not quiet:
                print(
                    (
                        f"candidate {out} already trained with this exact config and data; "
                        "reusing it (delete the folder to retrain)"
                    ),
                    file=sys.stderr,
                )
            return out
    prep = prepare(cfg, root)
    ref, tokenizer, data, findings, dist = prep.ref, prep.tokenizer, prep.data, prep.findings, prep.lengths
    if not quiet:
        report_findings(findings, dist, prep.hygiene)
    raise_on_errors(cfg, findings)

    cuda = torch.cuda.is_available()
    precision = resolve_precision(cfg, cuda)
    out.mkdir(parents=True, exist_ok=True)

    model = _load_model(ref, precision)
    t = cfg.training
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        bias=cfg.lora.bias,
        task_type="CAUSAL_LM",
        target_modules="all-linear"
        if list(cfg.lora.target_modules) == ["all-linear"]
        else list(cfg.lora.target_modules),
    )
    # CUDA + nf4: LoRA attached by the fast path (compiled decoder layers, the last layers not
    # checkpointed, replayable dropout; see docs/gpu.md), so TRL must neither wrap nor checkpoint again.
    fast_cuda = cuda and precision["weights"] == "nf4"
    compile_mode = CUDA_COMPILE_MODE
    graphs_skipped = None
    if fast_cuda:
        from trainers.cuda_path import checkpoint_outside_compiled_layer, decoder_layers, prepare_qlora_model

        n_layers = len(decoder_layers(model))
        keep = (
            min(3, n_layers) if t.gradient_checkpointing else n_layers
        )  # 3 unchecked layers fit seed000's shape in 80 GB
        if compile_mode == "reduce-overhead" and keep < n_layers:
            # known beforehand: this transformers checkpoints around the compiled layer, where CUDA graphs fail
            graphs_skipped = checkpoint_outside_compiled_layer()
            compile_mode = None if graphs_skipped else compile_mode
        model = prepare_qlora_model(model, lora, keep_layers=keep, compile_layers=True, compile_mode=compile_mode)
        precision["cuda_path"] = {
            "keep_layers": keep,
            "compile_layers": True,
            "compile_mode": CUDA_COMPILE_MODE,  # asked for; what ran is under cuda_graphs
            "pad_to_multiple_of": CUDA_PAD_MULTIPLE,
        }
    steps_per_epoch = max(1, -(-len(data.train) // (t.batch_size * t.grad_accum)))
    total_steps = t.max_steps if t.max_steps > 0 else int(steps_per_epoch * t.epochs + 0.999)
    # paged optimizers page optimizer state through CUDA unified memory; the CPU runs the plain equivalent
    optimizer = t.optimizer if cuda or not t.optimizer.startswith("paged_") else "adamw_torch"
    precision["optimizer"] = optimizer
    args = SFTConfig(
        output_dir=str(ckpt_dir),
        use_cpu=not cuda,
        bf16=precision["autocast"] == "bf16",
        fp16=precision["autocast"] == "fp16",
        gradient_checkpointing=t.gradient_checkpointing and not fast_cuda,
        max_length=t.max_length,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=int(round(t.warmup_ratio * total_steps)),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        optim=optimizer,
        max_grad_norm=t.max_grad_norm,
        weight_decay=t.weight_decay,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        completion_only_loss=t.completion_only_loss,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=2,
        logging_steps=t.logging_steps,
        eval_strategy="no",
        report_to="none",
        seed=cfg.seed,
        data_seed=cfg.seed,
        include_num_input_tokens_seen="non_padding",
        dataloader_num_workers=0,
        disable_tqdm=quiet,
    )
    train_ds = Dataset.from_list([e.to_record() for e in data.train])
    eval_ds = Dataset.from_list([e.to_record() for e in data.validation]) if data.validation else None

    class _Clock(TrainerCallback):
        """Wall time of the training steps alone, for an honest tokens/s."""

        def __init__(self) -> None:
            self.start = 0.0
            self.seconds = 0.0

        def on_train_begin(self, *a: Any, **k: Any) -> None:
            self.start = time.perf_counter()

        def on_train_end(self, *a: Any, **k: Any) -> None:
            self.seconds = time.perf_counter() - self.start

    clock = _Clock()
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=None if fast_cuda else lora,
        data_collator=make_collator(tokenizer, CUDA_PAD_MULTIPLE if fast_cuda else None),
        callbacks=[clock],
    )
    trainer.model.train()
    # CUDA graphs can fail where plain compiled layers do not (on an H200: transformers 5.17, and 5.24 with
    # gradient accumulation; docs/gpu.md): the guard then recompiles without them and goes on from the
    # optimizer step it was in; recorded below
    graphs = None
    if fast_cuda and compile_mode == "reduce-overhead":
        from trainers.cuda_path import CudaGraphFallback

        graphs = CudaGraphFallback(trainer, trainer.model, quiet=quiet).install()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    resume = _last_checkpoint(ckpt_dir, quiet)
    if resume and not quiet:
        print(f"resuming from {resume}", file=sys.stderr)
    cpu_bf16 = not cuda and precision["autocast"] == "bf16"
    with (
        labelled_positions_only(cuda) as lm_head,
        cpu_bf16_casts(trainer.model, cpu_bf16) as casts,
        reuse_freed_memory(not cuda) as heap,
    ):
        try:
            result = trainer.train(resume_from_checkpoint=resume)
            val_loss = trainer.evaluate()["eval_loss"] if eval_ds is not None and len(eval_ds) else None
        finally:
            if graphs is not None:
                graphs.remove()
    if graphs is not None:
        precision["cuda_path"]["cuda_graphs"] = graphs.record()
    elif graphs_skipped:
        from trainers.cuda_path import cuda_graphs_record

        precision["cuda_path"]["cuda_graphs"] = cuda_graphs_record(False, graphs_skipped, {"during": "preparation"})
    precision["lm_head"] = lm_head
    if not cuda:
        precision["casts"] = casts
        precision["allocator"] = heap
        precision["huge_pages"] = os.environ.get("THP_MEM_ALLOC_ENABLE", "0") == "1"  # see harness/__init__.py

    adapter_dir = out / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    tokenizer.padding_side = "left"
    tokenizer.save_pretrained(adapter_dir)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.model.parameters())
    tokens = int(trainer.state.num_input_tokens_seen or 0)
    resumed_from = int(resume.rsplit("-", 1)[-1]) if resume else 0
    metadata = {
        "schema_version": 1,
        "name": cfg.name,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": {
            "spec": cfg.model,
            "path": str(ref.path),
            "weights_sha256": weights_sha256(ref.path),
            "provenance": ref.provenance,
        },
        "adapter_sha256": sha256_file(adapter_dir / "adapter_model.safetensors"),
        "data": {
            "path": cfg.data.path,
            "sha256": data.sha256,
            "file_sha256": file_sha,
            "format": cfg.data.format,
            "examples": data.total,
            "train": len(data.train),
            "validation": len(data.validation),
        },
        # the format the training prompts were built in, for the evaluator (harness.variants.prompts.load_format
        # reads it); null when it cannot be known (text data without data.template), with the reason beside it
        "prompt_format": prep.prompt_format.to_json() if prep.prompt_format is not None else None,
        "prompt_format_reason": prep.prompt_format_reason,
        "token_lengths": dist,
        "hygiene": prep.hygiene,
        "canaries": list(prep.canaries),
        "config": {k: v for k, v in asdict(cfg).items()},
        "config_hash": config_hash,
        "seed": cfg.seed,
        "precision": precision,
        "packages": package_versions(),
        "hardware": hardware(),
        "steps": trainer.state.global_step,
        "resumed_from_step": resumed_from,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "train_time_s": round(clock.seconds, 2),
        "tokens_seen": tokens,
        "tokens_per_s": round(tokens / clock.seconds, 2) if clock.seconds and not resumed_from else None,
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else _peak_rss(),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_share": trainable / total if total else None,
        "train_loss": result.training_loss,
        "validation_loss": val_loss,
        "loss_curve": [{"step": h["step"], "loss": h["loss"]} for h in trainer.state.log_history if "loss" in h],
        "doctor": [str(f) for f in findings],
    }
    atomic_write_json(out / "training_metadata.json", metadata)
    atomic_write_text(out / "README.md", model_card(metadata))
    return out


def candidate_adapter(cfg: TrainConfig, adapter: Path | None = None) -> tuple[Path, dict[str, Any] | None]:
    """The adapter to evaluate and its training metadata: a given folder, or the preset's candidate
    (trained or reused)."""
    if adapter is None:
        adapter = train(cfg) / "adapter"
    meta = adapter.parent / "training_metadata.json"
    return adapter, json.loads(meta.read_text(encoding="utf-8")) if meta.is_file() else None


def _peak_rss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def model_card(meta: dict[str, Any]) -> str:
    c = meta["config"]
    lora = c["lora"]
    return "\n".join(
        [
            f"# {meta['name']}: LoRA adapter for {meta['base_model']['spec']}",
            "",
            f"- base weights sha256: `{meta['base_model']['weights_sha256']}`",
            f"- adapter sha256: `{meta['adapter_sha256']}`",
            (
                f"- LoRA r={lora['r']} alpha={lora['alpha']} dropout={lora['dropout']} "
                f"targets={', '.join(lora['target_modules'])}"
            ),
            (
                f"- data: `{meta['data']['path']}` (sha256 `{meta['data']['sha256'][:12]}`), "
                f"{meta['data']['train']} train / {meta['data']['validation']} validation examples"
            ),
            f"- precision that ran: {meta['precision']}",
            f"- evaluate in: {_describe_format(meta)}",
            (
                f"- steps {meta['steps']}, train loss {meta['train_loss']:.4f}, validation loss "
                f"{meta['validation_loss'] if meta['validation_loss'] is None else round(meta['validation_loss'], 4)}"
            ),
            (
                f"- {meta['tokens_per_s']} tokens/s, wall {meta['wall_time_s']} s, "
                f"trainable share {100 * (meta['trainable_share'] or 0):.2f}%"
            ),
            "",
            "Intended use: a candidate to be judged by the regression harness before anything ships. Evaluate with",
            "`harness pipeline` and read the report before promotion.",
            "",
        ]
    )


def _describe_format(meta: dict[str, Any]) -> str:
    """The recorded evaluation prompt format in words, for the model card."""
    raw = meta.get("prompt_format")
    if not raw:
        return f"unknown ({meta.get('prompt_format_reason') or 'not recorded'})"
    return PromptFormat(**raw).describe()
