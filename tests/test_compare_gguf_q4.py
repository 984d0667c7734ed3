"""q4_0 GGUF variants (slow lane: llama.cpp's converter, then gguf-py's reference quantizer): a q4_0 GGUF of a
merge is scored as that merge at the Q4_0 bounds, a q4_0 GGUF of the base posing as the merge is named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness.models.gguf_export import convert_and_check
from harness.runs.compare import portable_tokenizer_config, run_variants
from harness.runs.evaluate import EvalOptions
from harness.runs.plan import plan_run
from harness.variants.parity import parity_thresholds
from tests.test_compare import _merge, _run_file
from tests.test_gguf_export import converter  # noqa: F401 - the fixture that fetches llama.cpp's converter
from tests.test_pipeline import _adapter, _small_suite

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Q4_0 rounding moves each weight matrix by ~9% (relative norm), nearly uncorrelated with the adapter's delta:
# on the tiny merge below the projection came out 0.997 (all-linear) and 0.997 (q/v/down). 0.03 passes that with
# margin and is far from a missing adapter (~0). The real SmolLM2 merges give 0.90-0.91, since their base is a
# Q4_1 dequantization and Q4_0 rounding partly snaps back onto it (docs/measurements.md); this base is not.
BETA_TOLERANCE_Q4 = 0.03


@pytest.mark.slow
def test_q4_0_gguf_of_the_merge_passes_and_q4_0_of_the_base_is_named(
    tiny_model_dir: Path,
    tmp_path: Path,
    converter: Path,  # noqa: F811
) -> None:
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True, targets=ALL_LINEAR)
    merged = _merge(tiny_model_dir, adapter, tmp_path / "merged")
    portable_tokenizer_config(merged)
    base = tmp_path / "base-folder"
    shutil.copytree(tiny_model_dir, base)
    portable_tokenizer_config(base)
    good = convert_and_check(merged, converter, "q4_0", tmp_path / "gguf" / "merged-q4_0.gguf")
    wrong = convert_and_check(base, converter, "q4_0", tmp_path / "gguf-base" / "base-q4_0.gguf")
    assert good.gguf.file_type == "Q4_0" and good.gguf.tensor_types == {"F32": 5, "Q4_0": 14, "Q8_0": 1}
    variants = [
        {"name": "cand", "kind": "adapter", "path": str(adapter)},
        {"name": "shipped", "kind": "merged", "path": str(merged), "derived_from": "cand"},
        {"name": "q4", "kind": "gguf", "path": str(good.gguf.path), "derived_from": "shipped"},
        {"name": "wrong", "kind": "gguf", "path": str(wrong.gguf.path), "derived_from": "shipped"},
    ]
    run = _run_file(tmp_path, _small_suite(tmp_path, n=4, max_new=8), tiny_model_dir, variants, gates="none")
    plan = plan_run(run, EvalOptions(batch_size=8, progress=False), run_id="q4")
    report = run_variants(plan, tmp_path / "reports")[1]
    q4, bad = report["relations"]["q4"], report["relations"]["wrong"]
    assert report["variants"]["q4"]["storage"]["file_type"] == "Q4_0"
    assert report["variants"]["q4"]["storage"]["tensor_types"] == {"F32": 5, "Q4_0": 14, "Q8_0": 1}
    assert q4["thresholds"] == parity_thresholds("gguf", "Q4_0")
    weights = q4["weights"]
    assert weights["verdict"] == "base_plus_adapter", weights
    assert abs(weights["beta"] - 1) < BETA_TOLERANCE_Q4, weights
    assert not [f for f in q4["diagnosis"] if f["level"] == "error"], q4["diagnosis"]
    codes = {f["code"] for f in bad["diagnosis"]}
    assert "derived_lacks_adapter" in codes and abs(bad["weights"]["beta"]) < 0.1, bad
    assert bad["verdict"] == "fail"
    assert any(
        f["code"] == "derived_parity" and f["variant"] == "wrong" and "converted or saved from the base" in f["message"]
        for f in report["findings"]
    )


@pytest.mark.slow
def test_q4_0_gguf_of_a_partial_adapter_has_no_error(
    tiny_model_dir: Path,
    tmp_path: Path,
    converter: Path,  # noqa: F811
) -> None:
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)  # q_proj, v_proj, down_proj only
    merged = _merge(tiny_model_dir, adapter, tmp_path / "merged")
    portable_tokenizer_config(merged)
    good = convert_and_check(merged, converter, "q4_0", tmp_path / "gguf" / "merged-q4_0.gguf")
    variants = [
        {"name": "cand", "kind": "adapter", "path": str(adapter)},
        {"name": "shipped", "kind": "merged", "path": str(merged), "derived_from": "cand"},
        {"name": "q4", "kind": "gguf", "path": str(good.gguf.path), "derived_from": "shipped"},
    ]
    run = _run_file(tmp_path, _small_suite(tmp_path, n=2, max_new=4), tiny_model_dir, variants, gates="none")
    plan = plan_run(run, EvalOptions(batch_size=8, progress=False), run_id="q4p")
    q4 = run_variants(plan, tmp_path / "reports")[1]["relations"]["q4"]
    assert q4["weights"]["verdict"] == "base_plus_adapter" and abs(q4["weights"]["beta"] - 1) < BETA_TOLERANCE_Q4
    assert not [f for f in q4["diagnosis"] if f["level"] == "error"], q4["diagnosis"]
