"""GPU lane: runs only where CUDA is available (never in CI)."""

from __future__ import annotations

import pytest
import torch

from harness.generate import generate
from harness.suite import GenerationSettings, load_suite
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

    from harness.train_config import load_train_config
    from tests.conftest import REPO
    from trainers.sft_recipe import train

    cfg = load_train_config(REPO / "trainers/configs/seed000.yaml").with_overrides(str(tiny_model_dir), str(tmp_path / "c"), 2)
    cfg = replace(cfg, training=replace(cfg.training, batch_size=2, grad_accum=1, save_steps=50))
    out = train(cfg, root=REPO, quiet=True)
    meta = json.loads((out / "training_metadata.json").read_text(encoding="utf-8"))
    assert meta["precision"]["weights"] == "nf4" and meta["precision"]["device"] == "cuda" and meta["precision"]["double_quant"]
    assert meta["precision"]["cuda_path"]["compile_mode"] == "reduce-overhead" and meta["steps"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
