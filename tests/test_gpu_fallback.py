"""trainers/cuda_path.CudaGraphFallback: when CUDA graphs fail, training goes on without them and loses no step.

CPU tests drive the guard with a stand-in trainer and a fake failure (half a backward pass reaches the
gradients, then the graph trees' error); GPU tests run the recipe itself with a failure forced inside
torch's CUDA graph tree manager, and check what training_metadata.json records.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from torch import nn

from trainers.cuda_path import (
    CUDA_GRAPH_HOOK,
    CudaGraphFallback,
    ReplayableDropout,
    checkpoint_outside_compiled_layer,
    cuda_graph_failure,
    decoder_layers,
    disable_cuda_graphs,
    prepare_qlora_model,
    use_replayable_dropout,
    uses_cuda_graphs,
)

# the message torch 2.11's graph trees raised on the H200 with transformers 5.17 (docs/gpu.md)
FAILURE = (
    "TODO: graph recording observed an input tensor deallocate during graph  recording that did not occur "
    "during replay. Please file an issue."
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ACCUM = 3


def _model() -> nn.Module:
    from peft import LoraConfig
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=None,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = prepare_qlora_model(MistralForCausalLM(config), lora, keep_layers=1)
    use_replayable_dropout(model)  # what compile_decoder_layers does; eager here
    return model


class FakeTrainer:
    """What the guard uses of a transformers Trainer: the two step methods, `state`, TRL's metric bookkeeping.

    `training_step` fails like the graph trees do while `graphs` is on, at its `fail_at`th call: after half
    of the backward pass has reached the gradients, so that retrying only that micro-batch would be wrong.
    """

    def __init__(self, fail_at: int | None = None, predict_fail_at: int | None = None) -> None:
        self.state = SimpleNamespace(global_step=0)
        self._metrics: dict[str, Any] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._total_train_tokens = 0
        self.graphs = True
        self.fail_at = fail_at
        self.predict_fail_at = predict_fail_at
        self.calls = 0
        self.predict_calls = 0
        self.error: Exception | None = None

    def training_step(self, model: nn.Module, inputs: dict[str, torch.Tensor], num_items_in_batch: Any = None):  # noqa: ANN201
        self.calls += 1
        if self.error is not None:
            raise self.error
        loss = model(**inputs).loss / ACCUM
        self._metrics["train"]["loss"].append(float(loss.detach()))
        self._total_train_tokens += int(inputs["input_ids"].numel())
        if self.graphs and self.calls == self.fail_at:
            (0.5 * loss).backward()
            raise RuntimeError(FAILURE)
        loss.backward()
        return loss.detach()

    def prediction_step(self, model: nn.Module, inputs: dict[str, torch.Tensor], prediction_loss_only: bool):  # noqa: ANN201
        self.predict_calls += 1
        if self.graphs and self.predict_calls == self.predict_fail_at:
            raise RuntimeError(FAILURE)
        with torch.no_grad():
            return model(**inputs).loss, None, None


def _run(fail_at: int | None, steps: int = 3) -> tuple[nn.Module, FakeTrainer, CudaGraphFallback]:
    """`steps` optimizer steps of ACCUM micro-batches, the Trainer's loop in miniature."""
    model = _model()
    trainer = FakeTrainer(fail_at)
    guard = CudaGraphFallback(trainer, model, disable=lambda m: setattr(trainer, "graphs", False), quiet=True)
    guard.install()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        for _ in range(ACCUM):
            ids = torch.randint(0, 256, (2, 16), generator=g)
            trainer.training_step(model, {"input_ids": ids, "labels": ids})
        opt.step()
        opt.zero_grad(set_to_none=True)
        trainer.state.global_step += 1
    guard.remove()
    return model, trainer, guard


