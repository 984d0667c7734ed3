"""q4_0 / q4_1 GGUF output (fast lane): the requantizer on a GGUF written here with gguf-py, no converter.

Metadata must survive byte for byte (a tokenizer that loses a token changes every prompt), the file type must
say what the tensors are (parity bounds are keyed on it), the weights must be gguf-py's own quantization of
the source, and a failed write must leave no file behind. `convert_and_check` is driven end to end with a
stand-in converter that writes such a float GGUF, and the CLI refuses an unknown --outtype with exit 2.
"""

from __future__ import annotations

import io
import json
import textwrap
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import gguf
import numpy as np
import pytest

from harness.cli import main
from harness.errors import HarnessInputError
from harness.models import gguf_export, gguf_quantize
from harness.models.gguf_quantize import plan_types, requantize

TOKENS = ["<|endoftext|>", "a", "b", "ĠcafÃ©", "<|im_start|>", "<|im_end|>", "x", "y"]
TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def _tensors(rng: np.random.Generator, tied: bool = True) -> dict[str, np.ndarray]:
    """numpy shapes (row length last): a Llama-like layer, a 1-D norm, an F16 matrix, a 48-wide matrix."""
    out = {
        "token_embd.weight": rng.normal(0, 0.02, (len(TOKENS), 64)).astype(np.float32),
        "blk.0.attn_norm.weight": (1 + rng.normal(0, 0.1, 64)).astype(np.float32),
        "blk.0.attn_q.weight": rng.normal(0, 0.05, (64, 64)).astype(np.float32),
        "blk.0.ffn_down.weight": rng.normal(0, 0.05, (64, 128)).astype(np.float16),
        "blk.0.odd.weight": rng.normal(0, 0.05, (4, 48)).astype(np.float32),  # 48: not a multiple of 32
        "output_norm.weight": np.ones(64, dtype=np.float32),
    }
    if not tied:
        out["output.weight"] = rng.normal(0, 0.02, (len(TOKENS), 64)).astype(np.float32)
    return out


def _float_gguf(path: Path, tensors: dict[str, np.ndarray], file_type: int = gguf.LlamaFileType.ALL_F32) -> Path:
    """A small float GGUF with every kind of metadata value the converter writes."""
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny test model")
    writer.add_block_count(1)
    writer.add_context_length(128)
    writer.add_embedding_length(64)
    writer.add_file_type(int(file_type))
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_bool("tiny.flag", True)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1, 1, 1, 1, 3, 3, 1, 1])
    writer.add_token_merges(["a b", "Ġ c"])
    writer.add_eos_token_id(5)
    writer.add_chat_template(TEMPLATE)
    for name, array in tensors.items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _fields(path: Path) -> dict[str, tuple[list[int], list[bytes]]]:
    """Every real key-value field as (types, raw value parts): what 'copied byte for byte' compares."""
    reader = gguf.GGUFReader(str(path))
    return {
        name: (list(field.types), [bytes(field.parts[i]) for i in field.data])
        for name, field in reader.fields.items()
        if not name.startswith("GGUF.") and name not in ("general.file_type", "general.quantization_version")
    }


def test_q4_0_keeps_metadata_and_quantizes_the_weight_matrices(tmp_path: Path) -> None:
    tensors = _tensors(np.random.default_rng(0))
    source = _float_gguf(tmp_path / "model-f32.gguf", tensors)
    result = requantize(source, tmp_path / "out" / "model-q4_0.gguf", "q4_0")

    assert result.file_type == "Q4_0" and result.output_tensor == "token_embd.weight"
    assert result.kept_float == ("blk.0.odd.weight",)
    assert list(_fields(result.path)) == list(_fields(source))  # same keys, same order
    assert _fields(result.path) == _fields(source)
    reader = gguf.GGUFReader(str(result.path))
    assert gguf.LlamaFileType(int(reader.get_field("general.file_type").contents())) == gguf.LlamaFileType.MOSTLY_Q4_0
    assert reader.get_field("general.quantization_version").contents() == gguf.GGML_QUANT_VERSION
    assert reader.get_field("tokenizer.ggml.tokens").contents() == TOKENS
    assert reader.get_field("tokenizer.chat_template").contents() == TEMPLATE

    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types == {
        "token_embd.weight": "Q8_0",  # tied output matrix: llama-quantize keeps it above 4 bits
        "blk.0.attn_norm.weight": "F32",
        "blk.0.attn_q.weight": "Q4_0",
        "blk.0.ffn_down.weight": "Q4_0",  # an F16 source matrix is quantized from its float32 values
        "blk.0.odd.weight": "F32",
        "output_norm.weight": "F32",
    }
    for t in reader.tensors:
        original = tensors[t.name].astype(np.float32)
        assert tuple(int(d) for d in reversed(t.shape)) == original.shape, t.name
        kind = gguf.GGMLQuantizationType[types[t.name]]
        if kind == gguf.GGMLQuantizationType.F32:
            assert np.array_equal(np.asarray(t.data), original), t.name
            continue
        assert np.array_equal(np.asarray(t.data), gguf.quants.quantize(original, kind)), t.name  # gguf-py's own
        restored = gguf.quants.dequantize(np.asarray(t.data), kind).reshape(original.shape)
        rel = float(np.linalg.norm(restored - original) / np.linalg.norm(original))
        assert 0 < rel < (0.15 if kind == gguf.GGMLQuantizationType.Q4_0 else 0.01), (t.name, rel)
    assert [p.name for p in result.path.parent.iterdir()] == ["model-q4_0.gguf"]  # no temp file left


