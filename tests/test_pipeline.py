"""Three variants on the tiny model: parity between adapter and merged, and the adapter-applied checks."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.models.embedded import resolve
from harness.runs.evaluate import EvalOptions
from harness.runs.pipeline import run_pipeline
from harness.suite.suite import load_suite
from tests.conftest import SUPPORT_VI


def _small_suite(tmp_path: Path, n: int = 8, max_new: int = 12, adversarial: int = 0, references: bool = True) -> Path:
    """A few support_vi cases (plus adversarial ones) with short generations, for fast pipeline runs.

    `references=False` drops the reference answers: no tiny budget fits them, and `harness pipeline` refuses
    a suite whose references do not fit (run_pipeline callers pass token_budget="warn" instead)."""
    import yaml

    dst = tmp_path / "suite"
    shutil.copytree(SUPPORT_VI, dst)
    lines = (dst / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    picked = [json.loads(x) for x in lines[:: len(lines) // n][:n]]
    for p in picked:
        p["tags"] = []
        if not references:
            p.pop("reference", None)
    picked += [
        json.loads(x) for x in (dst / "adversarial.jsonl").read_text(encoding="utf-8").splitlines()[:adversarial]
    ]
    (dst / "cases.jsonl").write_text(
        "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in picked), encoding="utf-8"
    )
    raw = yaml.safe_load((dst / "suite.yaml").read_text(encoding="utf-8"))
    raw["cases"] = "cases.jsonl"
    raw["generation"]["max_new_tokens"] = max_new
    raw["slices"] = sorted({t for p in picked for t in p["tags"]})
    raw["scorers"] = [s for s in raw["scorers"] if s != "fluency"]  # it loads the real model: not on the fast lane
    raw.pop("fluency", None)
    gates = yaml.safe_load((dst / "gates.yaml").read_text(encoding="utf-8"))
    gates["checks"] = [c for c in gates["checks"] if c.get("metric") != "fluency"]
    (dst / "gates.yaml").write_text(yaml.safe_dump(gates, allow_unicode=True, sort_keys=False), encoding="utf-8")
    (dst / "suite.yaml").write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return dst


def _adapter(
    tmp_path: Path, tiny_model_dir: Path, trained: bool, targets: tuple[str, ...] = ("q_proj", "v_proj", "down_proj")
) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=list(targets), task_type="CAUSAL_LM"))
    if trained:
        torch.manual_seed(1)
        with torch.no_grad():
            for name, p in peft.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    out = tmp_path / ("trained" if trained else "untrained") / "adapter"
    peft.save_pretrained(out)
    return out


def test_merged_equals_adapter_logits(tiny_model_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    model = PeftModel.from_pretrained(base, adapter).eval()
    x = torch.randint(5, 1000, (2, 17))
    with torch.no_grad():
        with_adapter = model(input_ids=x).logits
        with model.disable_adapter():
            plain = model(input_ids=x).logits
        merged = model.merge_and_unload()(input_ids=x).logits
    assert not torch.allclose(plain, with_adapter)
    torch.testing.assert_close(merged, with_adapter, rtol=1e-4, atol=1e-4)


def test_pipeline_reports_three_variants_and_parity(tiny_model_dir: Path, tmp_path: Path) -> None:
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    suite = load_suite(_small_suite(tmp_path))
    run_dir, report = run_pipeline(
        suite,
        resolve(str(tiny_model_dir)),
        adapter,
        tmp_path / "reports",
        EvalOptions(batch_size=4, progress=False),
        run_id="p",
        token_budget="warn",
    )
    assert set(report["variants"]) == {"base", "adapter", "merged"}
    assert report["parity"]["verdict"] == "pass" and report["parity"]["n_cases"] == 8
    assert report["parity"]["mean_kl"] < 1e-6
    merged_t = report["variants"]["merged"]["timings"]
    assert merged_t["replayed_cases"] == 8 and merged_t["replay_mismatches"] == 0 and merged_t["generated_cases"] == 0
    assert report["findings"] == []
    merged = run_dir / "merged"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)  # a standalone model
    rows = [json.loads(x) for x in (run_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 8 and set(rows[0]["variants"]) == {"base", "adapter", "merged"}
    assert "token_agreement" in rows[0]["parity"]


def _run_small(
    tmp_path: Path, tiny_model: Path, adapter: Path, suite: Path, run_id: str, options: EvalOptions | None = None
) -> tuple[Path, dict[str, Any]]:
    """run_pipeline on a small suite (its tiny budget fits no reference: the budget only warns)."""
    options = options or EvalOptions(progress=False)
    suite_ = load_suite(suite)
    return run_pipeline(
        suite_, resolve(str(tiny_model)), adapter, tmp_path / "reports", options, run_id=run_id, token_budget="warn"
    )


def test_untrained_adapter_stops_before_decoding(tiny_model_dir: Path, tmp_path: Path) -> None:
    from harness.errors import RunStopped

    adapter = _adapter(tmp_path, tiny_model_dir, trained=False)
    options = EvalOptions(batch_size=4, progress=False, cache_path=tmp_path / "cache.sqlite")
    with pytest.raises(RunStopped) as stopped:
        _run_small(tmp_path, tiny_model_dir, adapter, _small_suite(tmp_path, n=4), "z", options)
    assert [(f["code"], f["variant"]) for f in stopped.value.findings] == [("lora_b_all_zero", "adapter")]
    assert "stopped before decoding" in str(stopped.value) and "LoRA B matrices are zero" in str(stopped.value)
    assert not (tmp_path / "reports" / "z").exists()  # nothing written
    assert not (tmp_path / "cache.sqlite").exists() or _cached_generations(tmp_path / "cache.sqlite") == 0


def _cached_generations(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT COUNT(*) FROM generations").fetchone()[0])


def test_adapter_matching_no_layer_stops_before_decoding(tiny_model_dir: Path, tmp_path: Path) -> None:
    from harness.errors import RunStopped

    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    cfg = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    cfg["target_modules"] = ".*no_such_proj$"  # a regex: checked by PEFT when it attaches, not by the spec
    (adapter / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(RunStopped) as stopped:
        _run_small(tmp_path, tiny_model_dir, adapter, _small_suite(tmp_path, n=4), "z")
    assert [f["code"] for f in stopped.value.findings] == ["no_lora_layers"]
    assert not (tmp_path / "reports" / "z").exists()


def test_trained_adapter_passes_the_preflight(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The preflight's findings are the report's: a trained adapter has none and the run goes on."""
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    _, report = _run_small(tmp_path, tiny_model_dir, adapter, _small_suite(tmp_path, n=2, max_new=4), "ok")
    assert not [f for f in report["findings"] if f["code"] in ("lora_b_all_zero", "no_lora_layers")]


