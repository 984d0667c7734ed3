"""The CUDA path for QLoRA: how an nf4 model is made ready for LoRA training on a GPU.

Measured against the seed recipe (`peft.prepare_model_for_kbit_training` + LoRA) by
`benchmarks/gpu/bench_qlora_train.py`; docs/gpu.md holds the numbers and the dead ends. What differs:

- no fp32 upcast. The seed upcasts every weight that is not 4-bit (norms, embeddings, lm_head) to
  fp32; under bf16 autocast nothing needs fp32 weights, and the upcast makes the norms compute and
  save their activations in fp32.
- compiled decoder layers (`compile_layers`). Eager, the step is bound by Python on the CPU
  (profiled on an H100: 675 ms of CPU for 289 ms of GPU work a step), so fusing each layer into one
  compiled graph, shared by all layers, is where the speed is.
- activation checkpointing inside that graph, told to recompute everything (left to choose, the
  compiler kept 0.15 GiB a layer more), with LoRA dropout masks drawn from a hash
  (`ReplayableDropout`) so that the recompute reproduces them exactly.
- the last `keep_layers` layers are not checkpointed at all, and in the `save_mlp_layers` checkpointed
  layers before them the recompute skips the two widest matmuls (gate and up projections: 74% of a
  layer's recompute FLOPs for 39% of its activation memory): the memory the seed's own peak allows
  buys back part of the recompute.

The frozen base stays 4-bit; the LoRA weights stay fp32 (the optimizer's master copy) and run in bf16
under autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CHECKPOINT_KWARGS: dict[str, Any] = {"use_reentrant": False}


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks that activation checkpointing applies to, in forward order."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no GradientCheckpointingLayer blocks; "
            "this path needs a transformers decoder model"
        )
    return layers


def set_activation_checkpointing(model: nn.Module, keep_layers: int) -> list[bool]:
    """Checkpoint every decoder layer except the last `keep_layers`; returns the per-layer flags.

    The last layers are the ones left alone because the backward pass reaches them first: their saved
    activations are freed before any checkpointed layer is recomputed. Non-reentrant checkpointing
    needs no `enable_input_require_grads` hook and works with frozen embeddings.
    """
    layers = decoder_layers(model)
    if not 0 <= keep_layers <= len(layers):
        raise ValueError(f"keep_layers={keep_layers} must be between 0 and the model's {len(layers)} decoder layers")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if keep_layers == len(layers):
        base.gradient_checkpointing_disable()
        return [False] * len(layers)
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=dict(CHECKPOINT_KWARGS))
    flags = [i < len(layers) - keep_layers for i in range(len(layers))]
    for layer, flag in zip(layers, flags):
        layer.gradient_checkpointing = flag
    return flags


def layers_to_keep(budget_bytes: int, peak_all_checkpointed: int, bytes_per_kept_layer: int, n_layers: int) -> int:
    """How many layers can keep their activations with the peak still under `budget_bytes`.

    Both inputs are measured at the training batch shape: one step with every layer checkpointed, one
    with a few kept. Peak memory grows linearly in kept layers at a fixed shape.
    """
    if bytes_per_kept_layer <= 0:
        raise ValueError(f"bytes_per_kept_layer must be positive, got {bytes_per_kept_layer}")
    spare = budget_bytes - peak_all_checkpointed
    return int(max(0, min(n_layers, spare // bytes_per_kept_layer)))


class ReplayableDropout(nn.Module):
    """Dropout whose mask is a hash of (step, salt, element index) instead of a draw from the RNG.

    Why: a checkpointed layer is run twice, and inside a compiled graph a random op cannot be replayed
    from a restored RNG state: it would draw new masks in backward (wrong gradients), or, with the
    compiler's RNG functionalization, the graph kept every activation (measured: 17.9 GiB instead of
    5.8). A mask that is a pure function of its inputs is recomputed exactly, fused into the kernel
    around it. Same law as `nn.Dropout` (keep with probability 1 - p, scale by 1 / (1 - p)); `step`
    is a counter shared by all instances that a hook on the decoder advances once per training
    forward, so the replay in backward sees the forward's masks. Meant for compiled layers: run
    eagerly, it materialises the index and hash tensors.
    """

    def __init__(self, p: float, salt: int, step: torch.Tensor) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.step = step  # shared by every instance: a plain attribute, not saved with the adapter
        # a tensor, not an int: the compiler would specialise (and recompile) on every distinct int
        self.register_buffer("salt", torch.tensor(salt, dtype=torch.int64, device=step.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        key = _mix32(self.step * 0x85EBCA77 + self.salt * 0xC2B2AE3D)
        # xor, not a multiply-add: the compiler folds arange arithmetic into int32 index math, where a
        # 32-bit constant does not fit (Triton refused to build it)
        idx = torch.arange(x.numel(), device=x.device, dtype=torch.int64).view(x.shape)
        h = _mix32(idx ^ key)
        keep = (h >> 8) >= int(self.p * (1 << 24))  # top 24 bits against p
        return x * keep.to(x.dtype) * (1.0 / (1.0 - self.p))

    def extra_repr(self) -> str:
        return f"p={self.p}, salt={int(self.salt)}"


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xor-shift / multiply rounds) on int64 lanes, low 32 bits kept."""
    m = 0xFFFFFFFF
    h = h & m
    h = h ^ (h >> 16)
    h = (h * 0x7FEB352D) & m
    h = h ^ (h >> 15)
    h = (h * 0x846CA68B) & m
    return h ^ (h >> 16)


