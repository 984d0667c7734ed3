"""What ran: package versions, hardware and identity hashes recorded in every report."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import sys
from pathlib import Path
from typing import Any

PACKAGES = (
    "torch",
    "transformers",
    "peft",
    "trl",
    "bitsandbytes",
    "datasets",
    "jsonschema",
    "lm_eval",
    "sacrebleu",
    "scipy",
    "statsmodels",
    "pandas",
    "gguf",
)


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def weights_sha256(folder: Path) -> str:
    """Hash of every safetensors file (name and bytes), so a report names the exact weights, not a model name."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    for f in files:
        digest.update(f.name.encode())
        with f.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash of the vocabulary, special tokens and chat template: anything that changes prompts."""
    digest = hashlib.sha256()
    vocab = tokenizer.get_vocab()
    for tok in sorted(vocab):
        digest.update(f"{tok}\t{vocab[tok]}\n".encode("utf-8", "surrogatepass"))
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    digest.update((getattr(tokenizer, "chat_template", None) or "").encode())
    return digest.hexdigest()
