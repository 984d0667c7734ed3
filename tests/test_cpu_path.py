"""The CPU training fast path's fused LoRA layer computes PEFT's function and gradients."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.cpu_path import LoraLinear, fusable, fused_lora_linears


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_lora_gradients_are_exact_in_float64(with_bias: bool) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(5, 6, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64, requires_grad=True) if with_bias else None
    a = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, bias, a, b: LoraLinear.apply(x, weight, bias, a, b, 1.5, torch.float64), (x, bias, a, b)
    )
    expected = x @ weight.t() + (0 if bias is None else bias) + 1.5 * (x @ a.t()) @ b.t()
    torch.testing.assert_close(LoraLinear.apply(x, weight, bias, a, b, 1.5, torch.float64), expected)


def _peft_model(tiny_model_dir: Path, **lora: Any) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32, attn_implementation="eager")
    settings = {
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "target_modules": "all-linear",
        "init_lora_weights": False,
        **lora,
    }
    return get_peft_model(base, LoraConfig(**settings)).train()


def _loss_and_grads(model: Any, ids: torch.Tensor, autocast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_fused_layers_match_peft_on_a_model(tiny_model_dir: Path) -> None:
    model = _peft_model(tiny_model_dir)
    ids = torch.randint(0, 1000, (2, 16), generator=torch.Generator().manual_seed(0))
    loss, grads = _loss_and_grads(model, ids, autocast=False)
    with fused_lora_linears(model, enabled=True) as n:
        assert n == sum(1 for m in model.modules() if fusable(m)) > 0
        fused_loss, fused_grads = _loss_and_grads(model, ids, autocast=False)
        bf16_loss, bf16_grads = _loss_and_grads(model, ids, autocast=True)
        with model.disable_adapter():  # switched off: PEFT's own forward, the base model alone
            base_loss = model(input_ids=ids, labels=ids).loss.detach()
    torch.testing.assert_close(fused_loss, loss)
    for name, g in grads.items():
        torch.testing.assert_close(fused_grads[name], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")
    assert set(bf16_grads) == set(grads)
    torch.testing.assert_close(bf16_loss, loss, rtol=2e-2, atol=2e-2)
    assert not torch.equal(base_loss, loss), "with the adapter off the loss is the base model's"
    assert all("forward" not in vars(m) for m in model.modules()), "the layers get PEFT's forward back"
    with fused_lora_linears(model, enabled=False) as n:
        assert n == 0


def test_layers_with_dropout_or_dora_stay_on_peft(tiny_model_dir: Path) -> None:
    assert not any(fusable(m) for m in _peft_model(tiny_model_dir, lora_dropout=0.1).modules())
    assert not any(fusable(m) for m in _peft_model(tiny_model_dir, use_dora=True).modules())
