"""Eval throughput: the harness engine against the seed lesson's reference loop, in the same run.

Reference: one prompt at a time, unbatched `model.generate`, greedy, fp32, the same model, the same cases
and the same token budget (the suite's max_new_tokens, as the engine gets). The engine:
`harness.engine.generate` (length-sorted batches, shared-prefix and per-row prefill, static cache, stop at the
end of the JSON object).

The reference is slow (about 12 s a case here), so by default it runs on an evenly spaced sample of the
suite; its rate does not depend on which cases run together, so the sample estimates it without bias.
`--reference-cases 0` runs it on every case. Outputs are compared token by token on the sampled cases.

    python benchmarks/bench_eval.py [--suite golden/support_vi] [--model smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.engine.generate import generate  # noqa: E402
from harness.engine.loading import Runtime, load_model, load_tokenizer  # noqa: E402
from harness.models.embedded import resolve  # noqa: E402
from harness.runs.evaluate import EvalOptions  # noqa: E402
from harness.suite.suite import load_suite  # noqa: E402


def reference_loop(model, tokenizer, chats, max_new_tokens: int) -> list[list[int]]:  # noqa: ANN001
    outs = []
    for chat in chats:
        enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        outs.append(out[0, enc["input_ids"].shape[1] :].tolist())
    return outs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", default="golden/support_vi")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=EvalOptions().batch_size,
        help="decode batch (default: what `harness eval` uses)",
    )
    ap.add_argument("--precision", default="float32", choices=["float32", "bf16-autocast"])
    ap.add_argument("--reference-cases", type=int, default=16, help="reference sample size (0 = every case)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()

    suite = load_suite(args.suite)
    ref = resolve(args.model)
    runtime = Runtime.pick("cpu")
    tokenizer = load_tokenizer(ref)
    model = load_model(ref, runtime)
    chats = [suite.chat(c) for c in suite.cases]
    n = len(chats)
    settings = suite.generation

    t0 = time.perf_counter()
    ours = generate(
        model, tokenizer, chats, settings, batch_size=args.batch_size, precision=args.precision, progress=False
    )
    engine_s = time.perf_counter() - t0
    engine_rate = n / engine_s

    k = n if args.reference_cases <= 0 else min(args.reference_cases, n)
    sample = sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})
    t0 = time.perf_counter()
    ref_out = reference_loop(model, tokenizer, [chats[i] for i in sample], settings.max_new_tokens)
    reference_s = time.perf_counter() - t0
    reference_rate = len(sample) / reference_s

    eos = tokenizer.eos_token_id
    both_stop = identical_both_stop = prefix_agree = 0
    for i, r in zip(sample, ref_out):
        r_stopped = eos in r
        r_tokens = r[: r.index(eos)] if r_stopped else r
        g = ours[i]
        if list(g.token_ids) == r_tokens[: len(g.token_ids)]:
            prefix_agree += 1
        if r_stopped and g.stop_reason == "eos":
            both_stop += 1
            identical_both_stop += list(g.token_ids) == r_tokens

    figures = {
        "suite": suite.name,
        "cases": n,
        "engine": {
            "seconds": round(engine_s, 2),
            "cases_per_s": round(engine_rate, 4),
            "batch_size": args.batch_size,
            "precision": args.precision,
            "stop_reasons": {
                r: sum(1 for g in ours if g.stop_reason == r) for r in ("eos", "json_end", "max_new_tokens")
            },
        },
        "reference": {"seconds": round(reference_s, 2), "cases": len(sample), "cases_per_s": round(reference_rate, 4)},
        "ratio": round(engine_rate / reference_rate, 2),
        "outputs": {
            "compared": len(sample),
            "engine_output_is_prefix_of_reference": prefix_agree,
            "both_stopped_at_eos": both_stop,
            "identical_where_both_stop": identical_both_stop,
        },
        "torch_threads": torch.get_num_threads(),
    }
    print(
        f"engine:    {engine_rate:.3f} cases/s ({n} cases in {engine_s:.1f} s, "
        f"batch {args.batch_size}, {args.precision})"
    )
    print(
        f"reference: {reference_rate:.4f} cases/s ({len(sample)} cases in {reference_s:.1f} s, "
        f"one at a time, max_new_tokens={settings.max_new_tokens})"
    )
    print(f"ratio:     {figures['ratio']:.1f}x  (target >= 20x)")
    print(
        f"outputs:   engine output equals the reference's first tokens on {prefix_agree}/{len(sample)}; "
        f"identical on {identical_both_stop}/{both_stop} cases where both stopped at EOS"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
