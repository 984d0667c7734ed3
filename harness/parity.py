"""Merge parity and adapter-applied checks: does the merged export behave like base+adapter, and did the
adapter do anything at all?"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from harness.generate import Generation

PARITY_STEPS = 16
KL_TOLERANCE = 1e-3
TOKEN_AGREEMENT_MIN = 0.99


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
    kl = torch.nn.functional.kl_div(torch.log_softmax(lb, -1), torch.log_softmax(la, -1), log_target=True, reduction="none").sum(-1)
    return {
        "steps": steps,
        "compared_steps": compared,
        "token_agreement": 1.0 if diverge is None else diverge / compared,
        "first_divergence": diverge,
        "max_abs_logit_diff": float((la - lb).abs().max()),
        "mean_kl": float(kl.mean()),
        "identical_output": a.token_ids == b.token_ids,
    }


def summarize_parity(ids: Sequence[str], per_case: Sequence[dict[str, Any]], merge_note: str) -> dict[str, Any]:
    n = len(per_case)
    agreement = sum(p["token_agreement"] for p in per_case) / n if n else None
    mean_kl = sum(p["mean_kl"] for p in per_case) / n if n else None
    max_diff = max((p["max_abs_logit_diff"] for p in per_case), default=None)
    identical = sum(1 for p in per_case if p["identical_output"])
    worst = sorted(zip(ids, per_case), key=lambda t: -t[1]["mean_kl"])[:5]
    passed = n > 0 and agreement is not None and agreement >= TOKEN_AGREEMENT_MIN and (mean_kl or 0.0) <= KL_TOLERANCE
    return {
        "n_cases": n,
        "steps": PARITY_STEPS,
        "token_agreement": agreement,
        "mean_kl": mean_kl,
        "max_abs_logit_diff": max_diff,
        "identical_outputs": identical,
        "thresholds": {"token_agreement_min": TOKEN_AGREEMENT_MIN, "mean_kl_max": KL_TOLERANCE},
        "passed": passed,
        "verdict": "pass" if passed else "fail",
        "explanation": (f"greedy token agreement {agreement:.4f} over the first {PARITY_STEPS} steps, mean KL {mean_kl:.2e}, "
                        f"max |logit diff| {max_diff:.3g}; {identical}/{n} outputs identical") if n else "no cases compared",
        "worst_cases": [{"id": i, **p} for i, p in worst],
        "merge": merge_note,
    }


def adapter_findings(model: Any) -> list[dict[str, str]]:
    """Static checks on a PEFT model: LoRA layers exist and their B matrices are not all zero."""
    lora_b = [(n, p) for n, p in model.named_parameters() if "lora_B" in n]
    if not lora_b:
        return [{"level": "error", "code": "no_lora_layers", "message": "the adapter's target modules matched no layer: nothing was applied"}]
    if all(float(p.detach().abs().max()) == 0.0 for _, p in lora_b):
        return [{"level": "error", "code": "lora_b_all_zero", "message": f"all {len(lora_b)} LoRA B matrices are zero: the adapter is an identity (was it trained?)"}]
    return []


def outputs_identical_everywhere(a: Sequence[Generation], b: Sequence[Generation]) -> bool:
    return len(a) > 0 and all(x.token_ids == y.token_ids for x, y in zip(a, b))
