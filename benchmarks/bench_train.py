"""Training throughput: the harness's demo recipe against the seed lesson's reference, same data, same run.

Reference: TRL SFTTrainer with SFTConfig defaults except the lesson's settings (batch 1, accumulation 8,
lr 2e-4, LoRA r16/alpha32 on q,k,v,o, dropout 0.05, fp32 weights; CPU needs use_cpu). Ours: the recipe
(`trainers/configs/demo.yaml`) as `harness train` runs it. Both train the same number of examples.
Tokens/s counts non-padding input tokens over the training steps' wall time, first step included.
Each side trains in its own fresh process, one after the other: process-wide state that one side sets
(the recipe's allocator settings, thread pools, caches) cannot help or hurt the other. The sides alternate
for `--rounds` rounds and each side's best round counts (as timeit does): a shared 2-core VM slows down by
up to 2x for minutes at a time, so a single pass measures the neighbours as much as the code. The reference runs
as a TRL user would, with PyTorch's default environment (THP_MEM_ALLOC_ENABLE=0); the recipe with the
process settings the harness applies, which the output lists.

    python benchmarks/bench_train.py [--steps 6] [--rounds 2] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from harness.training.config import load_train_config  # noqa: E402  (harness first: it sets torch's allocator flag


def reference(model_spec: str, examples: int) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from harness.engine.loading import load_tokenizer
    from harness.models.embedded import resolve
    from harness.suite.suite import load_suite
    from harness.training.data import load_examples

    ref = resolve(model_spec)
    cfg = load_train_config(ROOT / "trainers/configs/demo.yaml")
    rows, _ = load_examples(cfg.data, load_suite(ROOT / "golden/support_vi"), ROOT)
    ds = Dataset.from_list([r.to_record() for r in rows[:examples]])
    tok = load_tokenizer(ref)
    model = AutoModelForCausalLM.from_pretrained(ref.path, dtype=torch.float32)
    with tempfile.TemporaryDirectory() as tmp:
        args = SFTConfig(
            output_dir=tmp,
            use_cpu=True,
            per_device_train_batch_size=1,
            gradient_accumulation_steps=8,
            learning_rate=2e-4,
            max_steps=examples // 8,
            report_to="none",
            save_strategy="no",
            include_num_input_tokens_seen="non_padding",
            disable_tqdm=True,
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=ds,
            processing_class=tok,
            peft_config=LoraConfig(
                r=16,
                lora_alpha=32,
                lora_dropout=0.05,
                target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                task_type="CAUSAL_LM",
            ),
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        return trainer.state.num_input_tokens_seen / seconds


def ours(model_spec: str, steps: int) -> tuple[float, dict[str, object]]:
    from trainers.sft_recipe import train

    cfg = load_train_config(ROOT / "trainers/configs/demo.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.with_overrides(model_spec, tmp, steps)
        cfg = replace(cfg, training=replace(cfg.training, save_steps=10_000))
        out = train(cfg, root=ROOT, quiet=True)
        meta = json.loads((out / "training_metadata.json").read_text(encoding="utf-8"))
        return float(meta["tokens_per_s"]), meta["precision"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--steps",
        type=int,
        default=6,
        help="optimizer steps of the demo recipe (batch 8); the reference trains as many examples",
    )
    ap.add_argument(
        "--rounds", type=int, default=2, help="alternate the two sides this many times; each side's best round counts"
    )
    ap.add_argument("--side", choices=("ours", "reference"), help=argparse.SUPPRESS)  # one side, in a child process
    args = ap.parse_args()
    batch = load_train_config(ROOT / "trainers/configs/demo.yaml").training.batch_size
    if args.side:
        tps, ran = (
            ours(args.model, args.steps) if args.side == "ours" else (reference(args.model, args.steps * batch), {})
        )
        print(json.dumps({"tokens_per_s": tps, "ran": ran}))
        return 0
    results: dict[str, list[float]] = {"ours": [], "reference": []}
    ran: dict[str, object] = {}
    for r in range(max(1, args.rounds)):
        for side in ("ours", "reference"):
            tps, what = _child(side, args.model, args.steps)
            results[side].append(tps)
            ran = what or ran
        print(
            f"round {r + 1}: harness recipe {results['ours'][-1]:.1f} tokens/s, "
            f"reference {results['reference'][-1]:.1f} tokens/s, "
            f"ratio {results['ours'][-1] / results['reference'][-1]:.2f}x",
            file=sys.stderr,
            flush=True,
        )
    ours_tps, ref_tps = max(results["ours"]), max(results["reference"])
    print(
        "recipe ran:      "
        + ", ".join(
            f"{k}={ran[k]}"
            for k in ("weights", "autocast", "attention", "casts", "lm_head", "allocator", "huge_pages")
            if k in ran
        )
    )
    for r, (a, b) in enumerate(zip(results["ours"], results["reference"])):
        print(f"round {r + 1}:        {a:.1f} vs {b:.1f} tokens/s = {a / b:.2f}x")
    print(f"harness recipe: {ours_tps:.1f} tokens/s (best of {len(results['ours'])} rounds)")
    print(
        f"reference:      {ref_tps:.1f} tokens/s (best of {len(results['reference'])} rounds; "
        "TRL defaults, fp32, batch 1 x 8, r16 q,k,v,o)"
    )
    print(f"ratio:          {ours_tps / ref_tps:.2f}x  (target >= 3.5x)")
    return 0


def _child(side: str, model: str, steps: int) -> tuple[float, dict[str, object]]:
    """One side's tokens/s and what ran, trained in a fresh interpreter; its log goes to stderr."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--side", side, "--model", model, "--steps", str(steps)]
    env = dict(os.environ)
    if side == "reference":
        env["THP_MEM_ALLOC_ENABLE"] = "0"  # PyTorch's default, as a TRL user runs it
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False, env=env)
    if done.returncode != 0:
        raise SystemExit(f"bench_train: the {side} side failed (exit {done.returncode}); its log is above")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return float(result["tokens_per_s"]), result["ran"]


if __name__ == "__main__":
    sys.exit(main())