def _lora_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def test_graph_tree_failures_are_recognised_and_nothing_else() -> None:
    assert cuda_graph_failure(RuntimeError(FAILURE)).startswith("TODO: graph recording observed an input tensor")
    try:
        try:
            raise RuntimeError(FAILURE)
        except RuntimeError as inner:
            raise ValueError("backend compiler failed") from inner
    except ValueError as outer:
        assert cuda_graph_failure(outer) is not None, "found through the chain (dynamo wraps errors)"
    overwritten = RuntimeError(
        "Error: accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run."
    )
    assert cuda_graph_failure(overwritten) is not None
    assert cuda_graph_failure(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")) is None
    assert cuda_graph_failure(ValueError("expected input batch_size (4) to match target batch_size (2)")) is None


def test_fallback_goes_on_from_the_optimizer_step_it_was_in_exactly() -> None:
    """A failure in the second micro-batch of the second optimizer step: the finished run equals one that never failed.

    Bit for bit on the CPU: the step's first micro-batch is run again (gradients cleared first), with the
    dropout counter as it was when the step began (same masks), and the logged metrics are not doubled.
    """
    reference, ref_trainer, ref_guard = _run(fail_at=None)
    model, trainer, guard = _run(fail_at=ACCUM + 2)
    assert ref_guard.record()["used"] is True and ref_guard.record()["fallback_reason"] is None
    expected, got = _lora_state(reference), _lora_state(model)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[n], got[n]) for n in expected), "the fallback run must equal the unbroken one"
    step = next(m.step for m in model.modules() if isinstance(m, ReplayableDropout))
    ref_step = next(m.step for m in reference.modules() if isinstance(m, ReplayableDropout))
    assert torch.equal(step, ref_step), "as many training forwards counted, masks in step"
    assert trainer._metrics["train"]["loss"] == ref_trainer._metrics["train"]["loss"], "metrics counted once"
    assert trainer._total_train_tokens == ref_trainer._total_train_tokens
    assert trainer.calls == 3 * ACCUM + 2, "the failed micro-batch and the one before it ran again"
    record = guard.record()
    assert record["requested"] is True and record["used"] is False
    assert "graph recording observed an input tensor deallocate" in record["fallback_reason"]
    assert record["fallback_at"] == {
        "during": "training",
        "global_step": 1,
        "micro_batch": 1,
        "replayed_micro_batches": 2,
    }
    assert record["compile_mode_after_fallback"] == "default" and record["transformers"]
    assert "training_step" not in vars(trainer), "remove() gives the trainer its own methods back"


def test_a_second_failure_and_other_errors_pass_through() -> None:
    model = _model()
    trainer = FakeTrainer(fail_at=1)
    disabled = []
    guard = CudaGraphFallback(trainer, model, disable=disabled.append, quiet=True).install()
    ids = torch.randint(0, 256, (2, 8))
    trainer.training_step(model, {"input_ids": ids, "labels": ids})  # fails, falls back, graphs stay "on" here
    assert disabled == [model] and not guard.active
    trainer.fail_at = trainer.calls + 1
    with pytest.raises(RuntimeError, match="graph recording observed"):
        trainer.training_step(model, {"input_ids": ids, "labels": ids})
    guard.remove()

    trainer = FakeTrainer()
    trainer.error = RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    guard = CudaGraphFallback(trainer, _model(), disable=disabled.append, quiet=True).install()
    with pytest.raises(RuntimeError, match="out of memory"):
        trainer.training_step(model, {"input_ids": ids, "labels": ids})
    assert guard.active and guard.record()["used"] is True, "an error that is not the graph trees' changes nothing"
    guard.remove()


def test_a_failed_evaluation_step_is_run_again_without_graphs() -> None:
    model = _model().eval()
    trainer = FakeTrainer(predict_fail_at=1)
    guard = CudaGraphFallback(trainer, model, disable=lambda m: setattr(trainer, "graphs", False), quiet=True)
    guard.install()
    ids = torch.randint(0, 256, (2, 8))
    loss, _, _ = trainer.prediction_step(model, {"input_ids": ids, "labels": ids}, True)
    assert torch.isfinite(loss) and trainer.predict_calls == 2
    assert guard.record()["fallback_at"]["during"] == "evaluation"
    guard.remove()


