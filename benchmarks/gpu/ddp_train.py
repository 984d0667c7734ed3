"""QLoRA training with Accelerate data parallelism: the harness's CUDA path on every GPU, one process each.

Each process builds the seed000 model (Mistral-7B-v0.3 shape, random weights, nf4 + double quant) on its
own GPU and trains the same LoRA (r8/alpha16, dropout 0.05, seven projections) on its own batch of
2 x 1024 tokens; DDP all-reduces only the LoRA gradients. Tokens/s counts all processes' tokens over the
timed steps' wall time on process 0. Launch it once per GPU count and compare:

    accelerate launch --num_processes 1 --mixed_precision bf16 benchmarks/gpu/ddp_train.py --json OUT1.json
    accelerate launch --multi_gpu --num_processes 2 --mixed_precision bf16 benchmarks/gpu/ddp_train.py --json OUT2.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from common import GIB, build_nf4_model, device_summary, mistral_config, random_batches, seed_lora_config, write_json  # noqa: E402

from trainers.cuda_path import prepare_qlora_model  # noqa: E402


def main() -> int:
    from accelerate import Accelerator

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=int, default=0, help="decoder layers that skip activation checkpointing")
    ap.add_argument("--compile", action="store_true", help="compile the decoder layers")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2, help="per process")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--shape", choices=["7b", "tiny"], default="7b")
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    acc = Accelerator()
    config = mistral_config(args.shape, args.layers)
    device = str(acc.device)
    model = build_nf4_model(config, device)
    model = prepare_qlora_model(model, seed_lora_config(), keep_layers=args.keep, compile_layers=args.compile)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=acc.device.type == "cuda"
    )
    model, opt = acc.prepare(model, opt)
    # each process draws its own batches: data parallel, not the same batch twice
    batches = random_batches(
        args.warmup + args.steps, args.batch, args.seq, config.vocab_size, device, seed=acc.process_index
    )
    cuda = acc.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = 0.0
    loss = torch.zeros(())
    for i, ids in enumerate(batches):
        if i == args.warmup:
            if cuda:
                torch.cuda.synchronize()
            acc.wait_for_everyone()
            start = time.perf_counter()
        with acc.autocast():
            loss = model(input_ids=ids, labels=ids).loss
        acc.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
    if cuda:
        torch.cuda.synchronize()
    acc.wait_for_everyone()
    seconds = time.perf_counter() - start
    peak = torch.tensor([torch.cuda.max_memory_allocated() / GIB if cuda else 0.0], device=acc.device)
    peaks = acc.gather(peak).tolist()
    tokens = ids.numel() * args.steps * acc.num_processes
    if acc.is_main_process:
        out = {
            "processes": acc.num_processes,
            "distributed_type": str(acc.distributed_type),
            "mixed_precision": acc.mixed_precision,
            "tokens_per_s": tokens / seconds,
            "tokens_per_s_per_gpu": tokens / seconds / acc.num_processes,
            "step_s": seconds / args.steps,
            "peak_gib_per_gpu": peaks,
            "final_loss": float(loss.detach()),
            "keep_layers": args.keep,
            "compile_layers": args.compile,
            "batch_per_process": args.batch,
            "seq": args.seq,
            "layers": config.num_hidden_layers,
            "device": device_summary(),
        }
        print(
            f"{acc.num_processes} process(es): {out['tokens_per_s']:,.0f} tok/s total, "
            f"{out['tokens_per_s_per_gpu']:,.0f} per GPU, "
            f"step {out['step_s'] * 1000:.0f} ms, peak {', '.join(f'{p:.2f}' for p in peaks)} GiB",
            flush=True,
        )
        write_json(args.json, out)
    acc.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
