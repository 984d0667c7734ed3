"""Requantize a float GGUF to a 4-bit block type with gguf-py's reference quantizer.

Why this exists: llama.cpp's convert_hf_to_gguf.py writes f32, f16, bf16 and q8_0 only; 4-bit files come
from llama.cpp's C++ `llama-quantize`, which is not built here. gguf-py (the package the converter itself
uses) carries numpy reference quantizers for Q4_0 and Q4_1, so `harness gguf --outtype q4_0` converts to
f32 first and rewrites that file here. K-quants (q4_k_m, ...) have no reference quantizer in gguf-py; they
still need `llama-quantize`, and such a file is scored the same way (transformers dequantizes it on load).

Which tensors are quantized follows llama-quantize's default (non `--pure`) choice for these types:
every tensor of two or more dimensions named `*.weight` whose row length is a multiple of the block size;
1-D tensors (norms, biases) stay F32; the output matrix (`output.weight`, or the token embedding when the
model ties them) is kept at higher precision. llama-quantize writes it as Q6_K, and as Q8_0 where the row
length is not a multiple of Q6_K's 256 (SmolLM2-135M: 576); gguf-py cannot write Q6_K, so it is Q8_0 here.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import HarnessInputError
from harness.io import atomic_output

# outtype -> (tensor type, general.file_type), both by their gguf-py names
REQUANT_TYPES: dict[str, tuple[str, str]] = {
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
}
OUTPUT_TYPE = "Q8_0"  # llama-quantize's Q6_K for the output matrix is not writable with gguf-py
FLOAT_SOURCES = ("F32", "F16", "BF16")
# 4-bit rounding moves trained weights by ~9% (relative norm, median over tensors; SmolLM2-135M, Q4_0: 8.7%).
# A source that moves less than this was already on the type's grid: the embedded SmolLM2 is a Q4_1
# dequantization, and Q4_1 of its demo merge moved 0.56% and kept 0.06 of the adapter's delta (docs/measurements.md).
ON_GRID_REL = 0.02


@dataclass(frozen=True)
class RequantResult:
    """What was written: tensor types by count, the output matrix kept at Q8_0 (if any), the weight
    matrices that could not take the block type (kept F32), and how far the rounding moved the 4-bit ones."""

    path: Path
    file_type: str
    tensor_types: dict[str, int]
    output_tensor: str | None
    kept_float: tuple[str, ...]
    rounding_rel: float | None  # median over the 4-bit tensors of ||dequantized - source|| / ||source||

    @property
    def already_on_grid(self) -> bool:
        """The source barely moved: it was dequantized from this very type, so a merged delta smaller than
        the rounding step is rounded away with it (see ON_GRID_REL)."""
        return self.rounding_rel is not None and self.rounding_rel < ON_GRID_REL


def _output_tensor(names: set[str]) -> str | None:
    """The LM head as llama.cpp sees it: output.weight, else the tied token embedding."""
    if "output.weight" in names:
        return "output.weight"
    return "token_embd.weight" if "token_embd.weight" in names else None


def plan_types(tensors: list[tuple[str, tuple[int, ...]]], target: str) -> dict[str, str]:
    """The tensor type each tensor gets; `tensors` holds (name, numpy shape) with the row length last."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block = GGML_QUANT_SIZES[GGMLQuantizationType[target]][0]
    out_block = GGML_QUANT_SIZES[GGMLQuantizationType[OUTPUT_TYPE]][0]
    head = _output_tensor({name for name, _ in tensors})
    plan: dict[str, str] = {}
    for name, shape in tensors:
        if len(shape) < 2 or not name.endswith(".weight"):
            plan[name] = "F32"
        elif name == head and shape[-1] % out_block == 0:
            plan[name] = OUTPUT_TYPE
        elif shape[-1] % block == 0:
            plan[name] = target
        else:
            plan[name] = "F32"
    return plan