def test_disable_cuda_graphs_recompiles_the_layers_and_drops_the_step_mark() -> None:
    from peft import LoraConfig
    from transformers import MistralConfig, MistralForCausalLM

    config = MistralConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=None,
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")
    model = prepare_qlora_model(
        MistralForCausalLM(config), lora, keep_layers=1, compile_layers=True, compile_mode="reduce-overhead"
    )
    decoder = model.get_base_model().get_decoder()
    hooks = len(decoder._forward_pre_hooks)
    before = [layer._compiled_call_impl for layer in decoder_layers(model)]
    assert uses_cuda_graphs(model) and all(c is not None for c in before)
    disable_cuda_graphs(model)
    assert not uses_cuda_graphs(model) and getattr(decoder, CUDA_GRAPH_HOOK) is None
    assert len(decoder._forward_pre_hooks) == hooks - 1, "the step mark is gone, the dropout counter's hook stays"
    after = [layer._compiled_call_impl for layer in decoder_layers(model)]
    assert all(a is not None and a is not b for a, b in zip(after, before))
    funcs = {id(layer._gradient_checkpointing_func) for layer in decoder_layers(model) if layer.gradient_checkpointing}
    assert len(funcs) == 1, "the checkpoint policy is untouched"


def test_checkpoint_placement_check_reads_the_layer_class(monkeypatch: pytest.MonkeyPatch) -> None:
    """transformers up to 5.22 checkpoints around __call__ (outside the compiled layer), 5.23 on around forward."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if "__call__" in GradientCheckpointingLayer.__dict__:
        assert "around the compiled call" in checkpoint_outside_compiled_layer()
    else:
        assert checkpoint_outside_compiled_layer() is None
        monkeypatch.setattr(GradientCheckpointingLayer, "__call__", nn.Module.__call__, raising=False)
        assert "around the compiled call" in checkpoint_outside_compiled_layer()


# --- GPU: the recipe itself -------------------------------------------------------------------------------


def _force_graph_failure(monkeypatch: pytest.MonkeyPatch, at_call: int) -> list[int]:
    """CUDA graph trees raise their liveness error once, at the manager's `at_call`th run: a failure mid-step."""
    from torch._inductor import cudagraph_trees

    original = cudagraph_trees.CUDAGraphTreeManager.run
    calls = [0]

    def run(self: Any, new_inputs: Any, function_id: Any) -> Any:
        calls[0] += 1
        if calls[0] == at_call:
            raise RuntimeError(FAILURE)
        return original(self, new_inputs, function_id)

    monkeypatch.setattr(cudagraph_trees.CUDAGraphTreeManager, "run", run)
    return calls


