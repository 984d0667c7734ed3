"""Recipes on the tiny model: presets load and run, LoRA trains only the adapter, resume and determinism."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from harness.cli import main
from harness.errors import HarnessInputError
from harness.training.config import load_train_config
from tests.conftest import REPO

PRESETS = sorted((REPO / "trainers" / "configs").glob("*.yaml"))


def _train(tmp_path: Path, preset: Path, model: Path, steps: int, **over: object) -> Path:
    from dataclasses import replace

    from trainers.sft_recipe import train

    cfg = load_train_config(preset).with_overrides(str(model), str(tmp_path / "cands"), steps)
    if over:
        cfg = replace(cfg, training=replace(cfg.training, **over))
    return train(cfg, root=REPO, quiet=True)


def test_every_preset_starts_with_its_launch_command() -> None:
    assert {p.stem for p in PRESETS} >= {"demo", "seed000", "seed001", "seed002_a", "seed002_b", "seed002_c", "seed003"}
    for p in PRESETS:
        first = p.read_text(encoding="utf-8").splitlines()[0]
        assert first.startswith(f"# Launch: harness train trainers/configs/{p.name}"), p
        load_train_config(p)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_preset_runs_on_the_tiny_model(preset: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    out = _train(
        tmp_path, preset, tiny_model_dir, 2, batch_size=2, grad_accum=1, gradient_checkpointing=False, save_steps=50
    )
    meta = json.loads((out / "training_metadata.json").read_text(encoding="utf-8"))
    assert meta["steps"] == 2 and meta["loss_curve"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "README.md").read_text(encoding="utf-8").startswith(f"# {meta['name']}")
    for key in (
        "base_model",
        "data",
        "config",
        "packages",
        "hardware",
        "tokens_per_s",
        "peak_memory_bytes",
        "trainable_share",
        "precision",
        "adapter_sha256",
    ):
        assert key in meta, key
    assert 0 < meta["trainable_share"] < 0.5


def test_preset_with_missing_model_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(REPO / "trainers/configs/seed000.yaml")]) == 2
    err = capsys.readouterr().err
    assert "mistralai/Mistral-7B-Instruct-v0.3" in err and "not found" in err and "Traceback" not in err


def test_unknown_config_key_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        (REPO / "trainers/configs/demo.yaml")
        .read_text(encoding="utf-8")
        .replace("  r: 16", "  rank: 16")
        .replace("learning_rate", "learning_rat"),
        encoding="utf-8",
    )
    assert main(["doctor", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "2 problems" in err and "lora.rank" in err and "allowed keys: r, alpha" in err
    assert "training.learning_rat" in err and "did you mean 'learning_rate'" in err


def test_bad_merge_dtype_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        (REPO / "trainers/configs/demo.yaml").read_text(encoding="utf-8") + "merge_dtype: int8\n", encoding="utf-8"
    )
    assert main(["doctor", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "merge_dtype" in err and "int8" in err and "Traceback" not in err


def test_base_weights_frozen_and_adapter_trained(tiny_model_dir: Path, tmp_path: Path) -> None:
    before = load_file(tiny_model_dir / "model.safetensors")
    out = _train(tmp_path, REPO / "trainers/configs/demo.yaml", tiny_model_dir, 3, batch_size=4)
    after = load_file(tiny_model_dir / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b), "LoRA B starts at zero and must move"


def test_same_seed_same_adapter_and_resume(tiny_model_dir: Path, tmp_path: Path) -> None:
    a = _train(tmp_path / "a", REPO / "trainers/configs/demo.yaml", tiny_model_dir, 4, batch_size=2, save_steps=2)
    b = _train(tmp_path / "b", REPO / "trainers/configs/demo.yaml", tiny_model_dir, 4, batch_size=2, save_steps=2)
    ha = json.loads((a / "training_metadata.json").read_text())["adapter_sha256"]
    assert ha == json.loads((b / "training_metadata.json").read_text())["adapter_sha256"]
    # A run killed after step 2: only checkpoint-2 is left. Re-running resumes and lands on the same adapter.
    shutil.rmtree(b / "adapter")
    (b / "training_metadata.json").unlink()
    shutil.rmtree(b / "checkpoints" / "checkpoint-4")
    b2 = _train(tmp_path / "b", REPO / "trainers/configs/demo.yaml", tiny_model_dir, 4, batch_size=2, save_steps=2)
    meta = json.loads((b2 / "training_metadata.json").read_text())
    assert meta["resumed_from_step"] == 2
    assert meta["adapter_sha256"] == ha


def test_bad_training_data_is_reported_by_line(tmp_path: Path, tiny_model_dir: Path) -> None:
    from dataclasses import replace

    from trainers.sft_recipe import prepare

    data = tmp_path / "bad.jsonl"
    good = (REPO / "trainers/data/support_vi_train.jsonl").read_text(encoding="utf-8").splitlines()[0]
    data.write_text(
        "\n".join(
            [
                good,
                '{"messages": [{"role": "user", "content": "hi"}]}',
                '{"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "{}"}]}',
                '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "not json"}]}',
                (
                    '{"messages": [{"role": "user", "content": "hi"}, '
                    '{"role": "assistant", "content": "{\\"category\\": \\"x\\"}"}]}'
                ),
                "{broken",
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    cfg = load_train_config(REPO / "trainers/configs/demo.yaml").with_overrides(str(tiny_model_dir))
    cfg = replace(cfg, data=replace(cfg.data, path=str(data)))
    with pytest.raises(HarnessInputError) as info:
        prepare(cfg, REPO)
    msg = info.value.render()
    for needle in (
        "bad.jsonl:2",
        "user and one assistant",
        "bad.jsonl:3",
        "unknown role 'robot'",
        "bad.jsonl:4",
        "not JSON",
        "bad.jsonl:5",
        "rejected by the contract",
        "bad.jsonl:6",
        "invalid JSON",
    ):
        assert needle in msg, needle


def test_scoring_labelled_positions_only_changes_no_loss_or_gradient(tiny_model_dir: Path) -> None:
    """The CPU speed-up in the recipe must be exact: same loss and same gradients as TRL's default."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from trainers.sft_recipe import labelled_positions_only

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (2, 24))
    labels = ids.clone()
    labels[:, :16] = -100

    def run() -> tuple[torch.Tensor, torch.Tensor, Any]:
        model.zero_grad()
        out = model(input_ids=ids, labels=labels, fused_lm_head=True)
        out.loss.backward()
        return out.loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone(), out

    import trl.trainer.utils as trl_utils

    chunked = trl_utils._ChunkedLogProbFunction
    default_loss, default_grad, default_out = run()
    with labelled_positions_only(cuda=False) as what:
        loss, grad, out = run()
    assert what == "labelled positions only, unchunked"
    torch.testing.assert_close(loss, default_loss)
    torch.testing.assert_close(grad, default_grad)
    mask = labels[:, 1:] != -100
    torch.testing.assert_close(out.log_probs[mask], default_out.log_probs[mask])
    torch.testing.assert_close(out.entropy[mask], default_out.entropy[mask], rtol=1e-4, atol=1e-4)
    assert torch.equal(out.is_top1[mask], default_out.is_top1[mask]), "the accuracy metric is unchanged"
    assert trl_utils._use_triton(torch.device("cpu")) is False, "the patch must be undone after training"
    assert trl_utils._ChunkedLogProbFunction is chunked


