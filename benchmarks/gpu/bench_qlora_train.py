"""QLoRA training throughput on one GPU: the seed recipe against the harness's CUDA path, same process.

Shape: seed000 (Mistral-7B-v0.3 architecture, random weights, nf4 + double quantization, bf16 compute),
batch 2 x 1024 tokens, LoRA r8/alpha16/dropout 0.05 on q,k,v,o,gate,up,down, bf16 autocast, fused AdamW.

- seed: `peft.prepare_model_for_kbit_training` (fp32 upcast, reentrant checkpointing of every layer) + LoRA.
- harness: `trainers.cuda_path.prepare_qlora_model`: no upcast, compiled layers with in-graph
  checkpointing of all layers but the last `keep` (family "compiled"; family_prepare lists the others,
  kept to reproduce docs/gpu.md). `--keep auto` measures the peak with 0 and with 4 layers kept and
  keeps as many as fit under the seed's measured peak. The docs' figure: `--keep 3 --steps 20 --warmup 5`.

Tokens/s counts every token of the timed steps (no padding) over their wall time; peak is
torch.cuda.max_memory_allocated over the steps, weights included.

    python benchmarks/gpu/bench_qlora_train.py [--keep auto|N] [--compile-mode reduce-overhead|default]
        [--family compiled] [--loss hf|chunked] [--json OUT.json]
    python benchmarks/gpu/bench_qlora_train.py --sweep compiled,compiled+chunked,eager --steps 20 --warmup 5
    python benchmarks/gpu/bench_qlora_train.py --grid 3:0,0:7,2:4 --steps 20 --warmup 5   # KEEP:SAVE_MLP pairs
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from common import (  # noqa: E402
    GIB,
    TrainResult,
    build_nf4_model,
    chunked_lm_loss,
    device_summary,
    free_memory,
    hf_loss,
    mistral_config,
    random_batches,
    seed_lora_config,
    seed_prepare,
    train_loop,
    write_json,
)

from trainers.cuda_path import compile_decoder_layers, decoder_layers, layers_to_keep, prepare_qlora_model  # noqa: E402

CALIBRATION_KEEP = 4
FAMILIES = ("eager", "compiled", "compiled-prefer", "compiled-nn-dropout")


def family_prepare(family: str, keep: int, save_mlp: int = 0, compile_mode: str | None = None) -> Callable[[Any], Any]:
    """How a harness configuration prepares the model.

    eager: `prepare_qlora_model` without compilation. compiled: with `compile_layers` (compiled layers,
    checkpoint in the graph, everything in it recomputed, replayable LoRA dropout). compiled-prefer:
    the same, with the partitioner left to choose what to save. compiled-nn-dropout: that, keeping
    torch's random dropout. `compile_mode` is torch.compile's for the compiled family (the recipe
    uses reduce-overhead: CUDA graphs).
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; use one of {FAMILIES}")

    def prepare(model: Any) -> Any:
        peft_model = prepare_qlora_model(
            model,
            seed_lora_config(),
            keep_layers=keep,
            compile_layers=family == "compiled",
            save_mlp_layers=save_mlp if family == "compiled" else 0,
            compile_mode=compile_mode,
        )
        if family == "compiled-prefer":
            compile_decoder_layers(peft_model, recompute_all=False)
        if family == "compiled-nn-dropout":
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
            for layer in decoder_layers(peft_model):
                layer.compile()
        return peft_model

    return prepare


