"""CPU training fast path: each LoRA linear layer as one autograd node.

PEFT computes a LoRA layer as `base(x) + lora_B(lora_A(x)) * scaling`: under CPU bf16 autocast that is
two full-size elementwise passes forward (the scaling and the sum) and one backward (the scaling), plus a
full-size gradient sum where the base and LoRA branches meet again. These passes are memory bound, while
the GEMMs run on AMX at up to 1.5 TFLOP/s: on the 135M demo model (batch 8 x 288 tokens) the fused layers
made a training step 10% faster (median of 10 interleaved steps each, 4.73 against 5.28 s).
`LoraLinear` folds the LoRA term into the base GEMM's output with `addmm_` and the LoRA input gradient
into the base input gradient the same way, and applies the scaling to the rank-r factors only. Same
function, same gradients (tested against PEFT in fp32); in bf16 the sums are rounded once instead of
twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import MethodType
from typing import Any

import torch


class LoraLinear(torch.autograd.Function):
    """y = x W^T + b + s (x A^T) B^T, computed in `dtype`; gradients for x, the bias (if trainable), A and B."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
        dtype: torch.dtype,
    ) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).to(dtype)
        w, a_w, b_w = weight.to(dtype), lora_a.to(dtype), lora_b.to(dtype)
        a = x2 @ a_w.t()
        y = torch.nn.functional.linear(x2, w, None if bias is None else bias.to(dtype))
        y.addmm_(a, b_w.t(), alpha=scaling)
        ctx.save_for_backward(x2, w, a_w, b_w, a)
        ctx.scaling, ctx.shape = scaling, shape
        ctx.dtypes = (x.dtype, lora_a.dtype, lora_b.dtype, None if bias is None else bias.dtype)
        return y.view(*shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x2, w, a_w, b_w, a = ctx.saved_tensors
        x_dtype, a_dtype, b_dtype, bias_dtype = ctx.dtypes
        dy2 = dy.reshape(-1, dy.shape[-1]).to(x2.dtype)
        t = (dy2 @ b_w).mul_(ctx.scaling)  # gradient of the rank-r activation, scaled: (N, r)
        dx = (dy2 @ w).addmm_(t, a_w) if ctx.needs_input_grad[0] else None
        d_a = (t.t() @ x2).to(a_dtype) if ctx.needs_input_grad[3] else None
        d_b = (dy2.t() @ (a * ctx.scaling)).to(b_dtype) if ctx.needs_input_grad[4] else None
        d_bias = dy2.sum(0).to(bias_dtype) if ctx.needs_input_grad[2] and bias_dtype is not None else None
        return None if dx is None else dx.view(ctx.shape).to(x_dtype), None, d_bias, d_a, d_b, None, None


def fusable(layer: torch.nn.Module) -> bool:
    """A plain LoRA linear layer: one adapter, no dropout, no DoRA or other variant, no LoRA bias, not merged."""
    from peft.tuners.lora.layer import Linear

    if type(layer) is not Linear or layer.merged or getattr(layer, "fan_in_fan_out", False):
        return False
    names = list(layer.active_adapters)
    if len(names) != 1 or names[0] not in layer.lora_A or names[0] in layer.lora_variant:
        return False
    name = names[0]
    return (
        isinstance(layer.get_base_layer(), torch.nn.Linear)
        and isinstance(layer.lora_dropout[name], torch.nn.Identity)
        and not getattr(layer, "lora_bias", {}).get(name, False)
    )


def _fused_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """The layer's forward in the CPU autocast dtype, or in x's dtype where the weights share it; anything
    else (adapter switched off, extra arguments, mixed dtypes without autocast) goes to PEFT's forward."""
    base = self.get_base_layer()
    dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
    if (
        args
        or kwargs
        or self.disable_adapters
        or not fusable(self)
        or (dtype == x.dtype and base.weight.dtype != dtype)
    ):
        return type(self).forward(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    return LoraLinear.apply(
        x, base.weight, base.bias, self.lora_A[name].weight, self.lora_B[name].weight, float(self.scaling[name]), dtype
    )


@contextmanager
def fused_lora_linears(model: torch.nn.Module, enabled: bool) -> Iterator[int]:
    """Route every fusable LoRA layer of `model` through `LoraLinear` for the duration; yields how many."""
    layers = [m for m in model.modules() if fusable(m)] if enabled else []
    for m in layers:
        m.forward = MethodType(_fused_forward, m)
    try:
        yield len(layers)
    finally:
        for m in layers:
            del m.forward