def test_not_an_adapter_folder(tiny_model_dir: Path, tmp_path: Path) -> None:
    from harness.errors import HarnessInputError

    with pytest.raises(HarnessInputError, match="adapter_config.json"):
        run_pipeline(
            load_suite(SUPPORT_VI),
            resolve(str(tiny_model_dir)),
            tmp_path,
            tmp_path / "r",
            EvalOptions(progress=False),
            token_budget="warn",
        )


def test_merged_export_in_bfloat16_is_evaluated_on_the_saved_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    suite = load_suite(_small_suite(tmp_path, n=4))
    run_dir, report = run_pipeline(
        suite,
        resolve(str(tiny_model_dir)),
        adapter,
        tmp_path / "reports",
        EvalOptions(batch_size=4, progress=False),
        run_id="b",
        merge_dtype="bfloat16",
        token_budget="warn",
    )
    merged = report["variants"]["merged"]
    assert merged["export"] == {
        "requested": "bfloat16",
        "merged_in": "float32",
        "export_dtype": "bfloat16",
        "evaluated_in": "float32",
        "rounded": True,
    }
    assert merged["dtype"] == "bfloat16"
    assert "exported as bfloat16, weights rounded to it and evaluated in float32" in report["parity"]["merge"]
    files = list((run_dir / "merged").glob("*.safetensors"))
    with safe_open(str(files[0]), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert (
        report["parity"]["n_cases"] == 4 and report["parity"]["max_abs_logit_diff"] > 0
    )  # rounding shows in the logits


def test_auto_merge_dtype_follows_the_checkpoint(tmp_path: Path) -> None:
    from harness.errors import HarnessInputError
    from harness.models.embedded import ModelRef
    from harness.runs.compare import export_dtype

    def ref(config: dict[str, object] | None) -> ModelRef:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        if config is not None:
            (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return ModelRef(spec=str(folder), path=folder, provenance={"source": "test"})

    assert export_dtype("auto", ref({"dtype": "bfloat16"})) == torch.bfloat16
    assert export_dtype("auto", ref({"torch_dtype": "float16"})) == torch.float16
    assert export_dtype("auto", ref({})) == torch.float32
    assert export_dtype("auto", ref(None)) == torch.float32
    assert export_dtype("float16", ref({"dtype": "bfloat16"})) == torch.float16
    with pytest.raises(HarnessInputError, match="merge_dtype"):
        export_dtype("int8", ref({}))


def test_cli_exits_1_before_decoding_an_identity_adapter(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`harness compare` with an untrained adapter: the finding on stderr, exit 1, no traceback, no run folder."""
    import yaml

    from harness.cli import main

    adapter = _adapter(tmp_path, tiny_model_dir, trained=False)
    run = tmp_path / "run.yaml"
    variants = [{"name": "base", "kind": "base"}, {"name": "cand", "kind": "adapter", "path": str(adapter)}]
    suite = str(_small_suite(tmp_path, n=2))
    run.write_text(yaml.safe_dump({"suite": suite, "base": str(tiny_model_dir), "variants": variants}), "utf-8")
    code = main(["compare", str(run), "--reports-dir", str(tmp_path / "reports"), "--no-progress", "--no-cache"])
    err = capsys.readouterr().err
    assert code == 1
    assert "stopped before decoding" in err and "cand: lora_b_all_zero" in err and "Traceback" not in err
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").iterdir())
