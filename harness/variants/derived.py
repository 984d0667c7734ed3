"""Is a derived variant (a merged folder, a GGUF file) what it claims to be? Causes, not just symptoms.

Behavioural parity (harness.parity) says *that* a merged model or a GGUF drifts from the adapter it came
from; these checks say *why*, from the weights and the tokenizer:

- the weight change the derived model carries, projected on the adapter's own delta (what PEFT's merge adds:
  B·A·scaling for LoRA and rsLoRA; for DoRA, m·(W+B·A·s)/||W+B·A·s|| minus W, one norm per output feature):
  a coefficient near 1 means "base + this adapter", near 0 "the base without the adapter" (a GGUF
  converted from the base instead of the merge), in between "another checkpoint of the same training run
  or another adapter";
- what is left after that projection, against the rounding its storage type explains, and against the
  rounding of an nf4 round trip of the base (an adapter merged into nf4-dequantized weights: a small,
  expected divergence, not a broken merge);
- tokenizer identity: vocabulary, special tokens and chat template (a merged folder whose tokenizer lost
  its chat template is prompted differently once served).
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import torch

BETA_ABSENT = 0.1  # below: the adapter's change is not in the weights
BETA_TOLERANCE = 0.1  # |beta - 1| within this: the adapter's change is there
RESIDUAL_SLACK = 2.0  # a residual up to this multiple of the explained rounding counts as rounding
NF4_MATCH = 0.5  # share of the residual an nf4 round trip of the base explains, for that diagnosis
OTHER_BASE = 0.05  # relative change of an untouched tensor beyond which the base itself differs


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def tokenizer_summary(tokenizer: Any) -> dict[str, Any]:
    """What of a tokenizer changes prompts or stopping, for the report."""
    template = getattr(tokenizer, "chat_template", None) or ""
    return {
        "vocab_size": len(tokenizer.get_vocab()),
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "bos_token": tokenizer.bos_token,
        "chat_template_sha256": _sha(template) if template else None,
        "added_tokens": len(getattr(tokenizer, "added_tokens_decoder", {}) or {}),
    }


def tokenizer_findings(name: str, tokenizer: Any, ref_name: str, ref: Any, uses_chat: bool) -> list[dict[str, Any]]:
    """Differences between a variant's tokenizer and the one it should share, each with the risk it carries."""
    out: list[dict[str, Any]] = []
    a, b = tokenizer_summary(ref), tokenizer_summary(tokenizer)

    def add(level: str, code: str, message: str) -> None:
        out.append({"level": level, "code": code, "variant": name, "message": message})

    va, vb = ref.get_vocab(), tokenizer.get_vocab()
    if va != vb:
        extra = sorted(set(vb) - set(va))[:5]
        moved = sum(1 for t in set(va) & set(vb) if va[t] != vb[t])
        add(
            "error",
            "tokenizer_vocab_differs",
            f"{name}'s vocabulary differs from {ref_name}'s ({b['vocab_size']} vs {a['vocab_size']} tokens, "
            f"{moved} ids moved{', new: ' + ', '.join(map(repr, extra)) if extra else ''}): token ids mean other text, "
            "so its outputs cannot be compared token by token and added tokens need trained embeddings",
        )
    for key in ("eos_token", "pad_token", "bos_token"):
        if a[key] != b[key]:
            level = "error" if key == "eos_token" else "warning"
            add(
                level,
                f"tokenizer_{key}_differs",
                f"{name}'s {key.replace('_', ' ')} is {b[key]!r}, {ref_name}'s {a[key]!r}: "
                + (
                    "generation stops at another token, so answers may run on or stop early"
                    if key == "eos_token"
                    else "padding or the first token of each prompt changes"
                ),
            )
    if a["chat_template_sha256"] != b["chat_template_sha256"]:
        if b["chat_template_sha256"] is None:
            add(
                "error" if uses_chat else "warning",
                "chat_template_missing",
                f"{name}'s tokenizer has no chat template while {ref_name}'s has one: "
                "served through a chat API it is prompted differently than it was trained and measured "
                "(the usual cause of a merged model that 'behaves as if never trained'); "
                "copy tokenizer_config.json / chat_template.jinja from the adapter's folder into it",
            )
        else:
            add(
                "error" if uses_chat else "warning",
                "chat_template_differs",
                f"{name}'s chat template differs from {ref_name}'s: the same conversation becomes other prompt tokens; "
                "ship the template the candidate was trained with",
            )
    return out


