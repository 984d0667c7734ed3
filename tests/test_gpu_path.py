"""trainers/cuda_path.py: the fast QLoRA preparation. CPU tests for the layer bookkeeping, GPU tests for nf4."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from trainers.cuda_path import (
    MlpSavePolicy,
    ReplayableDropout,
    decoder_layers,
    layers_to_keep,
    prepare_qlora_model,
    set_activation_checkpointing,
    use_replayable_dropout,
)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _config(hidden: int = 64, layers: int = 4, vocab: int = 256):  # noqa: ANN202 - transformers config
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        sliding_window=None,
    )


def _lora():  # noqa: ANN202 - peft config
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=TARGETS, task_type="CAUSAL_LM")


def _mlp_calls(model: nn.Module) -> list[int]:
    """Calls into each layer's MLP: 2 a step where the layer is recomputed in backward, 1 where not.

    A pre-hook, because a non-reentrant recompute stops as soon as the last saved tensor is rebuilt.
    """
    counts = [0] * len(decoder_layers(model))
    for i, layer in enumerate(decoder_layers(model)):
        layer.mlp.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


def _step(model: nn.Module, opt: torch.optim.Optimizer, ids: torch.Tensor) -> float:
    with torch.autocast(device_type=ids.device.type, dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def test_layers_to_keep_fits_the_budget() -> None:
    gib = 1024**3
    assert layers_to_keep(7 * gib, 5 * gib, gib // 2, 32) == 4
    assert layers_to_keep(5 * gib, 6 * gib, gib // 2, 32) == 0
    assert layers_to_keep(100 * gib, 1 * gib, gib, 32) == 32
    with pytest.raises(ValueError, match="bytes_per_kept_layer"):
        layers_to_keep(gib, gib, 0, 32)


def test_checkpointing_flags_keep_the_last_layers() -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(_config(layers=4))
    assert set_activation_checkpointing(model, 1) == [True, True, True, False]
    assert [layer.gradient_checkpointing for layer in decoder_layers(model)] == [True, True, True, False]
    assert set_activation_checkpointing(model, 4) == [False] * 4
    assert not any(layer.gradient_checkpointing for layer in decoder_layers(model))
    with pytest.raises(ValueError, match="between 0 and the model's 4 decoder layers"):
        set_activation_checkpointing(model, 5)


def test_prepare_on_cpu_trains_lora_only_and_recomputes_checkpointed_layers() -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config(layers=4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    peft_model = prepare_qlora_model(model, _lora(), keep_layers=1)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    calls = _mlp_calls(peft_model)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 256, (2, 32))
    for _ in range(2):
        _step(peft_model, opt, ids)
    assert calls == [4, 4, 4, 2], "three checkpointed layers run twice a step, the kept one once"
    after = {
        n.replace(".base_layer", ""): p for n, p in peft_model.get_base_model().named_parameters() if "lora_" not in n
    }
    assert after.keys() == before.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert any(float(p.detach().abs().max()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n), (
        "LoRA B starts at zero and must move"
    )


def test_replayable_dropout_has_dropout_statistics_and_replays() -> None:
    step = torch.tensor(11)
    drop = ReplayableDropout(0.1, salt=3, step=step).train()
    x = torch.ones(512, 1024)
    y = drop(x)
    assert torch.equal(y, drop(x)), "same step, same mask: the backward replay sees what the forward saw"
    assert abs(float((y == 0).float().mean()) - 0.1) < 0.005
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.9))
    step.add_(1)
    other = drop(x)
    assert abs(float(((y == 0) & (other == 0)).float().mean()) - 0.01) < 0.003, "the next step's mask is independent"
    assert torch.equal(drop.eval()(x), x)


def test_replayable_dropout_swapped_in_and_advanced_once_per_forward() -> None:
    from transformers import AutoModelForCausalLM

    peft_model = prepare_qlora_model(AutoModelForCausalLM.from_config(_config(layers=2)), _lora())
    keys = set(peft_model.state_dict())
    assert use_replayable_dropout(peft_model) == 2 * 7
    assert set(peft_model.state_dict()) == keys, "nothing new is saved with the adapter"
    drops = [m for m in peft_model.modules() if isinstance(m, ReplayableDropout)]
    assert len({id(d.step) for d in drops}) == 1 and len({int(d.salt) for d in drops}) == len(drops)
    before = int(drops[0].step)
    ids = torch.randint(0, 256, (1, 16))
    peft_model(input_ids=ids, labels=ids).loss.backward()
    assert int(drops[0].step) == before + 1
    with torch.no_grad():
        peft_model(input_ids=ids)
    assert int(drops[0].step) == before + 1, "evaluation does not advance the masks"


def test_mlp_save_policy_saves_only_the_wide_base_matmuls() -> None:
    from torch.utils.checkpoint import CheckpointPolicy

    policy = MlpSavePolicy(hidden=64, intermediate=128)
    x, w_up, w_down = (
        torch.empty(32, 64, device="meta"),
        torch.empty(64, 128, device="meta"),
        torch.empty(128, 64, device="meta"),
    )
    lora_a, lora_b = torch.empty(32, 8, device="meta"), torch.empty(8, 128, device="meta")
    mm = torch.ops.aten.mm.default
    assert policy(None, mm, x, w_up) == CheckpointPolicy.MUST_SAVE, "gate/up projection: saved"
    assert (
        policy(None, torch.ops.aten.addmm.default, torch.empty(128, device="meta"), x, w_up)
        == CheckpointPolicy.MUST_SAVE
    )
    assert policy(None, mm, torch.empty(32, 128, device="meta"), w_down) == CheckpointPolicy.MUST_RECOMPUTE, (
        "down projection: recomputed"
    )
    assert policy(None, mm, lora_a, lora_b) == CheckpointPolicy.MUST_RECOMPUTE, "LoRA B (rank-wide input): recomputed"
    assert policy(None, torch.ops.aten.mul.Tensor, x, x) == CheckpointPolicy.MUST_RECOMPUTE
    import bitsandbytes  # noqa: F401 - defines the op

    gemm_4bit, packed = (
        torch.ops.bitsandbytes.gemm_4bit.default,
        torch.empty(64 * 128 // 2, 1, dtype=torch.uint8, device="meta"),
    )
    assert (
        policy(None, gemm_4bit, x, packed, [128, 64], torch.empty(128, device="meta"), 64, "nf4")
        == CheckpointPolicy.MUST_SAVE
    ), "nf4 up projection"
    assert (
        policy(
            None,
            gemm_4bit,
            torch.empty(32, 128, device="meta"),
            packed,
            [64, 128],
            torch.empty(128, device="meta"),
            64,
            "nf4",
        )
        == CheckpointPolicy.MUST_RECOMPUTE
    )


def test_save_mlp_layers_sit_just_before_the_kept_ones() -> None:
    from transformers import AutoModelForCausalLM

    peft_model = prepare_qlora_model(
        AutoModelForCausalLM.from_config(_config(layers=5)),
        _lora(),
        keep_layers=1,
        compile_layers=True,
        save_mlp_layers=2,
    )
    funcs = [layer._gradient_checkpointing_func for layer in decoder_layers(peft_model)]
    flags = [layer.gradient_checkpointing for layer in decoder_layers(peft_model)]
    assert flags == [True, True, True, True, False]
    assert funcs[0] is funcs[1] and funcs[2] is funcs[3] and funcs[1] is not funcs[2], (
        "one shared function (one graph) per policy"
    )
    assert isinstance(funcs[2].keywords["context_fn"].args[0], MlpSavePolicy)
    with pytest.raises(ValueError, match="save_mlp_layers=5"):
        prepare_qlora_model(
            AutoModelForCausalLM.from_config(_config(layers=5)),
            _lora(),
            keep_layers=1,
            compile_layers=True,
            save_mlp_layers=5,
        )
    with pytest.raises(ValueError, match="needs compile_layers"):
        prepare_qlora_model(AutoModelForCausalLM.from_config(_config(layers=5)), _lora(), save_mlp_layers=1)


def _nf4_model(tmp_path: Path, hidden: int, layers: int) -> nn.Module:
    """A tiny Mistral saved to disk and loaded back the way the recipe loads a real one (nf4, double quant,
    bf16 compute)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config(hidden=hidden, layers=layers)).save_pretrained(tmp_path / "m")
    q = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    return AutoModelForCausalLM.from_pretrained(
        tmp_path / "m", quantization_config=q, dtype=torch.bfloat16, device_map={"": 0}
    )