def use_replayable_dropout(peft_model: nn.Module) -> int:
    """Swap every LoRA `nn.Dropout` for a `ReplayableDropout`; returns how many were swapped."""
    base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
    device = next(p.device for p in base.parameters())
    step = torch.randint(0, 1 << 30, (), device=device, dtype=torch.int64)  # differs by seed, like nn.Dropout
    swapped = 0
    for module in peft_model.modules():
        drops = getattr(module, "lora_dropout", None)
        if not isinstance(drops, nn.ModuleDict):
            continue
        for name, drop in list(drops.items()):
            if isinstance(drop, nn.Dropout):
                drops[name] = ReplayableDropout(drop.p, salt=swapped, step=step)
                drops[name].train(drop.training)
                swapped += 1

    def advance(module: nn.Module, args: Any, kwargs: Any) -> None:
        if module.training and torch.is_grad_enabled():
            step.add_(1)

    # on the decoder, which every causal-LM forward calls as a module (peft calls the LM's .forward directly)
    base.get_decoder().register_forward_pre_hook(advance, with_kwargs=True)
    return swapped


def compile_decoder_layers(
    model: nn.Module, recompute_all: bool = True, save_mlp_layers: int = 0, mode: str | None = None
) -> None:
    """Compile each decoder layer, transformers' checkpoint included, with replayable LoRA dropout.

    The checkpointed region becomes part of the compiled graph, and `recompute_all` tags every op in it
    MUST_RECOMPUTE (a selective-checkpointing policy); left to the partitioner's own choice, the layer
    kept about 0.15 GiB more (measured with the 7B at 2 x 1024 tokens). The checkpoint cannot go
    outside the compiled call instead: torch.compile does not trace under the saved-tensor hooks that
    non-reentrant checkpointing installs, and those layers ran eagerly. The last `save_mlp_layers`
    checkpointed layers save the outputs of their gate and up projections instead (`MlpSavePolicy`).
    Layers with the same policy share one compiled graph (checkpointed or not, train or eval). `mode`
    is torch.compile's (None: the default; "reduce-overhead": CUDA graphs).
    """
    from functools import partial

    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts

    if mode == "reduce-overhead":
        # CUDA graphs recorded for an earlier model replay that model's weight addresses: after it is
        # freed, a graph reused for this one crashed the process (seen on the H100 with a second model
        # of the same shape). Start from nothing; this recompiles every graph in the process.
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees

        torch._dynamo.reset()
        reset_cudagraph_trees()
    # the default recompile limit (8) would send the layers past it back to eager without saying so
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    use_replayable_dropout(model)
    layers = decoder_layers(model)
    checkpointed = [layer for layer in layers if layer.gradient_checkpointing]
    if not 0 <= save_mlp_layers <= len(checkpointed):
        raise ValueError(
            f"save_mlp_layers={save_mlp_layers} must be between 0 and the {len(checkpointed)} checkpointed layers"
        )
    config = model.config if hasattr(model, "config") else None
    # one function object per policy: dynamo guards on it, so every layer of a policy reuses one graph
    recompute = partial(
        checkpoint, **CHECKPOINT_KWARGS, context_fn=partial(create_selective_checkpoint_contexts, _recompute_everything)
    )
    save_mlp = None
    if save_mlp_layers:
        policy = MlpSavePolicy(int(config.hidden_size), int(config.intermediate_size))
        save_mlp = partial(
            checkpoint, **CHECKPOINT_KWARGS, context_fn=partial(create_selective_checkpoint_contexts, policy)
        )
    first_saving = len(checkpointed) - save_mlp_layers
    for i, layer in enumerate(checkpointed):
        if save_mlp is not None and i >= first_saving:
            layer._gradient_checkpointing_func = save_mlp
        elif recompute_all:
            layer._gradient_checkpointing_func = recompute
    for layer in layers:
        layer.compile(mode=mode)
    decoder = _decoder(model)
    old = getattr(decoder, CUDA_GRAPH_HOOK, None)
    if old is not None:
        old.remove()
    hook = None
    if mode == "reduce-overhead":
        hook = decoder.register_forward_pre_hook(_new_cuda_graph_step, with_kwargs=True)
    setattr(decoder, CUDA_GRAPH_HOOK, hook)


