"""CPU attention paths: decoding against the filled part of a static cache, and bf16 training attention.

Why: generation preallocates a static cache of prompt + max_new_tokens positions and transformers' SDPA
path attends over all of them, masking the unfilled tail: on the 2-core CPU that made attention the
largest single cost of a decode step (352 of 804 ms at batch 154, profiled). Decoding one token is bound
by reading the cache (8 GB/s here), so this path reads as little of it as it can: only up to the last
position any row attends to, the prompt prefix shared by every row once for the whole batch (declared by
generate() through `shared_prefix`), and each run of rows from its first attended position, which skips
most of the left padding. It runs torch's fused CPU attention kernel on each piece and merges the pieces
exactly through their log-sum-exps. Measured on the demo suite (batch 154, 84-token shared prefix, row
suffixes of 22-242 tokens): 284 ms of attention per step with one masked product over the filled
columns, 174-189 ms with this; a whole 160-token decode of the suite 145.6 s against 135.1 s. Every other
call (prefill, training, softcaps, attention sinks, mixed dtypes) goes to transformers' SDPA unchanged.

Training (`TRAIN_NAME`, CPU bf16 autocast): transformers' eager attention repeats keys and values for
every query head, then moves the score matrix between bf16 and fp32 three times (bf16 scores plus an fp32
mask, an fp32 softmax, a bf16 cast for the value matmul); that was 18% of a demo step. This path groups
query heads by key/value head and keeps the scores in bf16: the softmax accumulates in fp32 internally
and rounds its output to bf16, the same rounding autocast applied before the value matmul.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "harness_sdpa"
DECODE_VERSION = 2  # part of the result cache key: bump whenever decode_attention computes differently
TRAIN_NAME = "harness_bf16_train"


_SHARED_PREFIX: ContextVar[int] = ContextVar("harness_shared_prefix", default=0)
ROW_GROUPS = 4
_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@contextmanager
def shared_prefix(length: int) -> Iterator[None]:
    """Declare that every row's first `length` cache positions hold the same keys and values.

    generate() lays its static cache out as [shared prefix | left pad | row suffix | generated] and says
    so here; decode attention then reads the prefix once for the whole batch instead of once per row.
    """
    token = _SHARED_PREFIX.set(max(0, int(length)))
    try:
        yield
    finally:
        _SHARED_PREFIX.reset(token)


def decode_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns [batch, 1, heads, head_dim] and no weights."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads = key.shape[1]
    usual = (
        q_len == 1
        and query.device.type == "cpu"
        and query.dtype == key.dtype == value.dtype
        and not (module.training and dropout)
    )
    if not usual or not _boolean_4d(attention_mask, required=True) or heads % kv_heads or _special(kwargs):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    scale = head_dim**-0.5 if scaling is None else scaling
    plan = _plan_for(attention_mask, batch, query.dtype)
    q = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    out = torch.empty_like(q)
    lse = q.new_empty((batch, kv_heads, heads // kv_heads), dtype=torch.float32)
    for lo, hi, first in plan.runs:
        part, part_lse = _flash(
            q[lo:hi],
            key[lo:hi, :, first : plan.length],
            value[lo:hi, :, first : plan.length],
            attn_mask=plan.bias[lo:hi, ..., first:],
            scale=scale,
        )
        out[lo:hi] = part
        lse[lo:hi] = part_lse.reshape(out[lo:hi].shape[:3])
    if plan.prefix:
        out = _add_shared_prefix(q, key, value, plan.prefix, scale, out, lse)
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2), None


@dataclass(frozen=True)
class _Plan:
    """How one decode step reads the cache; the same for every layer of that step (one mask per forward)."""

    length: int  # columns up to the last one any row attends to; the rest is the cache's unfilled tail
    prefix: int  # shared columns read once for the batch (0: none)
    bias: torch.Tensor  # [batch, 1, 1, length] additive mask (the kernel takes no boolean one)
    runs: tuple[tuple[int, int, int], ...]  # (first row, end row, first column read) per run of rows


_last_plan: list[tuple[torch.Tensor, int, torch.dtype, _Plan]] = []  # holds the mask, so `is` cannot see a reused id


def _plan_for(mask: torch.Tensor, batch: int, dtype: torch.dtype) -> _Plan:
    """The step's plan, computed at the first layer and reused by the others (transformers builds one mask
    per forward and hands that same tensor to every layer; masks are not edited in place).

    Decoding is bound by memory reads here (8 GB/s measured), so what counts is how many cache positions
    are read. Rows are split into ROW_GROUPS runs of consecutive rows; a run is read from the first column
    any of its rows attends to after the shared prefix, which skips most of the left padding when rows are
    ordered by prompt length (generate's order). Any order is correct, only slower.
    """
    declared = _SHARED_PREFIX.get()
    if _last_plan:
        held, held_declared, held_dtype, plan = _last_plan[0]
        if held is mask and held_declared == declared and held_dtype == dtype:
            return plan
    rows = mask[:, 0, 0, :].expand(batch, -1)
    used = rows.any(0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    rows = rows[:, :length]
    prefix = min(declared, length - 1)
    starts = rows[:, prefix:].to(torch.int8).argmax(-1) + prefix  # each row's first attended column after it
    if prefix and not (bool(rows[:, :prefix].all()) and bool(rows[torch.arange(batch), starts].all())):
        prefix = 0  # a row misses part of the declared prefix or sees nothing after it: no split
        starts = rows.to(torch.int8).argmax(-1)
    bias = torch.zeros(rows.shape, dtype=dtype).masked_fill_(~rows, float("-inf"))[:, None, None, :]
    bounds = sorted({round(i * batch / ROW_GROUPS) for i in range(ROW_GROUPS + 1)})
    runs = tuple((lo, hi, int(starts[lo:hi].min())) for lo, hi in zip(bounds, bounds[1:]))
    plan = _Plan(length, prefix, bias, runs)
    _last_plan[:] = [(mask, declared, dtype, plan)]
    return plan


def _add_shared_prefix(
    q: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    prefix: int,
    scale: float,
    out: torch.Tensor,
    lse: torch.Tensor,
) -> torch.Tensor:
    """Fold attention over the shared prefix (row 0's copy, read once for the whole batch) into `out`.

    All rows' queries of a key/value head attend to the same prefix keys, so they form one query block;
    the two partial softmaxes are merged exactly through their log-sum-exps.
    """
    batch, kv_heads, groups, head_dim = q.shape
    block = q.permute(1, 0, 2, 3).reshape(1, kv_heads, batch * groups, head_dim)
    pre, pre_lse = _flash(block, key[:1, :, :prefix], value[:1, :, :prefix], scale=scale)
    pre = pre.reshape(kv_heads, batch, groups, head_dim).permute(1, 0, 2, 3)
    pre_lse = pre_lse.reshape(kv_heads, batch, groups).permute(1, 0, 2)
    total = torch.logaddexp(lse, pre_lse)
    return out * torch.exp(lse - total).unsqueeze(-1).to(out.dtype) + pre * torch.exp(pre_lse - total).unsqueeze(-1).to(
        out.dtype
    )


def train_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Full-sequence attention without a cache; other calls go to transformers' SDPA function."""
    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    if kv_len != q_len or heads % kv_heads or _special(kwargs) or not _boolean_4d(attention_mask, required=False):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    dtype = torch.bfloat16 if torch.is_autocast_enabled(query.device.type) else query.dtype
    groups = heads // kv_heads
    scale = head_dim**-0.5 if scaling is None else scaling
    # [batch, kv_heads, groups * q_len, head_dim]: a query head's rows sit with its key/value head
    q = (query * scale).to(dtype).reshape(batch, kv_heads, groups * q_len, head_dim)
    scores = torch.matmul(q, key.to(dtype).transpose(-1, -2)).view(batch, kv_heads, groups, q_len, kv_len)
    if attention_mask is None:  # no padding: transformers leaves causality to the attention function
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()[None, None]
    # an additive mask, not masked_fill: its backward is the identity (masked_fill's costs a second pass)
    bias = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(
        ~attention_mask, float("-inf")
    )
    scores = scores + bias.unsqueeze(1)
    probs = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(batch, kv_heads, groups * q_len, kv_len), value.to(dtype))
    return out.view(batch, heads, q_len, head_dim).transpose(1, 2), None


def _special(kwargs: dict[str, Any]) -> bool:
    """Logit softcapping or attention sinks: left to transformers' SDPA function, which handles them."""
    return kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None


def _boolean_4d(mask: torch.Tensor | None, required: bool) -> bool:
    """A mask these paths read: boolean [batch, heads, q_len, kv_len], or none where none is allowed."""
    return (mask is None and not required) or (mask is not None and mask.dtype == torch.bool and mask.dim() == 4)


AttentionInterface.register(NAME, decode_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
AttentionInterface.register(TRAIN_NAME, train_attention)
AttentionMaskInterface.register(TRAIN_NAME, sdpa_mask)