def test_direct_log_prob_falls_back_to_chunks_when_the_logits_are_too_large(monkeypatch: pytest.MonkeyPatch) -> None:
    from trainers.sft_recipe import DirectLogProb

    calls: list[int] = []

    class Chunked:
        @staticmethod
        def apply(hidden: torch.Tensor, *args: Any) -> tuple[Any, ...]:
            calls.append(hidden.shape[0])
            return (torch.zeros(hidden.shape[0]),) + (None,) * 4

    direct = DirectLogProb(Chunked)
    monkeypatch.setattr(DirectLogProb, "MAX_ELEMENTS", 10 * 32)
    weight, targets = torch.randn(32, 8), torch.zeros(11, dtype=torch.long)
    direct.apply(torch.randn(10, 8), weight, None, targets[:10], 1.0, 4, None, 1.0, ("entropy",))
    assert calls == []
    direct.apply(torch.randn(11, 8), weight, None, targets, 1.0, 4, None, 1.0, ("entropy",))
    assert calls == [11]


def test_the_trl_internals_the_cpu_path_replaces_keep_their_shape() -> None:
    """Fails loudly when TRL changes what the CPU fast path patches (the fast path would silently be off)."""
    import inspect

    import trl
    import trl.trainer.utils as trl_utils

    where = f"TRL {trl.__version__} (requirements.lock pins the version this was written against)"
    assert callable(getattr(trl_utils, "_use_triton", None)), f"{where}: trl.trainer.utils._use_triton is gone"
    assert list(inspect.signature(trl_utils._use_triton).parameters) == ["device"], where
    chunked = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    assert chunked is not None, f"{where}: trl.trainer.utils._ChunkedLogProbFunction is gone"
    expected = [
        "ctx",
        "hidden",
        "weight",
        "bias",
        "targets",
        "temperature",
        "chunk_size",
        "final_logit_softcapping",
        "logit_scale",
        "outputs",
    ]
    assert list(inspect.signature(chunked.forward).parameters) == expected, f"{where}: its forward() changed"
    from trainers.sft_recipe import labelled_positions_only

    with labelled_positions_only(cuda=False) as what:
        assert what == "labelled positions only, unchunked", what
