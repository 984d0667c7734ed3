"""What a run holds before and while it evaluates: the plan, the resident base with its adapters attached,
and the loaders for the variants a user hands over (merged folders, GGUF files).

Several adapters share one resident base (PEFT attaches each under its variant's name), so a run with N
adapters loads the base weights once; in-process merges come last, the final one merging in place.
"""

from __future__ import annotations

import copy
import gc
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.engine.generate import Generation
from harness.engine.loading import (
    Runtime,
    attention_for,
    describe_model,
    dtype_name,
    left_padded,
    load_model,
    load_tokenizer,
)
from harness.env import tokenizer_sha256, weights_sha256
from harness.errors import HarnessInputError, Problem, RunStopped
from harness.io import atomic_write_json
from harness.models.embedded import ModelRef
from harness.runs.evaluate import EvalOptions
from harness.suite.suite import Case, Suite
from harness.variants.spec import Variant, source_chain
from harness.verdict.gates import GatePolicy


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
        raise HarnessInputError(
            Problem("merge_dtype", f"unknown value {choice!r}", "use one of " + ", ".join(MERGE_DTYPES))
        )
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
    info = {
        "merged_in": dtype_name(merged_in),
        "export_dtype": dtype_name(export),
        "evaluated_in": dtype_name(export),
        "rounded": False,
    }
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
            if "not found in the base model" in str(exc):  # PEFT's words for target modules that matched nothing
                raise RunStopped(
                    [
                        {
                            "level": "error",
                            "code": "no_lora_layers",
                            "variant": v.name,
                            "message": f"the adapter's target modules matched no layer of {self.plan.base_ref.spec}: "
                            f"nothing would be applied ({str(exc)[:200]})",
                        }
                    ],
                    f"{v.path}; nothing was written",
                ) from None
            raise HarnessInputError(
                Problem(
                    f"variant {v.name}: {v.path}",
                    f"PEFT could not attach the adapter to {self.plan.base_ref.spec} "
                    f"({type(exc).__name__}: {str(exc)[:300]})",
                    "check that the adapter was trained on this base model (target modules, shapes)",
                )
            ) from None
        self.peft.eval()

    def key(self, v: Variant) -> str:
        if v.kind == "base":
            return f"base:{self.base_hash}:{self.dtype}"
        lora = _lora_id(v) if v.kind == "adapter" else _lora_id(self.plan.by_name[str(v.derived_from)])
        if v.kind == "adapter":
            return f"adapter:{self.base_hash}:{lora}:{self.dtype}"
        return (
            f"merged:{self.base_hash}:{lora}:{self.dtype}:{dtype_name(export_dtype(v.merge_dtype, self.plan.base_ref))}"
        )

    @contextmanager
    def active(self, v: Variant) -> Iterator[Any]:
        """The resident model as this variant: adapters off for the base, one adapter on for an adapter."""
        if self.merged_away:
            raise RuntimeError(
                "the resident weights were merged; base and adapters are evaluated before in-process merges"
            )
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


def external_ref(v: Variant) -> ModelRef:
    assert v.path is not None
    return ModelRef(str(v.path), v.path.resolve(), {"source": f"{v.kind} {v.path.resolve()}"})


def external_tokenizer(v: Variant) -> Any:
    """A user's merged folder or GGUF file is served with its own tokenizer: checking that one is the point."""
    assert v.path is not None
    if v.kind == "merged":
        return load_tokenizer(external_ref(v))
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(v.path.parent), gguf_file=v.path.name)
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's file
        raise HarnessInputError(
            Problem(
                f"variant {v.name}: {v.path}",
                f"transformers could not read the GGUF's tokenizer ({type(exc).__name__}: {str(exc)[:300]})",
                "give a GGUF written by llama.cpp's converter, with its tokenizer embedded",
            )
        ) from None
    return left_padded(tokenizer)


def load_external(v: Variant, runtime: Runtime) -> Any:
    """The model of a user's merged folder or GGUF file (GGUF tensors are dequantized by transformers)."""
    assert v.path is not None
    if v.kind == "merged":
        return load_model(external_ref(v), runtime)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(v.path.parent),
            gguf_file=v.path.name,
            dtype=runtime.dtype,
            attn_implementation=attention_for(runtime.device),
        )
    except Exception as exc:  # noqa: BLE001 - any loader failure is the user's file
        raise HarnessInputError(
            Problem(
                f"variant {v.name}: {v.path}",
                f"transformers could not load the GGUF ({type(exc).__name__}: {str(exc)[:300]})",
                "give a GGUF of a supported architecture and tensor type (f16, q8_0, q4_k_m, ...)",
            )
        ) from None
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


def release_memory() -> None:
    """Return a freed model's memory before the next one loads (the caller drops its references first)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def own_tokenizer(v: Variant, base_tokenizer: Any) -> Any:
    """An adapter folder's own tokenizer when it ships one that differs from the base's (that is what it was
    trained with)."""
    if v.kind != "adapter" or v.path is None or not (v.path / "tokenizer_config.json").is_file():
        return base_tokenizer
    ref = ModelRef(str(v.path), v.path, {})
    own = load_tokenizer(ref)
    return base_tokenizer if tokenizer_sha256(own) == tokenizer_sha256(base_tokenizer) else own


def borrow_template(plan: Plan, v: Variant, tokenizers: dict[str, Any]) -> tuple[Any, str]:
    """A copy of a derived variant's tokenizer with the chat template of the variant it derives from."""
    for src in source_chain(plan.by_name, v.name)[1:]:
        template = getattr(tokenizers.get(src.name), "chat_template", None)
        if template:
            patched = copy.copy(tokenizers[v.name])
            patched.chat_template = template
            return patched, src.name
    raise HarnessInputError(
        Problem(
            f"variant {v.name}: {v.path}",
            "its tokenizer has no chat template and it derives from no variant that has one",
            "give it prompt_format: {kind: template, template: ...} or ship the chat template with its tokenizer",
        )
    )
