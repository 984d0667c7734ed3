"""CPU attention paths: decoding against the filled part of a static cache, and bf16 training attention.

Why: generation preallocates a static cache of prompt + max_new_tokens positions and transformers' SDPA
path attends over all of them, masking the unfilled tail. On the 2-core CPU that made attention the
largest single cost of a decode step (352 of 804 ms at batch 154, profiled). For a single query token
this path reads keys and values only up to the last position any row may attend to, and groups the
query heads by their shared key/value head instead of repeating keys and values. 632 ms a step at
batch 154 against 804 (same model, same cache). Every other call (prefill, training, sliding-window
softcaps, attention sinks) goes to transformers' own SDPA function unchanged.

Training (`TRAIN_NAME`, CPU bf16 autocast): transformers' eager attention repeats keys and values for
every query head, then moves the score matrix between bf16 and fp32 three times (bf16 scores plus an fp32
mask, an fp32 softmax, a bf16 cast for the value matmul); that was 18% of a demo step. This path groups
query heads by key/value head and keeps the scores in bf16: the softmax accumulates in fp32 internally
and rounds its output to bf16, the same rounding autocast applied before the value matmul.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "harness_sdpa"
TRAIN_NAME = "harness_bf16_train"


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
    plain = kwargs.get("softcap") is None and kwargs.get("s_aux") is None and not (module.training and dropout)
    if q_len != 1 or attention_mask is None or attention_mask.dtype != torch.bool or attention_mask.dim() != 4 or heads % kv_heads or not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    # columns some row may attend to: everything after the last one is the cache's unfilled tail
    used = attention_mask.reshape(-1, attention_mask.shape[-1]).any(0).nonzero()
    length = int(used.max()) + 1 if len(used) else 1
    mask = attention_mask[..., :length]
    # query head h reads key/value head h // (heads // kv_heads), as transformers' repeat_kv lays them out
    q = query.reshape(batch, kv_heads, heads // kv_heads, head_dim)
    scores = torch.matmul(q, key[:, :, :length].transpose(-1, -2))
    scores.mul_(head_dim**-0.5 if scaling is None else scaling)
    scores.masked_fill_(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value[:, :, :length])
    return out.reshape(batch, heads, 1, head_dim).transpose(1, 2), None


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
    plain = kwargs.get("softcap") is None and kwargs.get("s_aux") is None
    if kv_len != q_len or heads % kv_heads or not plain or (attention_mask is not None and (attention_mask.dtype != torch.bool or attention_mask.dim() != 4)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    dtype = torch.bfloat16 if torch.is_autocast_enabled(query.device.type) else query.dtype
    groups = heads // kv_heads
    scale = head_dim**-0.5 if scaling is None else scaling
    # [batch, kv_heads, groups * q_len, head_dim]: a query head's rows sit with its key/value head
    q = (query * scale).to(dtype).reshape(batch, kv_heads, groups * q_len, head_dim)
    scores = torch.matmul(q, key.to(dtype).transpose(-1, -2)).view(batch, kv_heads, groups, q_len, kv_len)
    if attention_mask is None:  # no padding: transformers leaves causality to the attention function
        attention_mask = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril()[None, None]
    # an additive mask, not masked_fill: its backward is the identity (masked_fill's costs a second pass)
    bias = torch.zeros(attention_mask.shape, dtype=scores.dtype, device=scores.device).masked_fill_(~attention_mask, float("-inf"))
    scores = scores + bias.unsqueeze(1)
    probs = torch.softmax(scores, dim=-1)
    if dropout and module.training:
        probs = torch.nn.functional.dropout(probs, p=dropout)
    out = torch.matmul(probs.view(batch, kv_heads, groups * q_len, kv_len), value.to(dtype))
    return out.view(batch, heads, q_len, head_dim).transpose(1, 2), None


AttentionInterface.register(NAME, decode_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)
AttentionInterface.register(TRAIN_NAME, train_attention)
AttentionMaskInterface.register(TRAIN_NAME, sdpa_mask)
