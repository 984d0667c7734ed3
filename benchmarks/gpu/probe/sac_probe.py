"""Probe: which ops does the selective-checkpoint policy see in a compiled nf4 layer, and does MUST_SAVE
change what is saved?"""

import collections
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
from common import build_nf4_model, seed_lora_config  # noqa: E402
from transformers import MistralConfig  # noqa: E402

import trainers.cuda_path as cp  # noqa: E402

seen: collections.Counter = collections.Counter()
orig = cp.MlpSavePolicy.__call__


def spy(self, ctx, op, *args, **kw):  # noqa: ANN001, ANN202
    r = orig(self, ctx, op, *args, **kw)
    shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
    seen[(str(op), shapes, str(r).split(".")[-1])] += 1
    return r


cp.MlpSavePolicy.__call__ = spy
dev = "cuda"
cfg = MistralConfig(
    vocab_size=256,
    hidden_size=256,
    intermediate_size=768,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    sliding_window=None,
)
for save in (0, 2):
    torch._dynamo.reset()
    pm = cp.prepare_qlora_model(
        build_nf4_model(cfg, dev), seed_lora_config(), keep_layers=0, compile_layers=True, save_mlp_layers=save
    )
    ids = torch.randint(0, 256, (2, 128), device=dev)
    packed: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        packed.append(t.numel())
        return t

    for _ in range(2):
        packed.clear()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            with torch.autocast(dev, dtype=torch.bfloat16):
                loss = pm(input_ids=ids, labels=ids).loss
        after_fwd = torch.cuda.memory_allocated() - base
        loss.backward()
    print(
        f"save_mlp {save}: saved tensors {len(packed)}, elements {sum(packed)}, memory held after forward {after_fwd}",
        flush=True,
    )
for k, v in sorted(seen.items()):
    print(v, k)
