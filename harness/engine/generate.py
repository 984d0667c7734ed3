"""Batched greedy generation over a suite.

Why batched and length-sorted: on a 2-core CPU the per-step cost of a small model barely grows with
batch size, so packing similar-length prompts together (left padded) multiplies throughput. Why stop at
the end of the JSON object: the contract asks for one object, and every token after it is wasted time.
Greedy decoding with correct attention masks and position ids makes outputs independent of batching.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from harness.engine.attention import shared_prefix
from harness.engine.threads import apply_requested_threads
from harness.suite.suite import GenerationSettings

PRECISIONS = ("float32", "bf16-autocast")


@dataclass(frozen=True)
class Generation:
    """One model output: the text, its token ids and why decoding stopped."""

    text: str
    token_ids: tuple[int, ...]
    stop_reason: str  # "eos" | "json_end" | "max_new_tokens"
    prompt_tokens: int
    logits: torch.Tensor | None = None  # [steps, vocab] for the first `keep_logits` steps, when asked


class JsonObjectTracker:
    """Follows braces and strings in the generated text to see when the top-level JSON object closes."""

    def __init__(self, piece_of: dict[int, str], decode: Any) -> None:
        self._piece_of = piece_of
        self._decode = decode
        self.depth = 0
        self.in_string = False
        self.escape = False
        self.closed = False

    def feed(self, token_id: int) -> bool:
        piece = self._piece_of.get(token_id)
        if piece is None:
            piece = self._decode([token_id])
            self._piece_of[token_id] = piece
        for ch in piece:
            if self.closed:
                return True
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif ch == "\\":
                    self.escape = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"' and self.depth > 0:
                self.in_string = True
            elif ch == "{":
                self.depth += 1
            elif ch == "}" and self.depth > 0:
                self.depth -= 1
                if self.depth == 0:
                    self.closed = True
        return self.closed


class _KeepFirstLogits(LogitsProcessor):
    """Keeps a copy of the next-token logits for the first n steps only (parity needs 16, not all 160)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.kept: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if len(self.kept) < self.n:
            self.kept.append(scores.detach().float().cpu().clone())
        return scores


class _StepHook(StoppingCriteria):
    """Never stops anything: applies, between two decode steps, a thread count asked for by another thread."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        apply_requested_threads()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class _JsonEndCriteria(StoppingCriteria):
    """Per-row stop signal once that row's top-level JSON object has closed."""

    def __init__(self, trackers: list[JsonObjectTracker]) -> None:
        self.trackers = trackers
        self.done = torch.zeros(len(trackers), dtype=torch.bool)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            if not self.done[row] and self.trackers[row].feed(int(token)):
                self.done[row] = True
        return self.done.clone().to(input_ids.device)


def encode_chats(tokenizer: PreTrainedTokenizerBase, chats: Sequence[list[dict[str, str]]]) -> list[list[int]]:
    """Prompt token ids built with the tokenizer's own chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; pass a model folder whose tokenizer defines one")
    out: list[list[int]] = []
    for chat in chats:
        ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        out.append([int(t) for t in ids])
    return out


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar prompt length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: Sequence[list[dict[str, str]]],
    settings: GenerationSettings,
    batch_size: int = 16,
    precision: str = "float32",
    progress: bool = True,
    share_prefix: bool = True,
    keep_logits: int = 0,
    prompt_ids: Sequence[list[int]] | None = None,
    on_batch: Callable[[int, float], None] | None = None,
) -> list[Generation]:
    """Greedy outputs for every chat (or for `prompt_ids`, prompts already encoded in a variant's format),
    in input order.

    `on_batch(rows, seconds)` hears each batch's wall time as it ends (the shared-prefix prefill counts towards
    the first), so the batch times add up to the whole call: what per-case serving latency is derived from.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
    prompts = [list(p) for p in prompt_ids] if prompt_ids is not None else encode_chats(tokenizer, chats)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = _eos_ids(model, tokenizer)
    device = next(model.parameters()).device
    piece_cache: dict[int, str] = {}
    results: list[Generation | None] = [None] * len(prompts)
    batches = plan_batches([len(p) for p in prompts], max(1, batch_size))
    bar = _progress(len(prompts), progress)
    model.eval()
    started = time.perf_counter()
    prefix_len = _common_prefix_len(prompts) if share_prefix and len(prompts) > 1 else 0
    prefix_kv = _prefill(model, [prompts[0][:prefix_len]], None, pad_id, device)[0] if prefix_len else None
    for batch in batches:
        suffixes = [prompts[i][prefix_len:] for i in batch]
        width = max(len(x) for x in suffixes)
        ids = torch.full((len(batch), prefix_len + width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), prefix_len + width), dtype=torch.long)
        if prefix_len:
            ids[:, :prefix_len] = torch.tensor(prompts[batch[0]][:prefix_len])
            mask[:, :prefix_len] = 1
        for row, suffix in enumerate(suffixes):
            ids[row, prefix_len + width - len(suffix) :] = torch.tensor(suffix)
            mask[row, prefix_len + width - len(suffix) :] = 1
        cache = _batch_cache(model, prefix_kv, prefix_len, suffixes, width, settings.max_new_tokens, pad_id, device)
        trackers = [JsonObjectTracker(piece_cache, tokenizer.decode) for _ in batch]
        criteria = StoppingCriteriaList(
            [_StepHook(), *([_JsonEndCriteria(trackers)] if settings.stop_at_json_end else [])]
        )
        keeper = _KeepFirstLogits(keep_logits) if keep_logits > 0 else None
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16-autocast")
        with torch.inference_mode(), autocast, shared_prefix(prefix_len):
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                past_key_values=cache,
                max_new_tokens=settings.max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=pad_id,
                eos_token_id=eos_ids,
                stopping_criteria=criteria,
                use_cache=True,
                return_dict_in_generate=True,
                logits_processor=LogitsProcessorList([keeper]) if keeper is not None else None,
            )
        new = out.sequences[:, ids.shape[1] :].tolist()
        step_logits = torch.stack(keeper.kept, dim=1) if keeper is not None else None
        for row, idx in enumerate(batch):
            gen = _finish(new[row], eos_ids, settings.stop_at_json_end, tokenizer, piece_cache, len(prompts[idx]))
            if step_logits is not None:
                gen = replace(gen, logits=step_logits[row, : max(1, min(keep_logits, len(gen.token_ids)))].clone())
            results[idx] = gen
        bar.update(len(batch))
        if on_batch is not None:
            now = time.perf_counter()
            on_batch(len(batch), now - started)
            started = now
    bar.close()
    return [r for r in results if r is not None]


