"""LoRA, rsLoRA and DoRA adapters on the tiny model: each evaluated, merged here and merged by a team, with parity
and a weight diagnosis that is measured against what PEFT's merge of that kind really adds; and the merges that
get a kind wrong (DoRA without its magnitude rescale, rsLoRA at alpha/r) are named as such."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.variants.derived import adapter_deltas
from tests.test_compare import _merge, _run, _run_file
from tests.test_pipeline import _small_suite

KINDS = ("lora", "rslora", "dora")
TARGETS = ["q_proj", "v_proj", "down_proj"]
R, ALPHA = 4, 8
LORA_LAYERS = 2 * len(TARGETS)  # the tiny model has two decoder layers


def _kind_adapter(root: Path, tiny_model_dir: Path, kind: str, seed: int = 1) -> Path:
    """An adapter of one kind with the state training leaves: B nonzero and, for DoRA, magnitudes moved.

    DoRA holds each output row's norm at its magnitude, so on the random tiny model its effect on greedy outputs
    comes from the magnitudes: they grow here (x3, +-20%) while B stays small, as they may in a real run.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(
        r=R,
        lora_alpha=ALPHA,
        target_modules=TARGETS,
        task_type="CAUSAL_LM",
        use_rslora=kind == "rslora",
        use_dora=kind == "dora",
    )
    peft = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_((0.05 if kind == "dora" else 0.2) * torch.randn(p.shape, generator=gen))
            elif "lora_magnitude_vector" in name:
                p.mul_(3 * (1 + 0.2 * torch.randn(p.shape, generator=gen)))
    out = root / f"{kind}-seed{seed}" / "adapter"
    peft.save_pretrained(out)
    return out


def _lora_layers(peft: Any) -> dict[str, Any]:
    """checkpoint tensor name -> PEFT LoRA layer, for the default adapter."""
    return {
        f"{name.removeprefix('base_model.model.')}.weight": m
        for name, m in peft.named_modules()
        if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {})
    }


