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