def _finish(
    tokens: list[int],
    eos_ids: list[int],
    stop_at_json_end: bool,
    tokenizer: PreTrainedTokenizerBase,
    piece_cache: dict[int, str],
    prompt_tokens: int,
) -> Generation:
    """Cut a row at its own stop point: EOS, or the token that closed the JSON object."""
    kept: list[int] = []
    reason = "max_new_tokens"
    replay = JsonObjectTracker(piece_cache, tokenizer.decode) if stop_at_json_end else None
    for tok in tokens:
        if tok in eos_ids:
            reason = "eos"
            break
        kept.append(tok)
        if replay is not None and replay.feed(tok):
            reason = "json_end"
            break
    text = tokenizer.decode(kept, skip_special_tokens=True)
    return Generation(text=text, token_ids=tuple(kept), stop_reason=reason, prompt_tokens=prompt_tokens)


def _common_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens shared by every prompt (system prompt and template head), computed once instead of per case."""
    first = prompts[0]
    n = min(len(p) for p in prompts) - 1  # keep at least one token per case to feed the model
    for p in prompts[1:]:
        i = 0
        while i < n and p[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


KV = list[tuple[torch.Tensor, torch.Tensor]]


PREFILL_CHUNK = 8


def _prefill(
    model: PreTrainedModel, rows: Sequence[Sequence[int]], past: KV | None, pad_id: int, device: torch.device
) -> list[KV]:
    """Key/value states of each row's tokens, continuing after the shared `past` (positions come after it).

    Rows are right padded: a real token never attends to a later pad, so its keys and values are those
    of the row alone. Only the transformer body runs; prefill logits would be thrown away.
    """
    from transformers import DynamicCache

    n, longest = len(rows), max(len(r) for r in rows)
    start = 0 if past is None else past[0][0].shape[2]
    cache = DynamicCache(config=model.config)
    if past is not None:
        for layer_idx, (keys, values) in enumerate(past):
            cache.update(keys.expand(n, -1, -1, -1).contiguous(), values.expand(n, -1, -1, -1).contiguous(), layer_idx)
    ids = torch.full((n, longest), pad_id, dtype=torch.long)
    mask = torch.zeros((n, start + longest), dtype=torch.long)
    mask[:, :start] = 1
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row))
        mask[i, start : start + len(row)] = 1
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    with torch.inference_mode():
        body(input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache, use_cache=True)
    return [
        [
            (layer.keys[i : i + 1, :, start : start + len(row)], layer.values[i : i + 1, :, start : start + len(row)])
            for layer in cache.layers
        ]
        for i, row in enumerate(rows)
    ]


def _batch_cache(
    model: PreTrainedModel,
    prefix_kv: KV | None,
    prefix_len: int,
    suffixes: list[list[int]],
    width: int,
    max_new_tokens: int,
    pad_id: int,
    device: torch.device,
) -> Any:
    """A preallocated cache holding every prompt but its last token, laid out as [prefix | pad | suffix].

    Each row's suffix is prefilled on its own, so no compute is spent on padding; the static cache then
    avoids the per-step concatenation of a growing cache. The last prompt token is left for generate,
    which starts decoding from it.
    """
    from transformers import StaticCache

    filled = prefix_len + width - 1
    rows: list[KV | None] = [None] * len(suffixes)
    todo = [i for i, s in enumerate(suffixes) if len(s) > 1]
    for at in range(0, len(todo), PREFILL_CHUNK):
        chunk = todo[at : at + PREFILL_CHUNK]
        for i, kv in zip(chunk, _prefill(model, [suffixes[i][:-1] for i in chunk], prefix_kv, pad_id, device)):
            rows[i] = kv
    cache = StaticCache(config=model.config, max_cache_len=prefix_len + width + max_new_tokens)
    if filled == 0:
        return cache
    ref_layers = prefix_kv or next(r for r in rows if r is not None)
    for layer_idx, (ref_k, ref_v) in enumerate(ref_layers):
        keys = ref_k.new_zeros((len(suffixes), ref_k.shape[1], filled, ref_k.shape[3]))
        values = ref_v.new_zeros((len(suffixes), ref_v.shape[1], filled, ref_v.shape[3]))
        if prefix_kv is not None:
            keys[:, :, :prefix_len] = prefix_kv[layer_idx][0]
            values[:, :, :prefix_len] = prefix_kv[layer_idx][1]
        for row, kv in enumerate(rows):
            if kv is None:
                continue
            n = kv[layer_idx][0].shape[2]
            keys[row, :, filled - n :] = kv[layer_idx][0][0]
            values[row, :, filled - n :] = kv[layer_idx][1][0]
        cache.update(keys, values, layer_idx)
    return cache


def _eos_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids: set[int] = set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the model and tokenizer define no EOS token; set eos_token_id in generation_config.json")
    return sorted(ids)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generating", unit="case", disable=not enabled, leave=False)


def replay_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: Sequence[list[dict[str, str]]],
    known: Sequence[Generation],
    batch_size: int = 16,
    keep_logits: int = 0,
    prompt_ids: Sequence[list[int]] | None = None,
) -> list[Generation | None]:
    """Check in one forward pass per batch whether `model` would greedily produce each known output.

    Feeding the known tokens and taking the argmax at every position proves, step by step, that greedy
    decoding from the same prompt picks the same tokens and stops at the same place (an EOS stop is
    checked too; JSON-end and length stops depend only on the tokens). A match returns the known
    generation with this model's own logits; a mismatch returns None and the caller decodes that case.
    Used for the merged model, which should reproduce the adapter, at the cost of one prefill instead of
    a full decode.
    """
    from transformers import DynamicCache

    prompts = [list(p) for p in prompt_ids] if prompt_ids is not None else encode_chats(tokenizer, chats)
    eos_ids = set(_eos_ids(model, tokenizer))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    targets = [list(g.token_ids) + ([min(eos_ids)] if g.stop_reason == "eos" else []) for g in known]
    prefix_len = _common_prefix_len(prompts) if len(prompts) > 1 else 0
    model.eval()
    prefix_kv = _prefill(model, [prompts[0][:prefix_len]], None, pad_id, device)[0] if prefix_len else None
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    head = model.get_output_embeddings()
    out: list[Generation | None] = [None] * len(known)
    order = sorted(range(len(known)), key=lambda i: len(prompts[i]) + len(targets[i]))
    for start in range(0, len(order), max(1, batch_size)):
        apply_requested_threads()
        batch = order[start : start + batch_size]
        rows = [prompts[i][prefix_len:] + targets[i] for i in batch]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(batch), longest), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), prefix_len + longest), dtype=torch.long)
        mask[:, :prefix_len] = 1
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
            mask[r, prefix_len : prefix_len + len(row)] = 1
        cache = DynamicCache(config=model.config)
        if prefix_kv is not None:
            for layer_idx, (k, v) in enumerate(prefix_kv):
                cache.update(
                    k.expand(len(batch), -1, -1, -1).contiguous(),
                    v.expand(len(batch), -1, -1, -1).contiguous(),
                    layer_idx,
                )
        with torch.inference_mode():
            hidden = body(
                input_ids=ids.to(device), attention_mask=mask.to(device), past_key_values=cache, use_cache=True
            ).last_hidden_state
            for r, i in enumerate(batch):
                first = len(prompts[i]) - prefix_len - 1  # position whose output is the first generated token
                steps = len(targets[i])
                if steps == 0:
                    continue
                logits = head(hidden[r, first : first + steps]).float()
                picked = logits.argmax(-1).tolist()
                want = targets[i]
                same = picked[: len(known[i].token_ids)] == want[: len(known[i].token_ids)]
                if known[i].stop_reason == "eos":
                    same = same and picked[-1] in eos_ids
                if same:
                    out[i] = replace(
                        known[i],
                        logits=logits[: max(1, min(keep_logits, len(known[i].token_ids)))].cpu().clone()
                        if keep_logits
                        else None,
                    )
    return out