def _merge_by_hand(tiny_model_dir: Path, adapter: Path, out: Path, scaling: float | None = None) -> Path:
    """A merge as an exporter that knows only plain LoRA writes it: W + B·A·scaling in every layer (no DoRA
    magnitude rescale), at the adapter's own scaling or at `scaling` (e.g. alpha/r for an rsLoRA adapter)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft = PeftModel.from_pretrained(base, adapter)
    with torch.no_grad():
        for m in _lora_layers(peft).values():
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            s = m.scaling["default"] if scaling is None else scaling
            m.get_base_layer().weight += (b @ a) * s
    plain = peft.unload()  # the LoRA layers dropped, their base layers (edited above) kept
    plain.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    """Per kind an adapter and its correct merged folder; the planted defects; one small suite."""
    root = tmp_path_factory.mktemp("kinds")
    world: dict[str, Any] = {"suite": _small_suite(root, n=4, max_new=8), "adapter": {}, "good": {}}
    for kind in KINDS:
        adapter = _kind_adapter(root, tiny_model_dir, kind)
        world["adapter"][kind] = adapter
        world["good"][kind] = _merge(tiny_model_dir, adapter, root / f"{kind}-merged")
    dora, rslora = world["adapter"]["dora"], world["adapter"]["rslora"]
    world["defect"] = {
        "dora_unscaled": _merge_by_hand(tiny_model_dir, dora, root / "dora-unscaled"),
        "dora_other_seed": _merge(
            tiny_model_dir, _kind_adapter(root, tiny_model_dir, "dora", seed=2), root / "dora-other-seed"
        ),
        "dora_nf4": _merge(tiny_model_dir, dora, root / "dora-nf4", nf4_base=True),
        "rslora_alpha_over_r": _merge_by_hand(tiny_model_dir, rslora, root / "rslora-at-alpha-over-r", ALPHA / R),
    }
    return world


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_deltas_are_what_peft_merges_and_leave_the_resident_untouched(
    kinds: dict[str, Any], tiny_model_dir: Path, kind: str
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    peft = PeftModel.from_pretrained(base, kinds["adapter"][kind]).eval()
    layers = _lora_layers(peft)
    before = {k: m.get_base_layer().weight.detach().clone() for k, m in layers.items()}
    x = torch.randint(5, 1000, (2, 11))
    with torch.no_grad():
        out_before = peft(input_ids=x).logits
    deltas = adapter_deltas(peft, "default")
    merged = copy.deepcopy(peft).merge_and_unload().state_dict()
    assert set(deltas) == set(layers) and len(deltas) == LORA_LAYERS
    for key, (w, delta) in deltas.items():
        torch.testing.assert_close(w + delta, merged[key], rtol=1e-5, atol=1e-6)
        low_rank = layers[key].get_delta_weight("default")
        if kind == "dora":  # the bug this guards: B·A·scaling alone is not what a DoRA merge adds
            assert not torch.allclose(delta, low_rank, atol=1e-3)
            torch.testing.assert_close(deltas.lowrank[key], low_rank)
        else:  # LoRA and rsLoRA: exactly get_delta_weight, as before
            assert torch.equal(delta, low_rank.float())
    assert len(deltas.lowrank) == (LORA_LAYERS if kind == "dora" else 0)
    expected_scaling = ALPHA / math.sqrt(R) if kind == "rslora" else ALPHA / R
    assert {m.scaling["default"] for m in layers.values()} == {expected_scaling}
    # the merge ran on a copy: the resident layers hold the base weights, unmerged, and compute what they did
    for key, m in layers.items():
        assert torch.equal(m.get_base_layer().weight, before[key]) and not m.merged and not m._caches
    with torch.no_grad():
        assert torch.equal(peft(input_ids=x).logits, out_before)


def _compare(root: Path, suite: Path, base: Path, variants: list[dict[str, Any]]) -> dict[str, Any]:
    """One compare run (no gates) in a fresh folder: its report, case rows and summary.md."""
    report = _run(_run_file(root, suite, base, variants, gates="none"), root)
    run_dir = root / "reports" / "r"
    rows = [json.loads(x) for x in (run_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"report": report, "rows": rows, "summary": (run_dir / "summary.md").read_text(encoding="utf-8")}


@pytest.fixture(scope="module")
def kinds_run(kinds: dict[str, Any], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The three kinds side by side on one resident base: each adapter, merged here, and its merged folder."""
    variants: list[dict[str, Any]] = [{"name": "base", "kind": "base"}]
    for kind in KINDS:
        variants += [
            {"name": kind, "kind": "adapter", "path": str(kinds["adapter"][kind])},
            {"name": f"{kind}-merged", "kind": "merged", "derived_from": kind},
            {"name": f"{kind}-shipped", "kind": "merged", "path": str(kinds["good"][kind]), "derived_from": kind},
        ]
    return _compare(tmp_path_factory.mktemp("kinds-run"), kinds["suite"], tiny_model_dir, variants)