# where compile_decoder_layers keeps the handle of its step-mark hook (set only when CUDA graphs are on)
CUDA_GRAPH_HOOK = "_harness_cuda_graph_step"


def _decoder(model: nn.Module) -> nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def uses_cuda_graphs(model: nn.Module) -> bool:
    """Whether `compile_decoder_layers` compiled this model's layers into CUDA graphs (and has not undone it)."""
    return getattr(_decoder(model), CUDA_GRAPH_HOOK, None) is not None


def disable_cuda_graphs(model: nn.Module) -> None:
    """Recompile the decoder layers in torch.compile's default mode: the same kernels, no CUDA graphs.

    Everything else `compile_decoder_layers` set up stays (checkpoint policies, replayable dropout, its
    step counter); the graph trees and dynamo's caches are reset first, as for a fresh preparation, so
    no recorded graph and no tensor of their memory pool is used again.
    """
    from torch._inductor.cudagraph_trees import reset_cudagraph_trees

    decoder = _decoder(model)
    hook = getattr(decoder, CUDA_GRAPH_HOOK, None)
    if hook is not None:
        hook.remove()
    setattr(decoder, CUDA_GRAPH_HOOK, None)
    torch._dynamo.reset()
    reset_cudagraph_trees()
    for layer in decoder_layers(model):
        layer.compile()


def _new_cuda_graph_step(module: nn.Module, args: Any, kwargs: Any) -> None:
    """Tell CUDA graph trees that a model call starts a new iteration.

    Their outputs live in a shared pool and are overwritten by the next iteration; without the mark,
    the trees guess where iterations start, and under TRL's trainer they guessed wrong (a layer's input
    was reported overwritten on the H100). One forward and its backward per iteration is how every
    trainer step runs.
    """
    torch.compiler.cudagraph_mark_step_begin()


