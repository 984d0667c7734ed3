"""Merge parity and adapter-applied checks: does the merged export behave like base+adapter, and did the
adapter do anything at all?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from harness.engine.generate import Generation

PARITY_STEPS = 16
KL_TOLERANCE = 1e-3
TOKEN_AGREEMENT_MIN = 0.99
# A quantized GGUF is not expected to reproduce its source token for token; these bounds say how far a correct
# conversion of the merge drifts, and a file converted from the wrong weights (the base) lands far outside them.
# Measured on SmolLM2-135M, golden/support_vi (docs/measurements.md, "q4_0 and q4_1 GGUFs", 2026-12-02):
# - Q8_0: trl merge 0.982 / 2.3e-4 (154 cases), 0.971 / 2.1e-4 (40); demo merge 0.996 / 3.8e-5 (40).
# - Q4_0: demo merge 0.896 / 0.104, trl merge 0.798 / 0.374 (154 cases; worst 40-case subset of trl 0.743 /
#   0.428); the base's q4_0 posing as either merge 0.000 / 11.7-12.8. Agreement is structurally ~0.8 here (the
#   first divergence falls on the category token, step 4), hence the floor well below it. These bounds judge the
#   conversion, not the quality: both q4_0 files lost nearly all of the adapters' strict format (0.455 -> 0.013,
#   0.578 -> 0.006), which the gates (format floor, merged-equals-adapter) report.
# - Q4_1 takes Q4_0's bounds: it could not be measured on a conversion that keeps the adapter, since the
#   embedded base is a Q4_1 dequantization and Q4_1 rounds a merge back onto it (0.000 / 10.3, like the base's).
# Other types (k-quants from llama-quantize) keep the unmeasured default.
QUANTIZED_THRESHOLDS = {"Q8_0": (0.95, 2e-2), "Q4_0": (0.6, 1.0), "Q4_1": (0.6, 1.0)}
QUANTIZED_DEFAULT = (0.85, 1e-1)
LOSSLESS_GGUF = ("F32", "ALL_F32", "F16", "BF16")


def parity_thresholds(kind: str, file_type: str | None) -> dict[str, float]:
    """Token-agreement floor and mean-KL ceiling for a derived variant of this kind and storage type."""
    if kind != "gguf" or (file_type or "").upper() in LOSSLESS_GGUF:
        agreement, kl = TOKEN_AGREEMENT_MIN, KL_TOLERANCE
    else:
        agreement, kl = QUANTIZED_THRESHOLDS.get((file_type or "").upper(), QUANTIZED_DEFAULT)
    return {"token_agreement_min": agreement, "mean_kl_max": kl}


def case_parity(a: Generation, b: Generation) -> dict[str, Any]:
    """Compare two variants on one case over the first generated steps.

    Logits are comparable only while both saw the same context, i.e. up to and including the first
    step where the greedy tokens differ; agreement is the share of compared steps with the same token.
    """
    assert a.logits is not None and b.logits is not None
    steps = min(a.logits.shape[0], b.logits.shape[0], PARITY_STEPS)
    ta, tb = list(a.token_ids[:steps]), list(b.token_ids[:steps])
    diverge = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), None)
    compared = steps if diverge is None else diverge + 1
    la, lb = a.logits[:compared].double(), b.logits[:compared].double()
    kl = torch.nn.functional.kl_div(
        torch.log_softmax(lb, -1), torch.log_softmax(la, -1), log_target=True, reduction="none"
    ).sum(-1)
    return {
        "steps": steps,
        "compared_steps": compared,
        "token_agreement": 1.0 if diverge is None else diverge / compared,
        "first_divergence": diverge,
        "max_abs_logit_diff": float((la - lb).abs().max()),
        "mean_kl": float(kl.mean()),
        "identical_output": a.token_ids == b.token_ids,
    }


def summarize_parity(
    ids: Sequence[str], per_case: Sequence[dict[str, Any]], merge_note: str, thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    """One verdict over every case; cases compared by text only (other vocabularies) carry no logits and say so."""
    th = thresholds or {"token_agreement_min": TOKEN_AGREEMENT_MIN, "mean_kl_max": KL_TOLERANCE}
    n = len(per_case)
    agreement = sum(p["token_agreement"] for p in per_case) / n if n else None
    kls = [p["mean_kl"] for p in per_case if p.get("mean_kl") is not None]
    mean_kl = sum(kls) / len(kls) if kls else None
    max_diff = max((p["max_abs_logit_diff"] for p in per_case if p.get("max_abs_logit_diff") is not None), default=None)
    identical = sum(1 for p in per_case if p["identical_output"])
    text_only = sum(1 for p in per_case if p.get("text_only"))
    worst = sorted(zip(ids, per_case), key=lambda t: -(t[1].get("mean_kl") or 0.0))[:5]
    passed = (
        n > 0
        and agreement is not None
        and agreement >= th["token_agreement_min"]
        and (mean_kl or 0.0) <= th["mean_kl_max"]
    )
    if text_only:
        passed = passed and identical == n
    return {
        "n_cases": n,
        "steps": PARITY_STEPS,
        "token_agreement": agreement,
        "mean_kl": mean_kl,
        "max_abs_logit_diff": max_diff,
        "identical_outputs": identical,
        "thresholds": th,
        "text_only_cases": text_only,
        "passed": passed,
        "verdict": "pass" if passed else "fail",
        "explanation": _explain(n, agreement, mean_kl, max_diff, identical, text_only),
        "worst_cases": [{"id": i, **p} for i, p in worst],
        "merge": merge_note,
    }


def _explain(
    n: int, agreement: float | None, mean_kl: float | None, max_diff: float | None, identical: int, text_only: int
) -> str:
    if not n:
        return "no cases compared"
    if text_only == n:
        return (
            "compared by text only (the vocabularies differ, so token ids and logits are not comparable); "
            f"{identical}/{n} outputs identical"
        )
    return (
        f"greedy token agreement {agreement:.4f} over the first {PARITY_STEPS} steps, mean KL {mean_kl:.2e}, "
        f"max |logit diff| {max_diff:.3g}; {identical}/{n} outputs identical"
    )


def adapter_findings(model: Any, adapter: str | None = None) -> list[dict[str, str]]:
    """Static checks on a PEFT model (one adapter, when named): LoRA layers exist and the adapter is not an identity.

    All-zero B matrices make a LoRA adapter an identity, but not a DoRA one whose magnitudes were trained:
    it still rescales rows, so that case is reported only when the magnitudes equal the base's row norms.
    """
    lora_b = [
        (n, p) for n, p in model.named_parameters() if "lora_B" in n and (adapter is None or f".{adapter}." in f"{n}.")
    ]
    if not lora_b:
        return [
            {
                "level": "error",
                "code": "no_lora_layers",
                "message": "the adapter's target modules matched no layer: nothing was applied",
            }
        ]
    if all(float(p.detach().abs().max()) == 0.0 for _, p in lora_b) and not _dora_magnitudes_trained(model, adapter):
        return [
            {
                "level": "error",
                "code": "lora_b_all_zero",
                "message": f"all {len(lora_b)} LoRA B matrices are zero: the adapter is an identity (was it trained?)",
            }
        ]
    return []


def outputs_identical_everywhere(a: Sequence[Generation], b: Sequence[Generation]) -> bool:
    return len(a) > 0 and all(x.token_ids == y.token_ids for x, y in zip(a, b))


def _dora_magnitudes_trained(model: Any, adapter: str | None) -> bool:
    """Whether any DoRA layer's magnitude vector differs from its base weight's row norms (its initial value)."""
    for module in model.modules():
        vectors = getattr(module, "lora_magnitude_vector", None)
        if not vectors or not hasattr(module, "get_base_layer"):
            continue
        for name, vector in vectors.items():
            if adapter is not None and name != adapter:
                continue
            with torch.no_grad():
                norms = torch.linalg.norm(module.get_base_layer().weight.float(), dim=1)
                if not torch.allclose(vector.weight.detach().float().reshape(-1), norms, rtol=1e-4, atol=1e-6):
                    return True
    return False