@pytest.mark.gpu
def test_nf4_base_frozen_lora_trained_checkpointing_on(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    model = _nf4_model(tmp_path, 64, 4)
    packed = {n: m.weight.data.clone() for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    assert len(packed) == 4 * 7
    peft_model = prepare_qlora_model(model, _lora(), keep_layers=1)
    assert all(p.dtype != torch.float32 for n, p in peft_model.named_parameters() if "lora_" not in n), (
        "no fp32 upcast of the base"
    )
    calls = _mlp_calls(peft_model)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    ids = torch.randint(0, 256, (2, 64), device="cuda")
    losses = [_step(peft_model, opt, ids) for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], (
        f"training on one batch lowers its loss: {losses}"
    )
    assert calls == [12, 12, 12, 6], "six steps: checkpointed layers run twice a step, the kept one once"
    now = {
        n.removeprefix("base_model.model."): m.weight.data
        for n, m in peft_model.named_modules()
        if isinstance(m, bnb.nn.Linear4bit)
    }
    assert all(torch.equal(packed[n.removesuffix(".base_layer")], w) for n, w in now.items())
    assert all(not p.requires_grad for n, p in peft_model.named_parameters() if "lora_" not in n)
    assert any(float(p.detach().abs().max()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)


@pytest.mark.gpu
def test_checkpointing_lowers_the_peak_on_gpu(tmp_path: Path) -> None:
    """Memory, measured: all layers checkpointed peaks lower than none, at a shape where activations dominate."""
    peaks = []
    for keep in (0, 4):
        peft_model = prepare_qlora_model(_nf4_model(tmp_path / str(keep), 512, 4), _lora(), keep_layers=keep)
        opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-3, fused=True)
        ids = torch.randint(0, 256, (4, 1024), device="cuda")
        _step(peft_model, opt, ids)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        _step(peft_model, opt, ids)
        peaks.append(torch.cuda.max_memory_allocated())
        del peft_model, opt
        torch.cuda.empty_cache()
    assert peaks[0] < 0.7 * peaks[1], f"checkpointed peak {peaks[0]} vs kept {peaks[1]} bytes"


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [None, "reduce-overhead"], ids=["default", "cudagraphs"])
def test_compiled_layers_train(tmp_path: Path, mode: str | None) -> None:
    peft_model = prepare_qlora_model(
        _nf4_model(tmp_path, 64, 2), _lora(), keep_layers=1, compile_layers=True, compile_mode=mode
    )
    layers = decoder_layers(peft_model)
    assert all(layer._compiled_call_impl is not None for layer in layers)
    drops = [m for m in peft_model.modules() if isinstance(m, ReplayableDropout)]
    assert len(drops) == 2 * 7 and not any(isinstance(m, nn.Dropout) for m in peft_model.modules())
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2, fused=True)
    ids = torch.randint(0, 256, (2, 64), device="cuda")
    losses = [_step(peft_model, opt, ids) for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], (
        f"training on one batch lowers its loss: {losses}"
    )
    assert any(float(p.detach().abs().max()) > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)