class Bench:
    """Runs configurations one after another on fresh models and keeps what they measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.config = mistral_config(args.shape, args.layers)
        self.results: list[TrainResult] = []
        self.notes: list[str] = []
        self.started = time.perf_counter()
        self.last_family = ""

    def run(
        self, name: str, prepare: Callable[[Any], Any], settings: dict[str, Any], loss: str = "hf"
    ) -> TrainResult | None:
        a = self.args
        if a.budget_s and time.perf_counter() - self.started > a.budget_s:
            self.notes.append(f"{name}: skipped, past the --budget-s of {a.budget_s} s")
            print(self.notes[-1], flush=True)
            return None
        before = torch.cuda.memory_allocated() if self.device == "cuda" else 0
        t0 = time.perf_counter()
        try:
            model = prepare(build_nf4_model(self.config, self.device))
            batches = random_batches(a.warmup + a.steps, a.batch, a.seq, self.config.vocab_size, self.device)
            loss_fn = chunked_lm_loss if loss == "chunked" else hf_loss
            res = train_loop(name, model, batches, a.warmup, {**settings, "loss": loss}, loss_fn)
        except Exception as exc:  # a configuration that fails is reported, not fatal to the sweep
            self.notes.append(f"{name}: failed: {type(exc).__name__}: {exc}")
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            res = None
        finally:
            model = batches = None
            free_memory()
        if res is not None:
            self.results.append(res)
            print(
                f"[{name}] {res.tokens_per_s:8.0f} tok/s  peak {res.peak_gib:6.2f} GiB  "
                f"step {res.step_s * 1000:6.0f} ms  loss {res.final_loss:.3f}"
                f"  (allocated before {before / GIB:.2f} GiB, wall {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
        self.save()
        return res

    def harness(self, keep: int, family: str, loss: str = "hf", save_mlp: int = 0) -> TrainResult | None:
        mode = self.args.compile_mode if family == "compiled" else None
        name = (
            f"harness {family}{'/' + mode if mode else ''} keep={keep}"
            f"{f' save-mlp={save_mlp}' if save_mlp else ''}{' chunked-ce' if loss == 'chunked' else ''}"
        )
        if family != self.last_family:
            torch._dynamo.reset()  # compiled graphs depend on the family's settings; start clean
            self.last_family = family
        settings = {
            "recipe": "harness",
            "family": family,
            "keep_layers": keep,
            "save_mlp_layers": save_mlp,
            "compile_mode": mode,
        }
        return self.run(name, family_prepare(family, keep, save_mlp, mode), settings, loss)

    def auto_keep(self, budget: float, family: str, loss: str = "hf") -> TrainResult | None:
        """Calibrate memory per kept layer, then keep as many layers as fit under `budget` (GiB)."""
        r0 = self.harness(0, family, loss)
        rk = self.harness(CALIBRATION_KEEP, family, loss)
        if r0 is None or rk is None:
            return r0
        per_layer = max((rk.peak_gib - r0.peak_gib) / CALIBRATION_KEEP, 1e-3)
        keep = layers_to_keep(
            int(budget * GIB), int(r0.peak_gib * GIB), int(per_layer * GIB), self.config.num_hidden_layers
        )
        self.notes.append(
            f"calibration {family} {loss}: {per_layer:.3f} GiB per kept layer, "
            f"{r0.peak_gib:.2f} GiB with none kept, budget {budget:.2f} GiB -> keep {keep}"
        )
        print(self.notes[-1], flush=True)
        if keep in (0, CALIBRATION_KEEP):
            return r0 if keep == 0 else rk
        res = self.harness(keep, family, loss)
        while res is not None and res.peak_gib > budget and keep > 0:
            keep -= 1
            res = self.harness(keep, family, loss)
        return res

    def save(self) -> None:
        write_json(
            self.args.json,
            {
                "args": {k: str(v) for k, v in vars(self.args).items()},
                "device": device_summary(),
                "results": [asdict(r) for r in self.results],
                "notes": self.notes,
            },
        )


def profile(bench: Bench, name: str, prepare: Callable[[Any], Any], path: Path) -> None:
    """One profiled step after four untimed ones: GPU time by kernel, and the CPU time that launched it."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    a = bench.args
    model = prepare(build_nf4_model(bench.config, bench.device))
    batches = random_batches(5, a.batch, a.seq, bench.config.vocab_size, bench.device)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4, fused=True)

    def step(ids: torch.Tensor) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = hf_loss(model, ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for ids in batches[:4]:
        step(ids)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step(batches[4])
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{name}\n{table}", encoding="utf-8")
    print(f"profile {name}: " + " | ".join(line for line in table.splitlines() if "time total" in line), flush=True)
    model = opt = None  # free the 7B before the next configuration
    free_memory()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--keep",
        default="auto",
        help="decoder layers that skip checkpointing in the harness recipe, or 'auto' (fit under the seed's peak)",
    )
    ap.add_argument(
        "--family", choices=FAMILIES, default="compiled", help="harness configuration family (see family_prepare)"
    )
    ap.add_argument(
        "--loss",
        choices=["hf", "chunked"],
        default="hf",
        help="harness loss: the model's own, or chunked cross-entropy",
    )
    ap.add_argument(
        "--sweep",
        default="",
        help="instead of one harness configuration, these families, each with --keep auto: "
        "comma list of FAMILY or FAMILY+chunked, e.g. compiled,compiled+chunked,eager",
    )
    ap.add_argument(
        "--grid",
        default="",
        help="instead of one harness configuration, these KEEP:SAVE_MLP pairs of the compiled family, e.g. 3:0,2:4,0:7",
    )
    ap.add_argument(
        "--save-mlp",
        type=int,
        default=0,
        help="checkpointed layers that save their gate/up outputs (compiled family, with a numeric --keep)",
    )
    ap.add_argument(
        "--compile-mode",
        default="reduce-overhead",
        help="torch.compile mode for the compiled family: reduce-overhead (CUDA graphs, the recipe's) or default",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="folder: one-step kernel profiles of the seed and of the harness recipe (keep 0)",
    )
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument(
        "--shape",
        choices=["7b", "tiny"],
        default="7b",
        help="tiny: a 4-layer 64-wide model to check the script on a CPU",
    )
    ap.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    ap.add_argument(
        "--budget-s", type=float, default=0, help="start no new configuration after this many seconds (0: no limit)"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    bench = Bench(args)
    print(f"device: {device_summary()}", flush=True)
    seed = bench.run(
        "seed (prepare_model_for_kbit_training)", lambda m: seed_prepare(m, seed_lora_config()), {"recipe": "seed"}
    )
    if seed is None:
        return 1
    budget = seed.peak_gib
    if args.profile is not None and bench.device == "cuda":
        profile(bench, "seed", lambda m: seed_prepare(m, seed_lora_config()), args.profile / "profile_seed.txt")
        profile(
            bench,
            f"harness {args.family} keep=0",
            family_prepare(args.family, 0),
            args.profile / f"profile_{args.family}.txt",
        )

    if args.grid:
        for pair in args.grid.split(","):
            keep, _, save = pair.strip().partition(":")
            bench.harness(int(keep), "compiled", args.loss, int(save or 0))
    elif args.sweep:
        for item in args.sweep.split(","):
            family, _, loss = item.strip().partition("+")
            bench.auto_keep(budget, family, loss or "hf")
    elif args.keep == "auto":
        bench.auto_keep(budget, args.family, args.loss)
    else:
        bench.harness(int(args.keep), args.family, args.loss, args.save_mlp)

    fitting = [r for r in bench.results if r.settings["recipe"] == "harness" and r.peak_gib <= budget]
    print("\n| configuration | tokens/s | peak GiB | vs seed |")
    print("| --- | ---: | ---: | ---: |")
    for r in bench.results:
        print(f"| {r.name} | {r.tokens_per_s:,.0f} | {r.peak_gib:.2f} | {r.tokens_per_s / seed.tokens_per_s:.2f}x |")
    for note in bench.notes:
        print(f"note: {note}")
    if fitting:
        best = max(fitting, key=lambda r: r.tokens_per_s)
        print(f"\nseed    {seed.tokens_per_s:8,.0f} tok/s  {seed.peak_gib:.2f} GiB")
        print(f"harness {best.tokens_per_s:8,.0f} tok/s  {best.peak_gib:.2f} GiB  ({best.name})")
        share = best.peak_gib / seed.peak_gib if seed.peak_gib else float("nan")
        print(
            f"ratio   {best.tokens_per_s / seed.tokens_per_s:.2f}x tokens/s at {share:.2f}x the peak "
            "(target >= 2x at <= 1x)"
        )
    else:
        print("\nno harness configuration fit under the seed's peak")
    bench.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
