"""Capability retention inside the pipeline and its gate: tiny model in the fast lane, a damaged adapter on
the real model in the slow lane."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.models.embedded import resolve
from harness.runs.evaluate import EvalOptions
from harness.runs.pipeline import run_pipeline
from harness.suite.suite import load_suite
from harness.verdict.gates import load_policy
from tests.conftest import REPO
from tests.test_pipeline import _small_suite

POLICY = "version: 1\nchecks:\n  - {id: retention, kind: retention, baseline: base, margin: 0.05}\n"


def _damaged_adapter(tmp_path: Path, model_dir: Path, scale: float) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft = get_peft_model(
        model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0, scale)
    out = tmp_path / "damaged" / "adapter"
    peft.save_pretrained(out)
    return out


def test_pipeline_reports_retention_per_variant_and_gates_it(tiny_model_dir: Path, tmp_path: Path) -> None:
    policy_file = tmp_path / "gates.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    suite = load_suite(_small_suite(tmp_path, n=4, max_new=8))
    adapter = _damaged_adapter(tmp_path, tiny_model_dir, 0.5)
    _, report = run_pipeline(
        suite,
        resolve(str(tiny_model_dir)),
        adapter,
        tmp_path / "reports",
        EvalOptions(batch_size=4, progress=False),
        run_id="r",
        policy=load_policy(policy_file),
        retention_dir=REPO / "golden/retention",
        retention_limit=6,
        token_budget="warn",
    )
    ret = report["retention"]["variants"]
    assert set(ret) == {"base", "adapter", "merged"}
    assert all(ret[v][t]["n"] == 6 and len(ret[v][t]["items"]) == 6 for v in ret for t in ret[v])
    checks = [c for c in report["gates"]["checks"] if c["kind"] == "retention"]
    assert {c["id"] for c in checks} == {f"{v}.retention.{t}" for v in ("adapter", "merged") for t in ret["base"]}
    assert all(c["verdict"] in ("pass", "fail", "inconclusive") and c["n"] == 6 for c in checks)


def test_optional_retention_check_is_noted_not_failed_when_not_run() -> None:
    from harness.verdict.gates import evaluate_gates

    policy = load_policy(REPO / "golden/support_vi/gates.yaml")
    g = evaluate_gates(policy, {}, [])
    assert not any(c["kind"] == "retention" for c in g["checks"]) and any(
        "retention was not run" in n for n in g["notes"]
    )


@pytest.mark.slow
def test_retention_gate_fails_for_a_damaged_adapter_on_the_real_model(embedded_dir: Path, tmp_path: Path) -> None:
    policy_file = tmp_path / "gates.yaml"
    policy_file.write_text(POLICY, encoding="utf-8")
    import shutil

    tasks = tmp_path / "retention"
    tasks.mkdir()
    for f in (REPO / "golden/retention").glob(
        "retention_mc.*"
    ):  # the log-likelihood task alone keeps the slow lane short
        shutil.copy(f, tasks / f.name)
    suite = load_suite(_small_suite(tmp_path, n=2, max_new=4))
    adapter = _damaged_adapter(tmp_path, embedded_dir, 0.2)
    _, report = run_pipeline(
        suite,
        resolve(str(embedded_dir)),
        adapter,
        tmp_path / "reports",
        EvalOptions(batch_size=16, progress=False),
        run_id="r",
        policy=load_policy(policy_file),
        retention_dir=tasks,
        retention_limit=60,
        token_budget="warn",
    )
    mc = {c["variant"]: c for c in report["gates"]["checks"] if c["metric"] == "retention_mc"}
    base_acc = report["retention"]["variants"]["base"]["retention_mc"]["value"]
    assert base_acc > 0.4, base_acc  # the real model clearly beats chance (0.25)
    assert mc["adapter"]["verdict"] == "fail", mc["adapter"]["explanation"]