def _hf_key(module_name: str) -> str:
    """PEFT's module path -> the checkpoint's tensor name of that layer's weight."""
    name = module_name.removeprefix("base_model.model.")
    return f"{name}.weight"


class AdapterDeltas(dict[str, tuple[torch.Tensor, torch.Tensor]]):
    """tensor name -> (base weight, what PEFT's merge adds), plus `lowrank`: B·A·scaling alone for the layers whose
    merge is more than that (DoRA), so a merge that dropped DoRA's magnitude rescale can be named as such."""

    def __init__(self, adapter: str = "") -> None:
        super().__init__()
        self.adapter = adapter
        self.lowrank: dict[str, torch.Tensor] = {}
        self.variant_layers: dict[str, Any] = {}  # tensor name -> the PEFT layer, where the merge is not W + B·A·s

    def nf4_residual(self, key: str) -> torch.Tensor | None:
        """How a merge into the nf4 round trip of the base differs from the true merge, for this layer.

        A LoRA merge is linear in W, so that is the nf4 error itself; DoRA's rescale depends on W, so the layer
        is merged again into the round-tripped weight (None without bitsandbytes).
        """
        base_w, delta = self[key]
        q = _nf4_error(base_w)
        layer = self.variant_layers.get(key)
        if q is None or layer is None:
            return q
        rounded = base_w.detach().float().cpu() + q
        return q + merged_delta(layer, self.adapter, weight=rounded).cpu() - delta.float().cpu()


def merged_delta(module: Any, adapter: str, weight: torch.Tensor | None = None) -> torch.Tensor:
    """What PEFT's merge of `adapter` adds to this layer's weight (or to `weight` in its place), in float32;
    the resident layer is left untouched.

    Plain LoRA and rsLoRA merge as W + B·A·scaling, which `get_delta_weight` returns. A LoRA variant (DoRA:
    W' = m * (W + B·A·s) / ||W + B·A·s|| per output row) merges otherwise and `get_delta_weight` is only its
    low-rank part, so the layer is merged the way PEFT merges it, on a float32 copy (bf16 would round W itself
    by more than a small delta), and W' - W is returned.
    """
    with torch.no_grad():
        if weight is None and not has_variant(module, adapter):
            return module.get_delta_weight(adapter).detach().float()
        layer = copy.deepcopy(module).float()
        w = layer.get_base_layer().weight
        if weight is not None:
            w.data = weight.to(device=w.device, dtype=torch.float32).clone()
        start = w.detach().clone()
        layer.merge(safe_merge=True, adapter_names=[adapter])
        return layer.get_base_layer().weight.detach().float() - start


def has_variant(module: Any, adapter: str) -> bool:
    """Whether PEFT merges this layer's adapter by other math than W + B·A·scaling (DoRA and the other variants)."""
    return adapter in (getattr(module, "lora_variant", None) or {}) or is_dora(module, adapter)


def is_dora(module: Any, adapter: str) -> bool:
    """A DoRA layer carries a magnitude vector for the adapter (PEFT's own marker, in every version with DoRA)."""
    return adapter in (getattr(module, "lora_magnitude_vector", None) or {})


