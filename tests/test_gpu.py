"""GPU lane: runs only where CUDA is available (never in CI)."""

from __future__ import annotations

import pytest
import torch

from harness.engine.generate import generate
from harness.suite.suite import GenerationSettings, load_suite
from tests.conftest import SUPPORT_VI


@pytest.mark.gpu
def test_cuda_generation_matches_batching_invariance(tiny_model_dir, tokenizer) -> None:  # noqa: ANN001
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).to("cuda").eval()
    suite = load_suite(SUPPORT_VI)
    chats = [suite.chat(c) for c in suite.cases[:6]]
    settings = GenerationSettings(max_new_tokens=16)
    batched = generate(model, tokenizer, chats, settings, batch_size=3, progress=False)
    single = [generate(model, tokenizer, [c], settings, batch_size=1, progress=False)[0] for c in chats]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]


@pytest.mark.gpu
def test_qlora_preset_trains_through_the_recipe_on_cuda(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    """seed000 (nf4 QLoRA) through SFTTrainer with the fast CUDA path: adapter saved, precision recorded."""
    import json
    from dataclasses import replace

    from harness.training.config import load_train_config
    from tests.conftest import REPO
    from trainers.sft_recipe import train

    cfg = load_train_config(REPO / "trainers/configs/seed000.yaml").with_overrides(
        str(tiny_model_dir), str(tmp_path / "c"), 2
    )
    cfg = replace(cfg, training=replace(cfg.training, batch_size=2, grad_accum=1, save_steps=50))
    out = train(cfg, root=REPO, quiet=True)
    meta = json.loads((out / "training_metadata.json").read_text(encoding="utf-8"))
    assert (
        meta["precision"]["weights"] == "nf4"
        and meta["precision"]["device"] == "cuda"
        and meta["precision"]["double_quant"]
    )
    assert meta["precision"]["cuda_path"]["compile_mode"] == "reduce-overhead" and meta["steps"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.gpu
def test_pipeline_on_cuda_exports_the_merge_in_float16(tiny_model_dir, tmp_path) -> None:  # noqa: ANN001
    """seed000's float16 export on CUDA: merged in the bf16 runtime, converted, evaluated and saved in float16."""
    from safetensors import safe_open

    from harness.models.embedded import resolve
    from harness.runs.evaluate import EvalOptions
    from harness.runs.pipeline import run_pipeline
    from tests.test_pipeline import _adapter, _small_suite

    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    suite = load_suite(_small_suite(tmp_path, n=4))
    run_dir, report = run_pipeline(
        suite,
        resolve(str(tiny_model_dir)),
        adapter,
        tmp_path / "reports",
        EvalOptions(batch_size=4, progress=False),
        device="cuda",
        run_id="g",
        merge_dtype="float16",
        token_budget="warn",
    )
    assert report["variants"]["merged"]["export"] == {
        "requested": "float16",
        "merged_in": "bfloat16",
        "export_dtype": "float16",
        "evaluated_in": "float16",
        "rounded": True,
    }
    with safe_open(str(next((run_dir / "merged").glob("*.safetensors"))), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
    assert report["parity"]["n_cases"] == 4
