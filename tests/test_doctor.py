"""One test per doctor pitfall, each with a config or collator that has it and one that does not."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from harness.suite.suite import load_suite
from harness.training.config import load_train_config
from harness.training.data import DataSplit, Example, load_examples, split
from harness.training.doctor import diagnose
from tests.conftest import REPO, SUPPORT_VI
from trainers.sft_recipe import linear_module_names, make_collator

DEMO = REPO / "trainers/configs/demo.yaml"


@pytest.fixture(scope="module")
def parts(tiny_model_dir: Path, tokenizer):  # noqa: ANN001, ANN201
    from harness.models.embedded import resolve

    cfg = load_train_config(DEMO).with_overrides(str(tiny_model_dir))
    suite = load_suite(SUPPORT_VI)
    examples, sha = load_examples(cfg.data, suite, REPO)
    data = split(examples, 0.1, 42, sha)
    return cfg, tokenizer, data, linear_module_names(resolve(str(tiny_model_dir))), suite


def _codes(parts, cfg=None, data=None, collator=None, suite="default", bf16=True) -> dict[str, str]:  # noqa: ANN001
    base_cfg, tok, base_data, names, base_suite = parts
    findings, _ = diagnose(
        cfg or base_cfg,
        tok,
        data or base_data,
        names,
        collator or make_collator(tok),
        base_suite if suite == "default" else suite,
        bf16,
    )
    return {f.code: f.level for f in findings}


def test_clean_demo_config_has_no_findings(parts) -> None:  # noqa: ANN001
    assert _codes(parts) == {}


def test_high_learning_rate_warns(parts) -> None:  # noqa: ANN001
    cfg = parts[0]
    assert _codes(parts, cfg=replace(cfg, training=replace(cfg.training, learning_rate=2e-2))) == {"lr_high": "warning"}


def test_eos_masked_when_pad_equals_eos(parts) -> None:  # noqa: ANN001
    from transformers import DataCollatorForLanguageModeling

    tok = parts[1]
    assert tok.pad_token_id == tok.eos_token_id
    classic = DataCollatorForLanguageModeling(tokenizer=tok, mlm=False)  # masks labels where input == pad id
    assert (
        _codes(parts, collator=lambda feats: classic([{"input_ids": f["input_ids"]} for f in feats]))["eos_masked"]
        == "error"
    )


def test_labels_over_padding(parts) -> None:  # noqa: ANN001
    import torch

    tok = parts[1]

    def leaky(feats):  # noqa: ANN001, ANN202
        width = max(len(f["input_ids"]) for f in feats)
        ids = torch.tensor([f["input_ids"] + [tok.pad_token_id] * (width - len(f["input_ids"])) for f in feats])
        mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in feats])
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.clone()}

    assert _codes(parts, collator=leaky)["labels_on_padding"] == "error"


def test_unmatched_target_module(parts) -> None:  # noqa: ANN001
    cfg = parts[0]
    bad = replace(cfg, lora=replace(cfg.lora, target_modules=("q_proj", "qkv_proj")))
    assert _codes(parts, cfg=bad) == {"target_module_unmatched": "error"}


def test_truncation_warns_with_distribution(parts) -> None:  # noqa: ANN001
    cfg = parts[0]
    assert _codes(parts, cfg=replace(cfg, training=replace(cfg.training, max_length=200))) == {"truncation": "warning"}


def test_fp16_on_bf16_device(parts) -> None:  # noqa: ANN001
    cfg = parts[0]
    fp16 = replace(cfg, training=replace(cfg.training, precision="fp16"))
    assert _codes(parts, cfg=fp16, bf16=True) == {"fp16_on_bf16_device": "warning"}
    assert _codes(parts, cfg=fp16, bf16=False) == {}


def test_validation_overlap(parts) -> None:  # noqa: ANN001
    data: DataSplit = parts[2]
    leaky = DataSplit(data.train, data.validation + data.train[:3], data.sha256, data.total)
    assert _codes(parts, data=leaky)["validation_overlap"] == "error"


def test_golden_case_in_training_data(parts) -> None:  # noqa: ANN001
    data: DataSplit = parts[2]
    suite = parts[4]
    case = suite.cases[0]
    leaked = Example(
        999,
        [{"role": "system", "content": "s"}, {"role": "user", "content": case.messages[-1]["content"]}],
        [{"role": "assistant", "content": "{}"}],
    )
    near = Example(
        1000,
        [{"role": "user", "content": case.messages[-1]["content"][:-3] + "ạ!!"}],
        [{"role": "assistant", "content": "{}"}],
    )
    codes = _codes(parts, data=DataSplit(data.train + (leaked, near), data.validation, data.sha256, data.total + 2))
    assert codes == {"golden_in_training": "error", "golden_near_duplicate": "error"}
