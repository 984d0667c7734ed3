"""GGUF variants (slow lane: llama.cpp's own converter): a q8_0 GGUF of the merge is scored and judged the merge,
a GGUF converted from the base instead of the merge is caught with that cause."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from harness.models.gguf_export import convert_and_check
from harness.runs.compare import portable_tokenizer_config, run_variants
from harness.runs.evaluate import EvalOptions
from harness.runs.plan import plan_run
from tests.test_compare import _merge
from tests.test_gguf_export import converter  # noqa: F401 - the fixture that fetches llama.cpp's converter
from tests.test_pipeline import _adapter, _small_suite


@pytest.mark.slow
def test_gguf_of_the_merge_passes_and_gguf_of_the_base_is_named(
    tiny_model_dir: Path,
    tmp_path: Path,
    converter: Path,  # noqa: F811
) -> None:  # noqa: F811
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    merged = _merge(tiny_model_dir, adapter, tmp_path / "merged")
    portable_tokenizer_config(merged)
    base = tmp_path / "base-folder"
    shutil.copytree(tiny_model_dir, base)
    portable_tokenizer_config(base)
    good = convert_and_check(merged, converter, "q8_0", tmp_path / "gguf" / "merged-q8_0.gguf").gguf.path
    wrong = convert_and_check(base, converter, "f16", tmp_path / "gguf-base" / "base-f16.gguf").gguf.path
    run = tmp_path / "run.yaml"
    run.write_text(
        yaml.safe_dump(
            {
                "suite": str(_small_suite(tmp_path, n=4, max_new=8)),
                "base": str(tiny_model_dir),
                "gates": "none",
                "variants": [
                    {"name": "cand", "kind": "adapter", "path": str(adapter)},
                    {"name": "shipped", "kind": "merged", "path": str(merged), "derived_from": "cand"},
                    {"name": "q8", "kind": "gguf", "path": str(good), "derived_from": "shipped"},
                    {"name": "wrong", "kind": "gguf", "path": str(wrong), "derived_from": "shipped"},
                ],
            }
        ),
        encoding="utf-8",
    )
    report = run_variants(plan_run(run, EvalOptions(batch_size=8, progress=False), run_id="g"), tmp_path / "reports")[1]
    q8, bad = report["relations"]["q8"], report["relations"]["wrong"]
    assert report["variants"]["q8"]["storage"]["file_type"] == "Q8_0"
    assert q8["weights"]["verdict"] == "base_plus_adapter" and abs(q8["weights"]["beta"] - 1) < 0.05, q8["weights"]
    assert not [f for f in q8["diagnosis"] if f["level"] == "error"], q8["diagnosis"]
    codes = {f["code"] for f in bad["diagnosis"]}
    assert "derived_lacks_adapter" in codes and abs(bad["weights"]["beta"]) < 0.1, bad
    assert bad["verdict"] == "fail"  # the tiny adapter changes the outputs, so the base's GGUF cannot reproduce them
    assert any(
        f["code"] == "derived_parity" and f["variant"] == "wrong" and "converted or saved from the base" in f["message"]
        for f in report["findings"]
    )
