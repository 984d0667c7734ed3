"""Loading a model and tokenizer from a resolved folder, with the precision the harness measured best."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from harness.engine import attention
from harness.errors import HarnessInputError, Problem
from harness.models.embedded import ModelRef


def attention_for(device: str) -> str:
    """The attention function evaluation runs with: the trimmed decode path on CPU (harness.attention)."""
    return "sdpa" if device.startswith("cuda") else attention.NAME


@dataclass(frozen=True)
class Runtime:
    """Where and how a model runs. fp32 on CPU: measured faster than bf16 autocast for generation here."""

    device: str
    dtype: torch.dtype

    @staticmethod
    def pick(device: str = "auto") -> Runtime:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise HarnessInputError(
                Problem("--device", f"{device} was asked for but CUDA is not available", "use --device cpu")
            )
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        return Runtime(device, dtype)


def load_tokenizer(ref: ModelRef, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    try:
        tok = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's folder
        raise HarnessInputError(
            Problem(
                str(ref.path),
                f"tokenizer could not be loaded ({type(exc).__name__}: {exc})",
                "check the folder holds tokenizer files",
            )
        ) from None
    return left_padded(tok)


def left_padded(tok: Any) -> Any:
    """Batched greedy decoding pads on the left; a tokenizer without a pad token pads with EOS."""
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(ref: ModelRef, runtime: Runtime, trust_remote_code: bool = False) -> PreTrainedModel:
    try:
        model = AutoModelForCausalLM.from_pretrained(
            ref.path,
            dtype=runtime.dtype,
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            attn_implementation=attention_for(runtime.device),
        )
    except Exception as exc:  # noqa: BLE001
        raise HarnessInputError(
            Problem(
                str(ref.path),
                f"model could not be loaded ({type(exc).__name__}: {str(exc)[:300]})",
                "pass a causal-LM folder with config.json and safetensors weights",
            )
        ) from None
    return model.to(runtime.device).eval()


def dtype_name(dtype: torch.dtype) -> str:
    """'bfloat16' for torch.bfloat16: the name reports and configs use."""
    return str(dtype).replace("torch.", "")


def describe_model(model: Any) -> dict[str, Any]:
    params = sum(p.numel() for p in model.parameters())
    return {"class": type(model).__name__, "parameters": params, "dtype": dtype_name(next(model.parameters()).dtype)}