def test_q4_1_with_an_untied_output_matrix(tmp_path: Path) -> None:
    source = _float_gguf(tmp_path / "model-f32.gguf", _tensors(np.random.default_rng(1), tied=False))
    result = requantize(source, tmp_path / "model-q4_1.gguf", "q4_1")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(str(result.path)).tensors}
    assert result.file_type == "Q4_1" and result.output_tensor == "output.weight"
    assert types["output.weight"] == "Q8_0" and types["token_embd.weight"] == "Q4_1"
    assert result.tensor_types == {"Q4_1": 3, "Q8_0": 1, "F32": 3}


def test_a_source_already_on_the_grid_is_told_apart(tmp_path: Path) -> None:
    """Q4_1 of weights dequantized from Q4_1 (the embedded SmolLM2) barely moves them: a merged delta smaller
    than the rounding step would be rounded away, so the result says so; trained-looking weights move ~9%."""
    tensors = _tensors(np.random.default_rng(5))
    plain = requantize(_float_gguf(tmp_path / "plain.gguf", tensors), tmp_path / "plain-q4_1.gguf", "q4_1")
    snapped = {
        name: gguf.quants.dequantize(
            gguf.quants.quantize(a.astype(np.float32), gguf.GGMLQuantizationType.Q4_1), gguf.GGMLQuantizationType.Q4_1
        ).reshape(a.shape)
        if a.ndim == 2 and a.shape[-1] % 32 == 0
        else a
        for name, a in tensors.items()
    }
    on_grid = requantize(_float_gguf(tmp_path / "grid.gguf", snapped), tmp_path / "grid-q4_1.gguf", "q4_1")
    assert plain.rounding_rel is not None and 0.05 < plain.rounding_rel < 0.15 and not plain.already_on_grid
    assert on_grid.rounding_rel is not None and on_grid.rounding_rel < 1e-3 and on_grid.already_on_grid
    again = requantize(tmp_path / "grid.gguf", tmp_path / "grid-q4_0.gguf", "q4_0")  # another grid: not flagged
    assert not again.already_on_grid


def test_plan_follows_llama_quantize() -> None:
    plan = plan_types(
        [
            ("token_embd.weight", (10, 576)),
            ("blk.0.attn_k.weight", (192, 576)),
            ("blk.0.ffn_norm.weight", (576,)),
            ("blk.0.attn_k.bias", (192,)),
            ("blk.0.ffn_gate_exps.weight", (4, 8, 64)),
            ("rope.freqs", (2, 32)),
        ],
        "Q4_0",
    )
    assert plan == {
        "token_embd.weight": "Q8_0",
        "blk.0.attn_k.weight": "Q4_0",
        "blk.0.ffn_norm.weight": "F32",
        "blk.0.attn_k.bias": "F32",
        "blk.0.ffn_gate_exps.weight": "Q4_0",  # stacked experts: quantized row by row
        "rope.freqs": "F32",  # not a weight
    }


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = _float_gguf(tmp_path / "model-f32.gguf", _tensors(np.random.default_rng(2)))
    out = tmp_path / "out"
    out.mkdir()
    target = out / "model-q4_0.gguf"
    target.write_bytes(b"the previous file")

    def broken(values: np.ndarray, kind: gguf.GGMLQuantizationType) -> np.ndarray:
        raise MemoryError("simulated failure mid-write")

    monkeypatch.setattr(gguf.quants, "quantize", broken)
    with pytest.raises(MemoryError):
        requantize(source, target, "q4_0")
    assert target.read_bytes() == b"the previous file"
    assert [p.name for p in out.iterdir()] == ["model-q4_0.gguf"]


def test_an_already_quantized_source_is_refused(tmp_path: Path) -> None:
    source = _float_gguf(tmp_path / "model-f32.gguf", _tensors(np.random.default_rng(3)))
    q8 = requantize(source, tmp_path / "model-q4_0.gguf", "q4_0").path
    with pytest.raises(HarnessInputError, match="already stores Q4_0, Q8_0 tensors; requantize from an f32"):
        requantize(q8, tmp_path / "again.gguf", "q4_0")
    assert not (tmp_path / "again.gguf").exists()


