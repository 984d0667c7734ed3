"""Evaluation throughput on one GPU: generated tokens/s for base, adapter and merged, with plain `generate`
as the reference.

Shape: seed000's base (Mistral-7B-v0.3 architecture, random weights) in bf16, LoRA r8 on the seven
projections, batch 64, greedy, 128 new tokens from prompts of about 200 tokens (a shared 100-token
system prompt and 80 to 120 tokens of their own). One resident model serves the variants in order:
base (PeftModel with the adapter disabled), adapter (unmerged), merged (`merge_and_unload`).

The engine is `harness.generate.generate` (length-sorted batches, shared-prefix prefill, static cache).
On CUDA, transformers compiles the decoding step of a static-cache `generate` by itself (CUDA graphs);
`--engine-modes eager` turns that off, to show what the compilation buys. The reference is plain
`model.generate` with its default dynamic cache on the same padded batch.

Tokens/s = generated tokens over the wall time of the whole call, prefill included, after one untimed
warm-up call of the same shape (compilation happens there). The tokenizer is a word-level one built
here (the Hub is out of reach); the EOS row of lm_head is zeroed so that every row runs the full length.

    python benchmarks/gpu/bench_eval_gpu.py [--batch 64] [--new-tokens 128] [--engine-modes eager,compiled]
        [--json OUT.json]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))

from common import SEED000_TARGETS, device_summary, mistral_config, write_json  # noqa: E402

from harness.engine.generate import generate  # noqa: E402
from harness.suite.suite import GenerationSettings  # noqa: E402

EOS = 2


def word_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer whose every id decodes, with a minimal chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "system", "user", "assistant"]
    vocab = {w: i for i, w in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(len(specials), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}assistant {% endif %}"
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        chat_template=template,
        padding_side="left",
    )


def make_chats(n: int, vocab_size: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    words = lambda k: " ".join(f"w{rng.randrange(6, vocab_size)}" for _ in range(k))  # noqa: E731
    system = words(100)
    return [
        [{"role": "system", "content": system}, {"role": "user", "content": words(rng.randint(80, 120))}]
        for _ in range(n)
    ]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], int], repeats: int) -> dict[str, Any]:
    """One untimed warm-up call, then `repeats` timed ones; fn returns the tokens it generated."""
    fn()
    _sync()
    rates, tokens = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        _sync()
        rates.append(tokens / (time.perf_counter() - t0))
    return {"tokens_per_s": statistics.median(rates), "runs": rates, "tokens": tokens}


def engine_fn(
    model: Any, tok: Any, chats: list[list[dict[str, str]]], settings: GenerationSettings, batch: int, sink: list[Any]
) -> Callable[[], int]:
    def run() -> int:
        out = generate(model, tok, chats, settings, batch_size=batch, progress=False, share_prefix=True)
        sink[:] = out
        return sum(len(g.token_ids) + (g.stop_reason == "eos") for g in out)

    return run


def reference_fn(
    model: Any, tok: Any, chats: list[list[dict[str, str]]], new_tokens: int, static: bool = False
) -> Callable[[], int]:
    enc = tok.apply_chat_template(
        chats, add_generation_prompt=True, return_tensors="pt", return_dict=True, padding=True
    )
    device = next(model.parameters()).device
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)

    def run() -> int:
        with torch.inference_mode():
            extra: dict[str, Any] = {"cache_implementation": "static"} if static else {"disable_compile": True}
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=EOS,
                eos_token_id=EOS,
                **extra,
            )
        return int((out.shape[1] - ids.shape[1]) * out.shape[0])

    return run


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--engine-modes",
        default="eager,compiled",
        help="comma list of eager (no auto-compile) and compiled (transformers' default on CUDA)",
    )
    ap.add_argument("--layers", type=int, default=None, help="override the number of decoder layers")
    ap.add_argument("--shape", choices=["7b", "tiny"], default="7b", help="tiny: check the script on a CPU")
    ap.add_argument(
        "--static-reference",
        action="store_true",
        help="also time plain generate with a static cache (transformers compiles it)",
    )
    ap.add_argument("--budget-s", type=float, default=0, help="start no new row after this many seconds (0: no limit)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    modes = [m.strip() for m in args.engine_modes.split(",") if m.strip()]
    config = mistral_config(args.shape, args.layers)
    tok = word_tokenizer(config.vocab_size)
    chats = make_chats(args.batch, config.vocab_size)
    settings = GenerationSettings(max_new_tokens=args.new_tokens, stop_at_json_end=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    with torch.no_grad():
        model.lm_head.weight[EOS].zero_()
    model.generation_config.eos_token_id = EOS
    model.generation_config.pad_token_id = EOS
    prompt_lens = [
        len(tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=False)) for c in chats
    ]
    results: dict[str, Any] = {
        "device": device_summary(),
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "prompt_tokens": {
            "min": min(prompt_lens),
            "max": max(prompt_lens),
            "mean": sum(prompt_lens) / len(prompt_lens),
        },
        "rows": {},
        "notes": [],
    }
    print(f"device: {results['device']}  prompts {results['prompt_tokens']}", flush=True)

    started = time.perf_counter()

    def record(name: str, fn: Callable[[], int], optional: bool = False) -> None:
        if optional and args.budget_s and time.perf_counter() - started > args.budget_s:
            results["notes"].append(f"{name}: skipped, past the --budget-s of {args.budget_s} s")
            print(results["notes"][-1], flush=True)
            return
        t0 = time.perf_counter()
        try:
            r = timed(fn, args.repeats)
        except Exception as exc:  # reported, not fatal: the other variants still run
            results["notes"].append(f"{name}: failed: {type(exc).__name__}: {exc}")
            print(f"[{name}] FAILED: {type(exc).__name__}: {exc}", flush=True)
            return
        r["wall_s_with_warmup"] = time.perf_counter() - t0
        results["rows"][name] = r
        print(
            f"[{name}] {r['tokens_per_s']:8.0f} generated tok/s  "
            f"(runs {', '.join(f'{x:.0f}' for x in r['runs'])}; {r['tokens']} tokens;"
            f" {r['wall_s_with_warmup']:.0f} s with warm-up)",
            flush=True,
        )
        write_json(args.json, results)

    def set_mode(m: Any, mode: str) -> None:
        m.generation_config.disable_compile = mode == "eager"

    record("reference: plain generate, dynamic cache (no PEFT)", reference_fn(model, tok, chats, args.new_tokens))
    if args.static_reference:
        record(
            "reference: plain generate, static cache, compiled (no PEFT)",
            reference_fn(model, tok, chats, args.new_tokens, static=True),
            optional=True,
        )

    lora = LoraConfig(
        r=8,
        lora_alpha=16,
        lora_dropout=0.05,
        target_modules=list(SEED000_TARGETS),
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, lora).eval()
    outs: dict[str, list[Any]] = {}
    # eager rows first (they always run); compiled ones after, adapter before base, while the budget lasts
    peft_rows = [
        (mode, kind) for mode in modes for kind in (("base", "adapter") if mode == "eager" else ("adapter", "base"))
    ]
    for mode, kind in peft_rows:
        set_mode(model, mode)
        outs[f"{kind} {mode}"] = []
        fn = engine_fn(peft_model, tok, chats, settings, args.batch, outs[f"{kind} {mode}"])
        if kind == "base":
            with peft_model.disable_adapter():
                record(f"engine {mode}: base (adapter disabled)", fn, mode != "eager")
        else:
            record(f"engine {mode}: adapter (unmerged)", fn, mode != "eager")
    merged = peft_model.merge_and_unload()
    for mode in modes:
        set_mode(merged, mode)
        outs[f"merged {mode}"] = []
        record(
            f"engine {mode}: merged (merge_and_unload)",
            engine_fn(merged, tok, chats, settings, args.batch, outs[f"merged {mode}"]),
            mode != "eager",
        )

    for mode in modes:
        a, m = outs.get(f"adapter {mode}"), outs.get(f"merged {mode}")
        if a and m:
            same = sum(x.token_ids[:16] == y.token_ids[:16] for x, y in zip(a, m))
            results["notes"].append(
                f"{mode}: adapter vs merged, first 16 tokens identical in {same}/{len(a)} rows (bf16 merge rounding)"
            )
    write_json(args.json, results)

    print("\n| variant | generated tokens/s |")
    print("| --- | ---: |")
    for name, r in results["rows"].items():
        print(f"| {name} | {r['tokens_per_s']:,.0f} |")
    for note in results["notes"]:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