def adapter_deltas(peft_model: Any, adapter: str) -> AdapterDeltas:
    """tensor name -> (base weight, the adapter's delta) for every LoRA layer of one adapter, as PEFT merges it."""
    out = AdapterDeltas(adapter)
    for module_name, module in peft_model.named_modules():
        if (
            hasattr(module, "get_delta_weight")
            and hasattr(module, "base_layer")
            and adapter in getattr(module, "lora_A", {})
        ):
            key = _hf_key(module_name)
            out[key] = (module.base_layer.weight.detach(), merged_delta(module, adapter))
            if has_variant(module, adapter):
                out.variant_layers[key] = module
            if is_dora(module, adapter):
                with torch.no_grad():
                    out.lowrank[key] = module.get_delta_weight(adapter).detach().float()
    return out


def _nf4_error(weight: torch.Tensor) -> torch.Tensor | None:
    """dequantize(quantize_nf4(W)) - W, as QLoRA's 4-bit base sees it (bitsandbytes, blocksize 64)."""
    try:
        import bitsandbytes.functional as bnbf
    except Exception:  # noqa: BLE001 - bitsandbytes missing or broken: the diagnosis says it could not tell
        return None
    w = weight.detach().float().cpu().contiguous()
    q, state = bnbf.quantize_4bit(w, quant_type="nf4", blocksize=64)
    return bnbf.dequantize_4bit(q, state).float() - w


def _other_base_bound(base_w: torch.Tensor, file_type: str | None) -> float:
    """How far an untouched matrix may move before the base itself differs: OTHER_BASE, or for a block-quantized
    GGUF type 1.5x that type's own round trip of this matrix plus 1% (only computed where OTHER_BASE is passed)."""
    if file_type is None or file_type.upper() in ("F32", "ALL_F32", "F16", "BF16"):
        return OTHER_BASE
    from harness.models.gguf_quantize import round_trip_rel

    rt = round_trip_rel(base_w.float().cpu().numpy(), file_type)
    return OTHER_BASE if rt is None else max(OTHER_BASE, 1.5 * rt + 0.01)