@pytest.fixture(scope="module")
def defects_run(
    kinds: dict[str, Any], tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Every planted defect as a merged folder that claims to be its adapter's merge."""
    variants: list[dict[str, Any]] = [
        {"name": kind, "kind": "adapter", "path": str(kinds["adapter"][kind])} for kind in ("dora", "rslora")
    ]
    variants += [
        {"name": defect, "kind": "merged", "path": str(path), "derived_from": defect.split("_")[0]}
        for defect, path in kinds["defect"].items()
    ]
    return _compare(tmp_path_factory.mktemp("defects-run"), kinds["suite"], tiny_model_dir, variants)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_evaluates_merges_and_passes_parity(kinds_run: dict[str, Any], kind: str) -> None:
    report, rows = kinds_run["report"], kinds_run["rows"]
    assert [r["variants"][kind]["output"] for r in rows] != [r["variants"]["base"]["output"] for r in rows]
    for name in (f"{kind}-merged", f"{kind}-shipped"):
        rel = report["relations"][name]
        assert rel["source"] == kind and rel["verdict"] == "pass" and rel["identical_outputs"] == len(rows), rel
        assert rel["mean_kl"] < 1e-6, rel
    weights = report["relations"][f"{kind}-shipped"]["weights"]
    assert weights["verdict"] == "base_plus_adapter" and abs(weights["beta"] - 1) < 1e-3, weights
    assert weights["residual_rel"] < 1e-3 and weights["dora_layers"] == (LORA_LAYERS if kind == "dora" else 0)
    assert [f for f in report["findings"] if f["level"] == "error"] == []
    assert not [f for f in report["relations"][f"{kind}-shipped"]["diagnosis"] if f["level"] != "info"]
    method = report["variants"][kind]["lora_method"]
    assert method["method"] == ("dora" if kind == "dora" else "lora") and method["rslora"] == (kind == "rslora")
    assert method["scaling"] == (ALPHA / math.sqrt(R) if kind == "rslora" else ALPHA / R)
    assert report["variants"][kind]["adapter_config"]["use_dora"] == (kind == "dora")
    label = {"lora": "LoRA", "rslora": "LoRA + rsLoRA", "dora": "DoRA"}[kind]
    assert f"| {kind} | adapter ({label}, r {R}, alpha {ALPHA}) |  |" in kinds_run["summary"], kinds_run["summary"]


@pytest.mark.parametrize(
    ("defect", "code", "level"),
    [
        ("dora_unscaled", "derived_dora_magnitude_missing", "error"),
        ("dora_other_seed", "derived_other_checkpoint", "error"),
        ("dora_nf4", "merged_into_dequantized", "warning"),
        ("rslora_alpha_over_r", "derived_other_checkpoint", "error"),
    ],
)
def test_a_merge_that_gets_the_kind_wrong_is_caught(
    defects_run: dict[str, Any], defect: str, code: str, level: str
) -> None:
    report = defects_run["report"]
    rel = report["relations"][defect]
    found = [f for f in rel["diagnosis"] if f["code"] == code]
    assert found and found[0]["level"] == level, rel["diagnosis"]
    assert found[0] in report["findings"]
    codes = {f["code"] for f in rel["diagnosis"]}
    weights = rel["weights"]
    if defect == "dora_unscaled":  # named for what it is, not as another checkpoint
        assert weights["verdict"] == "dora_magnitude_missing" and "derived_other_checkpoint" not in codes
        assert abs(weights["lowrank_beta"] - 1) < 1e-3 and weights["lowrank_residual_rel"] < 1e-3, weights
        assert "magnitude rescale" in found[0]["message"] and "merge_and_unload" in found[0]["message"]
    if defect == "dora_other_seed":
        assert "derived_dora_magnitude_missing" not in codes and weights["verdict"] in ("other_adapter", "differs")
    if defect == "dora_nf4":  # DoRA's rescale of the nf4 error is what PEFT's merge into those weights leaves
        assert weights["verdict"] == "merged_into_dequantized" and abs(weights["nf4_gamma"] - 1) < 0.05, weights
        assert "derived_other_checkpoint" not in codes
    if defect == "rslora_alpha_over_r":  # alpha/r is half of alpha/sqrt(r) at r=4
        assert weights["verdict"] == "other_adapter" and abs(weights["beta"] - 0.5) < 1e-3, weights
    if level == "error":  # the behaviour drifts too, and the parity finding names the weight cause
        assert rel["verdict"] == "fail", rel
        parity = next(f for f in report["findings"] if f["code"] == "derived_parity" and f["variant"] == defect)
        assert found[0]["message"] in parity["message"]


def test_lora_method_summarises_the_adapter_config() -> None:
    from harness.variants.spec import lora_method

    plain = lora_method({"peft_type": "LORA", "r": 16, "lora_alpha": 32})
    assert plain["method"] == "lora" and not plain["rslora"] and plain["scaling"] == 2.0
    assert plain["label"] == "LoRA, r 16, alpha 32" and not plain["per_layer_patterns"]
    both = lora_method({"r": 16, "lora_alpha": 32, "use_dora": True, "use_rslora": True, "rank_pattern": {"q_proj": 8}})
    assert both["method"] == "dora" and both["rslora"] and both["scaling"] == 8.0 and both["per_layer_patterns"]
    assert both["label"] == "DoRA + rsLoRA, r 16, alpha 32, per-layer rank/alpha patterns"
    assert lora_method({"lora_alpha": 32})["scaling"] is None  # a config without r: no scaling is guessed


def test_zero_b_dora_with_trained_magnitudes_is_not_called_an_identity(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.variants.parity import adapter_findings

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], use_dora=True))
    assert [f["code"] for f in adapter_findings(peft)] == ["lora_b_all_zero"]  # fresh: B zero, magnitudes = norms
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1.5)
    assert adapter_findings(peft) == []