@pytest.mark.gpu
@pytest.mark.parametrize(
    ("compile_layers", "save_mlp", "mode"),
    [(False, 0, None), (True, 0, None), (True, 2, None), (True, 0, "reduce-overhead")],
    ids=["eager", "compiled", "compiled-save-mlp", "compiled-cudagraphs"],
)
def test_checkpointed_layers_replay_the_same_dropout(
    tmp_path: Path, compile_layers: bool, save_mlp: int, mode: str | None
) -> None:
    """LoRA gradients with every layer checkpointed match those with none, far closer than other dropout masks give.

    A replay that drew new dropout masks would differ from the kept run as much as a run with another
    dropout seed does; rounding alone (another compiled graph, bf16) differs far less.
    """
    from peft import LoraConfig

    lora = LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.1, target_modules=TARGETS, task_type="CAUSAL_LM", init_lora_weights=False
    )
    ids = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(0)).cuda()
    grads = []
    for keep, dropout_seed, steps in ((0, 1, 3), (2, 1, 3), (2, 7, 4)):  # the third draws other masks
        torch.manual_seed(0)
        model = prepare_qlora_model(
            _nf4_model(tmp_path / f"{keep}-{dropout_seed}", 64, 2),
            lora,
            keep_layers=keep,
            compile_layers=compile_layers,
            save_mlp_layers=save_mlp if keep == 0 else 0,
            compile_mode=mode,
        )
        for step in range(steps):  # the first call compiles (and CUDA graphs record on the second); compare the last
            model.zero_grad(set_to_none=True)
            torch.manual_seed(dropout_seed + step)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        grads.append(torch.cat([p.grad.float().flatten() for p in model.parameters() if p.requires_grad]))
    replay, other_masks = (grads[0] - grads[1]).norm() / grads[1].norm(), (grads[2] - grads[1]).norm() / grads[1].norm()
    assert replay < 0.2 * other_masks, (
        f"checkpointed vs kept differ by {replay:.3g} (relative); other dropout masks by {other_masks:.3g}"
    )