def weight_diagnosis(
    name: str,
    derived_state: dict[str, torch.Tensor],
    base_state: dict[str, torch.Tensor],
    deltas: dict[str, tuple[torch.Tensor, torch.Tensor]],
    adapter: str | None,
    storage: str,
    quantized: bool = False,
    lowrank: dict[str, torch.Tensor] | None = None,
    file_type: str | None = None,
) -> dict[str, Any]:
    """Compare a derived model's weights with base + the adapter's delta; a finding names the likely cause.

    `deltas` is empty when the chain has no adapter (a GGUF of the base itself): then every tensor should
    equal the base's within the storage type's rounding. `storage` names that type, for the messages.
    `quantized` (GGUF block formats): rounding differs per tensor type, so only the projection decides.
    `lowrank` (default: `deltas.lowrank` of an `AdapterDeltas`): B·A·scaling of the DoRA layers, whose true delta
    also holds the magnitude rescale; a derived model that is base + that alone was merged as if it were plain LoRA.
    An `AdapterDeltas` also says what a merge into nf4-dequantized weights leaves, per layer (`nf4_residual`).
    `file_type` (a GGUF's, e.g. Q4_0): an untouched matrix may move by that type's own round trip (~9% at 4
    bits) before it counts as another base.
    """
    lowrank = getattr(deltas, "lowrank", {}) if lowrank is None else lowrank
    nf4_residual = getattr(deltas, "nf4_residual", None)  # DoRA: the nf4 error as its rescale transforms it
    acc = {
        "dot": 0.0,
        "ee": 0.0,
        "dd": 0.0,
        "rr": 0.0,
        "noise": 0.0,
        "nf4_dot": 0.0,
        "nf4_nn": 0.0,
        "l_dot": 0.0,
        "ll": 0.0,
        "l_rr": 0.0,
        "l_noise": 0.0,
    }
    untouched_rel: list[tuple[float, str]] = []
    missing = [k for k in list(deltas) + list(base_state) if k not in derived_state]
    shape_mismatch: list[str] = []
    with torch.no_grad():
        for key, base_w in base_state.items():
            d = derived_state.get(key)
            if d is None or key in deltas:
                continue
            if d.shape != base_w.shape:
                shape_mismatch.append(key)
                continue
            if base_w.ndim < 2:
                continue  # norms and biases stay in full precision in every export: they say nothing of rounding
            b = base_w.float().cpu()
            rel = float((d.float().cpu() - b).norm() / b.norm().clamp_min(1e-12))
            untouched_rel.append((rel, key))
        noise_rel = sorted(r for r, _ in untouched_rel)[len(untouched_rel) // 2] if untouched_rel else 0.0
        for key, (base_w, delta) in deltas.items():
            d = derived_state.get(key)
            if d is None:
                continue
            if d.shape != base_w.shape:
                shape_mismatch.append(key)
                continue
            b = base_w.float().cpu()
            e = delta.float().cpu()
            change = d.float().cpu() - b
            acc["dot"] += float((change.double() * e.double()).sum())
            acc["ee"] += float(e.double().pow(2).sum())
            acc["dd"] += float(change.double().pow(2).sum())
            resid = change - e
            acc["rr"] += float(resid.double().pow(2).sum())
            acc["noise"] += (noise_rel * float((b + e).norm())) ** 2
            if lowrank:  # the same sums against what a plain-LoRA merge of it would have added
                el = lowrank[key].float().cpu() if key in lowrank else e
                acc["l_dot"] += float((change.double() * el.double()).sum())
                acc["ll"] += float(el.double().pow(2).sum())
                acc["l_rr"] += float((change - el).double().pow(2).sum())
                acc["l_noise"] += (noise_rel * float((b + el).norm())) ** 2
            q = nf4_residual(key) if nf4_residual is not None else _nf4_error(base_w)
            if q is not None:
                acc["nf4_dot"] += float((resid.double() * q.double()).sum())
                acc["nf4_nn"] += float(q.double().pow(2).sum())
    out: dict[str, Any] = {
        "adapter": adapter,
        "storage": storage,
        "tensors_compared": len(deltas) + len(untouched_rel),
        "untouched_median_rel_change": noise_rel,
        "dora_layers": len(lowrank),
        "findings": [],
    }

    def finding(level: str, code: str, message: str) -> None:
        out["findings"].append({"level": level, "code": code, "variant": name, "message": message})

    if missing or shape_mismatch:
        finding(
            "error",
            "derived_tensors_mismatch",
            f"{name} lacks {len(missing)} and reshapes {len(shape_mismatch)} of the base's tensors "
            f"(e.g. {(missing + shape_mismatch)[0]}): it is not this base model's architecture",
        )
        return out
    worst = max(untouched_rel, default=(0.0, ""))
    out["untouched_max_rel_change"] = worst[0]
    beyond = [
        (rel, key)
        for rel, key in untouched_rel
        if rel > OTHER_BASE and rel > _other_base_bound(base_state[key], file_type)
    ]
    if beyond:
        rel, key = max(beyond)
        finding(
            "error",
            "derived_other_base",
            f"{name}'s {key}, which no adapter touches, differs from the base by {rel:.1%}: "
            "it was made from another base model or checkpoint",
        )
    if not deltas:
        out["verdict"] = "other" if beyond else "base"
        return out
    if acc["ee"] == 0.0:
        out["verdict"] = "adapter_is_zero"
        return out
    beta = acc["dot"] / acc["ee"]
    resid_rel = (acc["rr"] / acc["ee"]) ** 0.5
    noise = (acc["noise"] / acc["ee"]) ** 0.5
    out.update(
        beta=beta, residual_rel=resid_rel, rounding_rel=noise, delta_rel=(acc["ee"] / max(acc["dd"], 1e-30)) ** 0.5
    )
    nf4_gamma = acc["nf4_dot"] / acc["nf4_nn"] if acc["nf4_nn"] else None
    out["nf4_gamma"] = nf4_gamma
    matches = abs(beta - 1) <= BETA_TOLERANCE and (quantized or resid_rel <= max(RESIDUAL_SLACK * noise, 0.01))
    if lowrank and acc["ll"] > 0.0:
        l_beta = acc["l_dot"] / acc["ll"]
        l_resid = (acc["l_rr"] / acc["ll"]) ** 0.5
        out.update(lowrank_beta=l_beta, lowrank_residual_rel=l_resid)
        l_fits = abs(l_beta - 1) <= BETA_TOLERANCE and (
            l_resid <= max(RESIDUAL_SLACK * (acc["l_noise"] / acc["ll"]) ** 0.5, 0.01)
            or (quantized and l_resid < 0.5 * resid_rel)
        )
        if not matches and l_fits:
            out["verdict"] = "dora_magnitude_missing"
            finding(
                "error",
                "derived_dora_magnitude_missing",
                f"{name}'s weights are the base plus only the low-rank part B·A·scaling of DoRA adapter {adapter} "
                f"(projection {l_beta:.3f}, residual {l_resid:.2%}) in its {len(lowrank)} DoRA layers: "
                "the merge left out DoRA's magnitude rescale m·(W+B·A·s)/||W+B·A·s||, "
                "so it is not the model the adapter defines; "
                "merge with PEFT's merge_and_unload (it applies the rescale) or a converter that supports use_dora",
            )
            return out
    if abs(beta) < BETA_ABSENT:
        out["verdict"] = "without_adapter"
        finding(
            "error",
            "derived_lacks_adapter",
            f"{name}'s weights carry none of {adapter}'s change (projection {beta:.2f} of its delta): "
            "it was converted or saved from the base model, not from the merge",
        )
    elif abs(beta - 1) > BETA_TOLERANCE:
        out["verdict"] = "other_adapter"
        finding(
            "error",
            "derived_other_checkpoint",
            f"{name}'s weights carry {beta:.2f} times {adapter}'s change, not 1.00 "
            f"(residual {resid_rel:.0%} of the delta): "
            "it was merged from another checkpoint of the same training run, or another adapter",
        )
    elif quantized:
        out["verdict"] = "base_plus_adapter"
        finding(
            "info",
            "derived_weights_match",
            f"{name}'s weights carry {adapter}'s change (projection {beta:.3f}); the rest is {storage} "
            f"quantization ({resid_rel:.0%} of the delta)",
        )
    elif resid_rel <= max(RESIDUAL_SLACK * noise, 0.01):
        out["verdict"] = "base_plus_adapter"
        finding(
            "info",
            "derived_weights_match",
            f"{name}'s weights are the base plus {adapter}'s delta (projection {beta:.3f}; residual {resid_rel:.2%} "
            f"of the delta, {storage} rounding explains {noise:.2%})",
        )
    elif nf4_gamma is not None and nf4_gamma > NF4_MATCH:
        out["verdict"] = "merged_into_dequantized"
        finding(
            "warning",
            "merged_into_dequantized",
            f"{name} is the adapter merged into nf4-dequantized base weights (the nf4 round trip of the base "
            f"explains the residual, coefficient {nf4_gamma:.2f}): a small divergence from base+adapter is expected, "
            "it is not a broken merge; merging into the original full-precision weights removes it",
        )
    else:
        out["verdict"] = "differs"
        finding(
            "error",
            "derived_other_checkpoint",
            f"{name}'s weights differ from base + {adapter}'s delta beyond rounding (projection {beta:.2f}, "
            f"residual {resid_rel:.0%} of the delta, {storage} rounding explains {noise:.2%}): "
            "merged from another checkpoint of the same training run or edited after the merge",
        )
    return out