def _recipe_model(folder: Path, tokenizer: Any) -> Path:
    """Five layers, so that with keep 3 two are checkpointed, as in seed000; the embedded tokenizer."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        sliding_window=None,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
    )
    MistralForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _train(model_dir: Path, out: Path, steps: int = 3) -> dict[str, Any]:
    from harness.training.config import load_train_config
    from tests.conftest import REPO
    from trainers.sft_recipe import train

    cfg = load_train_config(REPO / "trainers/configs/seed000.yaml").with_overrides(str(model_dir), str(out), steps)
    cfg = replace(cfg, training=replace(cfg.training, batch_size=2, grad_accum=2, save_steps=50))
    cfg = replace(cfg, data=replace(cfg.data, validation_fraction=0.0))  # no evaluation: half the compile time
    folder = train(cfg, root=REPO, quiet=True)
    meta = json.loads((folder / "training_metadata.json").read_text(encoding="utf-8"))
    from safetensors.torch import load_file

    meta["_adapter"] = load_file(str(folder / "adapter" / "adapter_model.safetensors"))
    return meta


@pytest.mark.gpu
def test_recipe_falls_back_when_cuda_graphs_fail_and_matches_a_run_without_them(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """seed000 through SFTTrainer, CUDA graphs failing mid-run: it finishes, records why, trains as without graphs.

    The failure is forced at the graph tree manager's 38th run (about mid-backward of the fourth
    micro-batch); on the H200 the graphs failed by themselves before that, at the second micro-batch, with
    transformers 5.17 and 5.24 alike (docs/gpu.md): either way the run must end as the one without graphs.
    """
    import trainers.cuda_path as cuda_path
    import trainers.sft_recipe as recipe

    model_dir = _recipe_model(tmp_path / "m", tokenizer)
    monkeypatch.setattr(cuda_path, "checkpoint_outside_compiled_layer", lambda: None)  # try the graphs regardless
    _force_graph_failure(monkeypatch, at_call=38)  # 10 runs a micro-batch: mid-backward of the 4th
    fell_back = _train(model_dir, tmp_path / "a")
    monkeypatch.undo()
    monkeypatch.setattr(recipe, "CUDA_COMPILE_MODE", None)
    plain = _train(model_dir, tmp_path / "b")

    graphs = fell_back["precision"]["cuda_path"]["cuda_graphs"]
    assert graphs["requested"] is True and graphs["used"] is False, graphs
    # the forced error, or one the graph trees raised by themselves before it (transformers <= 5.22)
    assert cuda_graph_failure(RuntimeError(graphs["fallback_reason"])) is not None, graphs["fallback_reason"]
    assert graphs["fallback_at"]["during"] == "training" and graphs["compile_mode_after_fallback"] == "default"
    assert fell_back["steps"] == plain["steps"] == 3
    assert "cuda_graphs" not in plain["precision"]["cuda_path"], "nothing to record when graphs were not asked for"
    a = torch.tensor([p["loss"] for p in fell_back["loss_curve"]])
    b = torch.tensor([p["loss"] for p in plain["loss_curve"]])
    assert torch.allclose(a, b, rtol=1e-3), f"loss curves {a.tolist()} vs {b.tolist()}"
    wa, wb = fell_back["_adapter"], plain["_adapter"]
    diff = max(float((wa[k].float() - wb[k].float()).norm() / wb[k].float().norm().clamp_min(1e-12)) for k in wa)
    # not bit for bit: after the fallback dynamo compiles afresh (static shapes first), and Adam's first steps
    # turn rounding-level gradient differences near zero into sign flips; the CPU test above is the exact one
    assert diff < 0.1, f"adapter weights differ by {diff:.3g} (relative, worst tensor)"
    print(
        f"fallback {graphs}; losses {a.tolist()} vs {b.tolist()}; worst relative weight difference {diff:.3g}; "
        f"train_time_s {fell_back['train_time_s']} vs {plain['train_time_s']}"
    )


@pytest.mark.gpu
def test_recipe_records_cuda_graphs_on_this_transformers(tmp_path: Path, tokenizer: Any) -> None:
    """No forced failure: the run finishes and the record is consistent with what happened.

    Up to transformers 5.22 the recipe knows beforehand (`checkpoint_outside_compiled_layer`). From 5.23 the
    graphs are tried; on the H200 with 5.24 and gradient accumulation they failed by themselves at the second
    micro-batch (docs/gpu.md), so either outcome is accepted here, provided it is recorded as it happened.
    """
    meta = _train(_recipe_model(tmp_path / "m", tokenizer), tmp_path / "c", steps=2)
    graphs = meta["precision"]["cuda_path"]["cuda_graphs"]
    assert meta["steps"] == 2 and graphs["requested"] is True
    expected = checkpoint_outside_compiled_layer()
    if expected is not None:
        assert graphs["used"] is False and graphs["fallback_reason"] == expected
        assert graphs["fallback_at"] == {"during": "preparation"}
    elif graphs["used"]:
        assert graphs["fallback_reason"] is None and graphs["fallback_at"] is None, graphs
    else:
        assert cuda_graph_failure(RuntimeError(graphs["fallback_reason"])) is not None, graphs
        assert graphs["fallback_at"]["during"] in ("training", "evaluation")
    print(f"cuda_graphs: {graphs}; {meta['tokens_per_s']} tokens/s over {meta['train_time_s']} s, compile included")