FAKE_CONVERTER = textwrap.dedent(
    """
    # Stand-in for convert_hf_to_gguf.py: writes the float GGUF the tests describe, records its arguments.
    import json, sys
    from pathlib import Path
    import numpy as np
    import gguf

    args = sys.argv[1:]
    out, outtype = Path(args[args.index("--outfile") + 1]), args[args.index("--outtype") + 1]
    Path(__file__).with_name("calls.jsonl").open("a").write(json.dumps({"outtype": outtype}) + "\\n")
    w = gguf.GGUFWriter(str(out), "llama")
    w.add_file_type(0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(8)])
    w.add_tensor("token_embd.weight", np.full((8, 64), 0.5, dtype=np.float32))
    w.add_tensor("blk.0.attn_q.weight", np.linspace(-1, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    """
)


def _stub_folder(folder: Path, n_tensors: int = 3) -> Path:
    """config + a safetensors header naming `n_tensors` tensors + tokenizer.json: what inspect_source reads."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8}), encoding="utf-8")
    header = {f"w{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(n_tensors)}
    raw = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(len(raw).to_bytes(8, "little") + raw + b"\0" * (4 * n_tensors))
    (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    return folder


def test_convert_and_check_asks_the_converter_for_f32_then_requantizes(tmp_path: Path) -> None:
    tree = tmp_path / "llama.cpp"
    (tree / "gguf-py").mkdir(parents=True)
    (tree / "convert_hf_to_gguf.py").write_text(FAKE_CONVERTER, encoding="utf-8")
    out = tmp_path / "kept" / "merged-q4_0.gguf"

    result = gguf_export.convert_and_check(_stub_folder(tmp_path / "m"), tree, "q4_0", out, timeout=120)

    calls = [json.loads(line) for line in (tree / "calls.jsonl").read_text().splitlines()]
    assert calls == [{"outtype": "f32"}]
    assert result.gguf.file_type == "Q4_0" and result.gguf.path == out
    assert result.gguf.tensor_types == {"Q8_0": 1, "Q4_0": 1, "F32": 1}
    assert any("reference quantizer" in n for n in result.notes)
    assert "file type Q4_0" in gguf_export.render(result)
    assert [p.name for p in out.parent.iterdir()] == ["merged-q4_0.gguf"]


def test_verify_names_a_file_type_that_does_not_match(tmp_path: Path) -> None:
    source = gguf_export.inspect_source(_stub_folder(tmp_path / "m"))
    path = _float_gguf(tmp_path / "f32.gguf", _tensors(np.random.default_rng(4)))
    problems = gguf_export.verify(source, gguf_export.read_gguf(path), "q4_0")
    assert "general.file_type is ALL_F32, expected MOSTLY_Q4_0" in problems
    assert "no tensor is stored as Q4_0" in problems


@pytest.mark.parametrize(
    ("outtype", "hint"),
    [("q4_k_m", "needs llama.cpp's C++ llama-quantize"), ("q3", "pick one of those")],
)
def test_unknown_outtype_exits_2_with_one_message(tmp_path: Path, outtype: str, hint: str) -> None:
    folder = _stub_folder(tmp_path / "m")
    err, out = io.StringIO(), io.StringIO()
    with redirect_stderr(err), redirect_stdout(out):
        code = main(["gguf", str(folder), "--outtype", outtype, "--outfile", str(tmp_path / "x.gguf")])
    stderr = err.getvalue()
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith("harness: error: --outtype") and "Traceback" not in stderr
    assert f"--outtype {outtype!r} is not one of f32, f16, bf16, q8_0, q4_0, q4_1" in stderr and hint in stderr
    assert not (tmp_path / "x.gguf").exists() and out.getvalue() == ""


def test_outtypes_match_the_requantizer() -> None:
    assert set(gguf_export.OUTTYPES) == set(gguf_export.CONVERTER_OUTTYPES) | set(gguf_quantize.REQUANT_TYPES)


def test_round_trip_rel_gives_the_rounding_an_untouched_matrix_shows() -> None:
    w = np.random.default_rng(6).normal(0, 0.05, (64, 128)).astype(np.float32)
    q4, q8 = gguf_quantize.round_trip_rel(w, "Q4_0"), gguf_quantize.round_trip_rel(w, "q8_0")
    assert q4 is not None and 0.05 < q4 < 0.15 and q8 is not None and q8 < 0.01
    assert gguf_quantize.round_trip_rel(w, "Q4_K") is None  # gguf-py has no k-quant quantizer
    assert gguf_quantize.round_trip_rel(w[:, :48], "Q4_0") is None and gguf_quantize.round_trip_rel(w, "nope") is None