def _float_array(tensor: Any) -> np.ndarray:
    """The tensor's values as float32 in numpy order (rows last), whatever float type the source stores."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    kind = tensor.tensor_type
    if kind == GGMLQuantizationType.F32:
        return np.asarray(tensor.data, dtype=np.float32)
    values = dequantize(np.asarray(tensor.data), kind)
    return values.reshape(tuple(int(d) for d in reversed(tensor.shape))).astype(np.float32, copy=False)


def requantize(source: Path, target: Path, outtype: str) -> RequantResult:
    """Write `target`: `source`'s metadata and tensors, the weight matrices in `outtype`; atomically.

    `source` must store float tensors (F32, F16 or BF16): quantizing an already quantized file would add
    a second rounding that no one asked for.
    """
    import gguf

    if outtype not in REQUANT_TYPES:
        raise HarnessInputError(
            f"requantize: {outtype!r} is not one of {', '.join(REQUANT_TYPES)} "
            "(the types gguf-py can quantize to besides q8_0, which the converter writes itself)"
        )
    target_type, file_type = REQUANT_TYPES[outtype]
    reader = gguf.GGUFReader(str(source))
    if reader.endianess != gguf.GGUFEndian.LITTLE:
        raise HarnessInputError(f"{source} is a big-endian GGUF; convert it with the default little-endian output")
    not_float = sorted({t.tensor_type.name for t in reader.tensors} - set(FLOAT_SOURCES))
    if not_float:
        raise HarnessInputError(
            f"{source} already stores {', '.join(not_float)} tensors; requantize from an f32, f16 or bf16 GGUF "
            "(harness gguf does: it converts to f32 first)"
        )
    shapes = [(t.name, tuple(int(d) for d in reversed(t.shape))) for t in reader.tensors]
    plan = plan_types(shapes, target_type)
    arch = reader.get_field(gguf.Keys.General.ARCHITECTURE)
    if arch is None:
        raise HarnessInputError(f"{source} has no general.architecture; it is not a model GGUF")

    rounding: list[float] = []
    with atomic_output(target) as tmp:
        writer = gguf.GGUFWriter(None, str(arch.contents()))
        try:
            _copy_metadata(reader, writer, file_type)
            for name, shape in shapes:
                kind = gguf.GGMLQuantizationType[plan[name]]
                stored = gguf.quant_shape_to_byte_shape(shape, kind) if kind != gguf.GGMLQuantizationType.F32 else shape
                dtype = np.dtype(np.float32 if kind == gguf.GGMLQuantizationType.F32 else np.uint8)
                nbytes = int(np.prod(stored)) * dtype.itemsize
                writer.add_tensor_info(name, stored, dtype, nbytes, raw_dtype=None if dtype == np.float32 else kind)
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for tensor in reader.tensors:  # one tensor in memory at a time, in the order of the infos above
                values = _float_array(tensor)
                kind = gguf.GGMLQuantizationType[plan[tensor.name]]
                if kind == gguf.GGMLQuantizationType.F32:
                    writer.write_tensor_data(values)
                    continue
                packed = gguf.quants.quantize(values, kind)
                if plan[tensor.name] == target_type:
                    rounding.append(_relative_error(values, gguf.quants.dequantize(packed, kind)))
                writer.write_tensor_data(packed)
        finally:
            writer.close()
    kept = tuple(n for n, s in shapes if plan[n] == "F32" and len(s) >= 2 and n.endswith(".weight"))
    head = next((n for n, t in plan.items() if t == OUTPUT_TYPE), None)
    median = float(np.median(rounding)) if rounding else None
    return RequantResult(target, file_type.removeprefix("MOSTLY_"), dict(Counter(plan.values())), head, kept, median)


def _relative_error(values: np.ndarray, restored: np.ndarray) -> float:
    norm = float(np.linalg.norm(values))
    return float(np.linalg.norm(restored.reshape(values.shape) - values)) / norm if norm else 0.0


def _copy_metadata(reader: Any, writer: Any, file_type: str) -> None:
    """Every key-value field of `reader` into `writer`, with general.file_type set to `file_type`.

    general.architecture is written by GGUFWriter itself and GGUF.* are the reader's virtual header fields.
    A source alignment other than the default is kept, since the tensor offsets are laid out with it.
    """
    import gguf

    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        if field.name == gguf.Keys.General.FILE_TYPE:  # in place, so the keys keep their order
            writer.add_key_value(field.name, int(gguf.LlamaFileType[file_type]), gguf.GGUFValueType.UINT32)
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, _field_value(field), kind, sub_type=sub_type)
        if field.name == gguf.Keys.General.ALIGNMENT:
            writer.data_alignment = int(field.contents())
    if reader.get_field(gguf.Keys.General.FILE_TYPE) is None:
        writer.add_key_value(gguf.Keys.General.FILE_TYPE, int(gguf.LlamaFileType[file_type]), gguf.GGUFValueType.UINT32)
    if reader.get_field(gguf.Keys.General.QUANTIZATION_VERSION) is None:
        writer.add_key_value(gguf.Keys.General.QUANTIZATION_VERSION, gguf.GGML_QUANT_VERSION, gguf.GGUFValueType.UINT32)


def _field_value(field: Any) -> Any:
    """A field's value as GGUFWriter takes it; strings as their stored bytes, so tokens copy byte for byte."""
    import gguf

    kind = field.types[0]
    if kind == gguf.GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]])
    if kind == gguf.GGUFValueType.ARRAY and field.types[-1] == gguf.GGUFValueType.STRING:
        return [bytes(field.parts[i]) for i in field.data]
    return field.contents()


def round_trip_rel(weight: np.ndarray, type_name: str) -> float | None:
    """How far a round trip through `type_name` (Q4_0, Q4_1, Q8_0, ...) moves `weight` (rows last), relative.

    Why: a matrix no adapter touches still moves by this much in a GGUF of that type (~9% for 4-bit), which a
    fixed 'differs from the base' bound cannot tell from another base model. Rows are quantized independently,
    so llama.cpp's q/k row permutation does not change the figure. None when gguf-py cannot quantize the type
    (k-quants) or the row length is not a multiple of its block.
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    try:
        kind = GGMLQuantizationType[type_name.upper()]
        values = np.asarray(weight, dtype=np.float32)
        if values.ndim < 2 or values.shape[-1] % GGML_QUANT_SIZES[kind][0]:
            return None
        return _relative_error(values, dequantize(quantize(values, kind), kind))
    except (KeyError, NotImplementedError):
        return None
