"""The CPU attention paths (harness.attention) and the recipe's cast hooks compute what transformers computes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.engine import attention
from harness.engine.generate import generate
from harness.suite.suite import GenerationSettings, load_suite
from tests.conftest import SUPPORT_VI


def _load(folder: Path, implementation: str) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation=implementation)


def test_decode_path_generates_what_sdpa_generates(tiny_model_dir: Path, tokenizer: Any) -> None:
    """Left-padded batches over a static cache: same greedy tokens, same first-step logits, batch-independent."""
    suite = load_suite(SUPPORT_VI)
    chats = [suite.chat(c) for c in suite.cases[:10]]
    settings = GenerationSettings(max_new_tokens=24, stop_at_json_end=False)
    ours_model, sdpa_model = _load(tiny_model_dir, attention.NAME).eval(), _load(tiny_model_dir, "sdpa").eval()
    ours = generate(ours_model, tokenizer, chats, settings, batch_size=4, progress=False, keep_logits=4)
    sdpa = generate(sdpa_model, tokenizer, chats, settings, batch_size=4, progress=False, keep_logits=4)
    assert [g.token_ids for g in ours] == [g.token_ids for g in sdpa]
    for a, b in zip(ours, sdpa):
        torch.testing.assert_close(a.logits, b.logits, rtol=1e-4, atol=1e-4)
    single = [generate(ours_model, tokenizer, [c], settings, batch_size=1, progress=False)[0] for c in chats[:4]]
    assert [g.token_ids for g in single] == [g.token_ids for g in ours[:4]]


def test_decode_path_hands_prefill_and_unusual_calls_to_sdpa(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def fake_sdpa(module: Any, query: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        calls.append(query.shape[2])
        return query.transpose(1, 2), None

    monkeypatch.setattr(attention, "sdpa_attention_forward", fake_sdpa)
    module = torch.nn.Linear(1, 1).eval()
    q, kv = torch.randn(2, 4, 3, 8), torch.randn(2, 2, 3, 8)
    attention.decode_attention(module, q, kv, kv, torch.ones(2, 1, 3, 3, dtype=torch.bool))  # prefill
    attention.decode_attention(module, q[:, :, :1], kv, kv, None)  # no mask
    attention.decode_attention(module, q[:, :, :1], kv, kv, torch.ones(2, 1, 1, 3, dtype=torch.bool), softcap=30.0)
    assert calls == [3, 1, 1]


def _reference_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Textbook attention: repeat key/value heads, masked softmax; [batch, q_len, heads, head_dim]."""
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = (query @ key.transpose(-1, -2)) * query.shape[-1] ** -0.5
    return (scores.masked_fill(~mask, float("-inf")).softmax(-1) @ value).transpose(1, 2)


@pytest.mark.parametrize("row_groups", [1, 3, 7])
@pytest.mark.parametrize("declared", [0, 5, 6])
def test_decode_path_reads_shared_prefix_once_and_skips_padding(
    monkeypatch: pytest.MonkeyPatch, row_groups: int, declared: int
) -> None:
    """[shared prefix | left pad | suffix | unfilled] rows: same result as textbook attention, whatever is declared.

    Declaring 6 when a row sees only 5 shared columns must fall back to the general path, not mix rows up.
    """
    monkeypatch.setattr(attention, "ROW_GROUPS", row_groups)
    torch.manual_seed(0)
    batch, heads, kv_heads, head_dim, total, prefix = 7, 6, 2, 8, 30, 5
    key, value = torch.randn(batch, kv_heads, total, head_dim), torch.randn(batch, kv_heads, total, head_dim)
    key[:, :, :prefix], value[:, :, :prefix] = key[:1, :, :prefix], value[:1, :, :prefix]
    mask = torch.zeros(batch, 1, 1, total, dtype=torch.bool)
    mask[..., :prefix] = True
    for row, start in enumerate([5, 6, 9, 12, 12, 15, 19]):  # ordered by prompt length, as generate orders them
        mask[row, ..., start:24] = True
    mask[2, ..., 5] = declared == 6  # row 2 also sees column 5; the others do not
    query = torch.randn(batch, heads, 1, head_dim)
    module = torch.nn.Linear(1, 1).eval()
    with attention.shared_prefix(declared):
        ours, _ = attention.decode_attention(module, query, key, value, mask)
    torch.testing.assert_close(ours, _reference_attention(query, key, value, mask), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padded", [True, False])
def test_training_path_matches_eager_attention(tiny_model_dir: Path, padded: bool) -> None:
    """fp32: equal loss and gradients to transformers' eager attention; bf16 autocast: within bf16 rounding."""
    eager, ours = _load(tiny_model_dir, "eager").train(), _load(tiny_model_dir, attention.TRAIN_NAME).train()
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (3, 20))
    mask = torch.ones_like(ids)
    if padded:
        mask[1, 14:] = 0
        mask[2, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)

    def run(model: Any, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    for autocast, tol in ((False, 1e-5), (True, 3e-2)):
        (loss_e, grad_e), (loss_o, grad_o) = run(eager, autocast), run(ours, autocast)
        torch.testing.assert_close(loss_o, loss_e, rtol=tol, atol=tol)
        torch.testing.assert_close(grad_o, grad_e, rtol=tol, atol=tol * grad_e.abs().max().item())


def test_cast_once_keeps_autocast_values_and_undoes_itself(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    from trainers.sft_recipe import cpu_bf16_casts

    def build() -> Any:
        torch.manual_seed(1)
        model = get_peft_model(
            _load(tiny_model_dir, "eager"),
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False),
        )
        return model.train()

    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 16))

    def run(model: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        lora_a = next(p for n, p in model.named_parameters() if "q_proj.lora_A" in n)
        return loss.detach(), lora_a.grad.clone()

    plain_loss, plain_grad = run(build())
    model = build()
    with cpu_bf16_casts(model, enabled=True, fuse=False) as what:
        loss, grad = run(model)
        layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
        assert all(not m.cast_input_dtype_enabled for m in layers)
        assert all(m.get_base_layer().weight.dtype == torch.bfloat16 for m in layers)
    assert what == "autocast, inputs cast once, frozen base weights bf16"
    assert torch.equal(loss, plain_loss), "the forward pass rounds exactly as autocast does"
    torch.testing.assert_close(grad, plain_grad, rtol=2e-2, atol=2e-2 * plain_grad.abs().max().item())
    assert all(m.cast_input_dtype_enabled for m in layers)
    assert all(not m._forward_pre_hooks for m in layers), "hooks are removed after training"
    with cpu_bf16_casts(model, enabled=False) as what:
        assert what == "autocast"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_heap_reuse_is_scoped_to_training() -> None:
    from trainers.sft_recipe import reuse_freed_memory

    with reuse_freed_memory(True) as what:
        block = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB: over glibc's largest mmap threshold
        del block
    assert what in ("glibc heap reuse (mmap off during training)", "system default")
    with reuse_freed_memory(False) as what:
        assert what == "system default"