def _recompute_everything(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import CheckpointPolicy

    return CheckpointPolicy.MUST_RECOMPUTE


class MlpSavePolicy:
    """Selective checkpointing: save the base matmuls that make the MLP's wide activations, recompute the rest.

    Why these: in a checkpointed layer's backward, recomputing gate_proj and up_proj (hidden x
    intermediate each) is 74% of the recompute of a Mistral layer, and their outputs are 2 x tokens x
    intermediate values. Recognised by shape, from the hidden width to the intermediate width: an
    `mm` (bf16 weights) or bitsandbytes' fused `gemm_4bit` (nf4 weights on CUDA, where the policy
    never sees an `mm`: a probe on the H100 found only that op). LoRA's own matmuls (rank-wide
    inputs) stay recomputed.
    """

    def __init__(self, hidden: int, intermediate: int) -> None:
        self.hidden = hidden
        self.intermediate = intermediate

    def __call__(self, ctx: Any, op: Any, *args: Any, **kwargs: Any) -> Any:
        from torch.utils.checkpoint import CheckpointPolicy

        if op in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            inner, out = args[-2].shape[-1], args[-1].shape[-1]
        elif getattr(op, "name", lambda: "")() == "bitsandbytes::gemm_4bit":
            inner, out = args[0].shape[-1], int(args[2][0])  # gemm_4bit(A, B, shapeB=[out, in], ...)
        else:
            return CheckpointPolicy.MUST_RECOMPUTE
        if inner == self.hidden and out == self.intermediate:
            return CheckpointPolicy.MUST_SAVE
        return CheckpointPolicy.MUST_RECOMPUTE


def prepare_qlora_model(
    model: Any,
    lora_config: Any,
    keep_layers: int = 0,
    compile_layers: bool = False,
    save_mlp_layers: int = 0,
    compile_mode: str | None = None,
) -> Any:
    """Wrap a loaded nf4 (or bf16) causal LM in LoRA for training, the fast way; returns the PeftModel.

    `keep_layers`: decoder layers, counted from the last, that skip activation checkpointing (0
    checkpoints them all, the layer count none). `compile_layers`: compile each decoder layer
    (`compile_decoder_layers`); `save_mlp_layers` (compiled only): checkpointed layers, just before
    the kept ones, that save their gate/up projection outputs instead of recomputing them. Hand the
    result to the trainer as the model, with no `peft_config` and with `gradient_checkpointing=False`
    in its arguments, so that nothing prepares it a second time.
    """
    from peft import get_peft_model

    # checked before the model is touched: a refused call leaves the caller's model as it was
    if save_mlp_layers and not compile_layers:
        raise ValueError("save_mlp_layers needs compile_layers=True: the policy is applied inside the compiled graph")
    for param in model.parameters():
        param.requires_grad_(False)
    model.config.use_cache = False
    set_activation_checkpointing(model, keep_layers)
    peft_model = get_peft_model(model, lora_config)
    peft_model.train()
    if compile_layers:
        compile_decoder_layers(peft_model, save_mlp_layers=save_mlp_layers, mode=compile_mode)
    return peft_model


def checkpoint_outside_compiled_layer() -> str | None:
    """Why CUDA graphs cannot hold for checkpointed layers with this transformers, or None when they can.

    Up to transformers 5.22, `GradientCheckpointingLayer` checkpoints in `__call__`, around `nn.Module.__call__`
    and so around the compiled layer (`layer.compile()` compiles `_call_impl`); from 5.23 it checkpoints
    `forward`, inside it. Outside, the recompute in backward calls the compiled layer a second time under
    the checkpoint's saved-tensor hooks, where the graph trees see inputs freed that were alive when the
    graph was recorded: the input-deallocate failure reported with 5.17 on an H200 (issue 18). That cause is
    read from the code, not isolated on a device (docs/gpu.md). A structural check, not a version table:
    what is looked at is where the class puts the checkpoint.
    """
    import transformers
    from transformers.modeling_layers import GradientCheckpointingLayer

    if "__call__" in GradientCheckpointingLayer.__dict__:
        return (
            f"transformers {transformers.__version__} checkpoints decoder layers around the compiled call "
            "(GradientCheckpointingLayer.__call__), so the backward recompute cannot replay a CUDA graph"
        )
    return None


# What torch's CUDA graph trees (torch/_inductor/cudagraph_trees.py, cudagraph_utils.py) raise when a recorded
# graph cannot be trusted: the compiled code itself is fine, only its recording is not. The first is what the
# recipe died of on an H200 with transformers 5.17 (issue 18); the second is what it failed with on an H200
# here, with 5.17 and 5.24 alike, at the second micro-batch of gradient accumulation (docs/gpu.md).
CUDA_GRAPH_FAILURES = (
    "graph recording observed an input tensor deallocate",
    "accessing tensor output of CUDAGraphs that has been overwritten",
    "static input data pointer changed",
    "not allocated in pool",
    "in the cudagraph pool not tracked as outputs",
    "Expected all cuda outputs in cuda graph recording",
    "operation not permitted when stream is capturing",
)


def cuda_graph_failure(exc: BaseException) -> str | None:
    """The message, if `exc` or an exception it was raised from is a CUDA graph trees failure; else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if any(pattern in text for pattern in CUDA_GRAPH_FAILURES):
            return " ".join(text.split())[:500]
        current = current.__cause__ or current.__context__
    return None


def cuda_graphs_record(
    used: bool, reason: str | None = None, at: dict[str, Any] | None = None, seconds: float | None = None
) -> dict[str, Any]:
    """What training_metadata.json says under precision.cuda_path.cuda_graphs (CUDA graphs were asked for)."""
    import transformers

    return {
        "requested": True,
        "used": used,  # to the end of training
        "fallback_reason": reason,
        "fallback_at": at,  # where: preparation (known beforehand), training or evaluation
        "compile_mode_after_fallback": None if used else "default",
        "seconds_to_fallback": seconds,  # from the start of training
        "transformers": transformers.__version__,
        "torch": torch.__version__,
    }


class CudaGraphFallback:
    """Run a Trainer's steps in CUDA graphs; when the graph trees fail, go on without them, losing no step.

    Installed on a transformers Trainer instance (`install`: its `training_step` and `prediction_step`
    are wrapped on the instance, no subclass). While CUDA graphs are on, a CUDA graph trees failure
    (`cuda_graph_failure`) raised anywhere inside a step is caught; the layers are recompiled without
    CUDA graphs (`disable_cuda_graphs`) and training continues from the optimizer step it was in:

    - the micro-batches of that optimizer step seen so far (gradient accumulation) are run again on
      the new path, from their own inputs, with the gradients cleared and, as they were when that
      optimizer step began, the replayable-dropout step counter (same masks), torch's CPU and CUDA
      generators and TRL's logged metrics; their losses were already counted and are not counted again.
    - the weights, the optimizer, the scheduler and the data order are untouched: no optimizer step ran
      on partial gradients, and nothing before it is redone.

    So the run is the one the compiled path without CUDA graphs would have made from that optimizer
    step on (the earlier steps ran the same kernels in graphs). The cost on the graph path is a shallow
    copy of each micro-batch's inputs (kept until the optimizer steps) and, once per optimizer step, a
    copy of the generator states. An evaluation step that fails is simply run again. One fallback at
    most: after it, errors pass through. `record()` says what happened, for training_metadata.json.
    """

    def __init__(self, trainer: Any, model: nn.Module, disable: Any = disable_cuda_graphs, quiet: bool = False) -> None:
        self.trainer = trainer
        self.model = model
        self.disable = disable
        self.quiet = quiet
        self.active = True
        self.reason: str | None = None
        self.at: dict[str, Any] | None = None
        self.seconds_to_fallback: float | None = None
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.dropout_step = next((m.step for m in model.modules() if isinstance(m, ReplayableDropout)), None)
        self.window: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.window_state: dict[str, Any] | None = None
        self._started = 0.0
        self._hook: Any = None

    def install(self) -> CudaGraphFallback:
        import time

        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._train_step = self.trainer.training_step
        self._predict_step = self.trainer.prediction_step
        self.trainer.training_step = self._training_step
        self.trainer.prediction_step = self._prediction_step
        # every optimizer step closes the window; the trainer zeroes the gradients right after it
        self._hook = register_optimizer_step_post_hook(self._optimizer_stepped)
        self._started = time.perf_counter()
        return self

    def remove(self) -> None:
        for name in ("training_step", "prediction_step"):
            self.trainer.__dict__.pop(name, None)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.window.clear()

    def record(self) -> dict[str, Any]:
        return cuda_graphs_record(self.active, self.reason, self.at, self.seconds_to_fallback)

    def _optimizer_stepped(self, *args: Any, **kwargs: Any) -> None:
        self.window.clear()
        self.window_state = None

    def _snapshot(self) -> dict[str, Any]:
        import copy

        return {
            "dropout_step": None if self.dropout_step is None else self.dropout_step.clone(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
            "metrics": copy.deepcopy(getattr(self.trainer, "_metrics", None)),
            "total_train_tokens": getattr(self.trainer, "_total_train_tokens", None),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state["dropout_step"] is not None:
            self.dropout_step.copy_(state["dropout_step"])
        torch.set_rng_state(state["cpu_rng"])
        if state["cuda_rng"] is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        if state["metrics"] is not None:
            self.trainer._metrics = state["metrics"]
        if state["total_train_tokens"] is not None:
            self.trainer._total_train_tokens = state["total_train_tokens"]

    def _training_step(self, model: nn.Module, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        import copy

        if not self.active:
            return self._train_step(model, inputs, *args, **kwargs)
        if not self.window:
            self.window_state = self._snapshot()
        self.window.append(((model, copy.copy(inputs), *args), dict(kwargs)))
        reason = None
        try:
            return self._train_step(model, inputs, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - anything else is re-raised as it was
            reason = cuda_graph_failure(exc)
            if reason is None:
                raise
        # out of the except block: the failed step's tensors (held by the traceback) are gone
        self._fall_back(reason, "training")
        state, window = self.window_state, list(self.window)
        for p in self.params:
            p.grad = None
        self._restore(copy.deepcopy(state))
        loss = None
        for step_args, step_kwargs in window:
            loss = self._train_step(*(step_args[:1] + (copy.copy(step_args[1]),) + step_args[2:]), **step_kwargs)
        return loss

    def _prediction_step(self, *args: Any, **kwargs: Any) -> Any:
        if not self.active:
            return self._predict_step(*args, **kwargs)
        reason = None
        try:
            return self._predict_step(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            reason = cuda_graph_failure(exc)
            if reason is None:
                raise
        self._fall_back(reason, "evaluation")
        return self._predict_step(*args, **kwargs)

    def _fall_back(self, reason: str, where: str) -> None:
        import gc
        import sys
        import time

        self.active = False
        self.reason = reason
        state = getattr(self.trainer, "state", None)
        self.at = {
            "during": where,
            "global_step": getattr(state, "global_step", None),
            "micro_batch": len(self.window) - 1 if where == "training" else None,
            "replayed_micro_batches": len(self.window) if where == "training" else 0,
        }
        self.seconds_to_fallback = round(time.perf_counter() - self._started, 2)
        gc.collect()
        self.disable(self.model)
        if not self.quiet:
            print(
                f"CUDA graphs failed at optimizer step {self.at['global_step']} ({where}): {reason[:200]}; "
                "continuing on the compiled path without CUDA graphs from that step",
                file=sys.stderr,
            )
