"""What the GPU benchmarks share: the seed000 model shape, nf4 quantization in place, the seed recipe, a timed loop.

The Hub is out of reach on the benchmark machines, so models are built from a config with random
weights: throughput and memory depend on the shapes, not on the values.
"""

from __future__ import annotations

import gc
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

GIB = 1024**3
# Mistral-7B-v0.3's published shape (seed000's base model)
MISTRAL_7B: dict[str, Any] = {
    "vocab_size": 32768,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
TINY: dict[str, Any] = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "sliding_window": None,
    "tie_word_embeddings": False,
}
SEED000_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def mistral_config(shape: str = "7b", layers: int | None = None) -> Any:
    """The seed000 shape ("7b") or a tiny one for CPU checks of the scripts themselves."""
    from transformers import MistralConfig

    kw = dict(MISTRAL_7B if shape == "7b" else TINY)
    if layers is not None:
        kw["num_hidden_layers"] = layers
    return MistralConfig(**kw)


def quantize_nf4_(
    model: nn.Module, compute_dtype: torch.dtype = torch.bfloat16, double_quant: bool = True
) -> nn.Module:
    """Swap every decoder Linear for a bitsandbytes nf4 Linear4bit, quantized where the weight lives.

    The same modules and settings as `from_pretrained(quantization_config=BitsAndBytesConfig(nf4, double
    quant))` produces (lm_head stays in the compute dtype), minus a 14 GB checkpoint written and read back.
    """
    import bitsandbytes as bnb

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear) or name == "lm_head":
                continue
            q = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=compute_dtype,
                compress_statistics=double_quant,
                quant_type="nf4",
                device="meta",
            )
            weight = child.weight.data.to(compute_dtype)
            q.weight = bnb.nn.Params4bit(
                weight, requires_grad=False, compress_statistics=double_quant, quant_type="nf4", module=q
            ).to(weight.device)
            if child.bias is not None:
                q.bias = nn.Parameter(child.bias.data.to(compute_dtype), requires_grad=False)
            setattr(parent, name, q)
            del child, weight
    model.is_loaded_in_4bit = True
    return model


def build_nf4_model(config: Any, device: str, seed: int = 0) -> nn.Module:
    """Random bf16 weights built directly on `device`, then quantized to nf4 with double quantization."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    quantize_nf4_(model)
    free_memory()
    model.train()
    return model


def seed_lora_config() -> Any:
    """seed000's adapter: r8, alpha 16, dropout 0.05, all seven projections."""
    from peft import LoraConfig

    return LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM", target_modules=list(SEED000_TARGETS)
    )


def seed_prepare(model: nn.Module, lora_config: Any) -> nn.Module:
    """The seed recipe: peft's kbit preparation with its defaults (fp32 upcast, reentrant checkpointing), then LoRA."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model.config.use_cache = False
    return get_peft_model(model, lora_config)


def free_memory() -> None:
    """Release what the last configuration held, its CUDA graph memory pool included."""
    gc.collect()
    if torch.cuda.is_available():
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        reset_cudagraph_trees()
        gc.collect()
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class TrainResult:
    """One measured configuration."""

    name: str
    tokens_per_s: float
    peak_gib: float
    step_s: float
    steps: int
    tokens_per_step: int
    final_loss: float
    settings: dict[str, Any]


def random_batches(n: int, batch: int, seq: int, vocab: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Token ids drawn uniformly (no padding: every position is a trained token)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, seq), generator=g).to(device) for _ in range(n)]


def hf_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The model's own shifted cross-entropy, as the Trainer computes it."""
    return model(input_ids=ids, labels=ids).loss


def train_loop(
    name: str,
    model: nn.Module,
    batches: list[torch.Tensor],
    warmup: int,
    settings: dict[str, Any],
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] = hf_loss,
) -> TrainResult:
    """bf16-autocast steps with fused AdamW; the first `warmup` are untimed (allocator, autotuning, compile)."""
    cuda = batches[0].is_cuda
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, fused=cuda)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    loss = torch.zeros(())
    start = 0.0
    for i, ids in enumerate(batches):
        if i == warmup:
            sync()
            start = time.perf_counter()
        with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16):
            loss = loss_fn(model, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync()
    seconds = time.perf_counter() - start
    steps = len(batches) - warmup
    tokens = batches[0].numel()
    peak = torch.cuda.max_memory_allocated() if cuda else 0
    del opt
    return TrainResult(
        name, tokens * steps / seconds, peak / GIB, seconds / steps, steps, tokens, float(loss.detach()), settings
    )


def write_json(path: Path | None, payload: Any) -> None:
    """Results go out after every configuration, so a run cut short still leaves what it measured."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(payload, indent=2, default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o)),
        encoding="utf-8",
    )


def device_summary() -> dict[str, Any]:
    """What the numbers were measured on."""
    import importlib.metadata as md

    out: dict[str, Any] = {"torch": torch.__version__}
    for pkg in ("transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(0)
        out["gpus"] = torch.cuda.device_count()
        out["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
    return out


def chunked_lm_loss(model: nn.Module, ids: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """Shifted cross-entropy computed `chunk` tokens at a time, each chunk's logits recomputed in backward.

    The model's own loss holds the full logits in bf16 and fp32 plus the fp32 log-softmax
    (2048 tokens x 32768 vocab: about 0.6 GiB at the peak); this holds one chunk's.
    """
    from torch.utils.checkpoint import checkpoint

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(input_ids=ids).last_hidden_state[:, :-1]
    h = hidden.reshape(-1, hidden.shape[-1])
    y = ids[:, 1:].reshape(-1)
    weight = base.lm_head.weight
    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        total = total + checkpoint(_ce_sum, h[i : i + chunk], weight, y[i : i + chunk], use_reentrant=False)
    return total / y.numel()


def _ce_sum(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(torch.nn.functional.linear(h, weight).float(), y, reduction="sum")
