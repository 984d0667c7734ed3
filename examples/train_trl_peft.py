"""A team's own LoRA training script: plain TRL + PEFT, no `harness` import.

It stands for "we trained it elsewhere": the harness is handed only what comes out of here (an adapter
folder, a merged folder, a GGUF made from it) plus the training data, and must judge it like its own.

    .venv/bin/python examples/train_trl_peft.py            # ~3 min on 2 CPU cores, writes examples/out/

Outputs (OUT defaults to examples/out):
    OUT/adapter/             PEFT adapter + tokenizer (save_pretrained)
    OUT/merged/              base + adapter merged in float32, safetensors + tokenizer
    OUT/training_data.json   which data file (sha256) and system prompt trained it, for the evaluator
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

# Before torch is imported (OpenMP reads it once): idle OpenMP threads sleep instead of spinning. On a 2-core
# machine shared with other jobs, spinning threads made training steps 3-5x slower (7 s -> 24-40 s measured).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach the Hugging Face Hub

import torch
import yaml

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def default_model() -> Path:
    """Where `make setup` (harness models pull) puts the embedded model, computed as the harness does."""
    root = os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "lora-harness"
    return Path(root).expanduser().resolve() / "models" / "smollm2-135m-instruct"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every knob a user might turn; the defaults reproduce the example's measured run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", type=Path, default=default_model(), help="local Hugging Face model folder (default: %(default)s)"
    )
    p.add_argument(
        "--data",
        type=Path,
        default=Path("trainers/data/support_vi_train.jsonl"),
        help="JSONL of chat 'messages'; the last turn is the assistant's answer (default: %(default)s)",
    )
    p.add_argument(
        "--system-prompt-from",
        type=Path,
        default=Path("golden/support_vi/suite.yaml"),
        help="YAML whose 'system_prompt' is prepended to every example, so training and evaluation "
        "never drift (default: %(default)s)",
    )
    p.add_argument("--out", type=Path, default=Path("examples/out"), help="output folder (default: %(default)s)")
    p.add_argument(
        "--max-steps",
        type=int,
        default=24,
        help="optimizer steps (default: %(default)s: about 3 min on 2 idle CPU cores)",
    )
    p.add_argument("--batch-size", type=int, default=4, help="examples per step (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate, linear decay (default: %(default)s)")
    p.add_argument("--seed", type=int, default=42, help="seed for data order and LoRA init (default: %(default)s)")
    return p.parse_args(argv)


def sha256_file(path: Path) -> str:
    """Content hash, so the evaluator can check it was given the very file that trained the adapter."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_system_prompt(suite_yaml: Path) -> str:
    """The suite's system prompt, read at run time: a copy pasted here would drift from the evaluation."""
    raw = yaml.safe_load(suite_yaml.read_text(encoding="utf-8"))
    prompt = raw.get("system_prompt") if isinstance(raw, dict) else None
    if not isinstance(prompt, str) or not prompt.strip():
        sys.exit(f"error: {suite_yaml} has no non-empty 'system_prompt'")
    return prompt


def load_examples(path: Path, system_prompt: str) -> list[dict[str, Any]]:
    """Chat lines -> prompt/completion records; the system prompt goes first, the last (assistant) turn is learned."""
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        msgs = json.loads(line)["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            sys.exit(f"error: {path}:{lineno}: the last turn must be the assistant's answer")
        prompt = msgs[:-1]
        if prompt[0]["role"] != "system":
            prompt = [{"role": "system", "content": system_prompt}, *prompt]
        records.append({"prompt": prompt, "completion": msgs[-1:]})
    if not records:
        sys.exit(f"error: {path} holds no examples")
    return records


def fix_tokenizer_config(folder: Path) -> None:
    """Make the saved tokenizer_config.json portable.

    transformers 5 writes tokenizer_class TokenizersBackend; llama.cpp's converter pins transformers 4.x, which
    only knows PreTrainedTokenizerFast (the same fast tokenizer under its 4.x name). It also records the load-time
    flag local_files_only (true under HF_HUB_OFFLINE=1, which this script sets): not a tokenizer property, dropped.
    """
    cfg_file = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    changed = cfg.pop("local_files_only", None) is not None
    if cfg.get("tokenizer_class") == "TokenizersBackend":
        cfg["tokenizer_class"], changed = "PreTrainedTokenizerFast", True
    if changed:
        cfg_file.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class StepClock:
    """Seconds per optimizer step: on a shared CPU the total alone hides whether other jobs slowed the run."""

    def __init__(self) -> None:
        self.started = 0.0
        self.seconds: list[float] = []

    def callback(self) -> Any:
        """A TrainerCallback bound to this clock (transformers is imported lazily, like everything heavy here)."""
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, *a: Any, **k: Any) -> None:
                clock.started = time.perf_counter()

            def on_step_end(self, *a: Any, **k: Any) -> None:
                clock.seconds.append(time.perf_counter() - clock.started)

        return _Callback()


def train(args: argparse.Namespace, records: list[dict[str, Any]], clock: StepClock) -> tuple[Any, Any]:
    """LoRA on the attention projections with TRL's SFTTrainer; returns (trainer, train output)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32, local_files_only=True)
    model.train()  # from_pretrained returns eval mode
    lora = LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules=LORA_TARGETS, bias="none", task_type="CAUSAL_LM"
    )
    config = SFTConfig(
        output_dir=str(args.out / "checkpoints"),  # nothing is saved there (save_strategy "no")
        use_cpu=not torch.cuda.is_available(),
        bf16=False,  # TRL's default (None) may turn on bf16 autocast; this example trains in fp32
        fp16=False,
        gradient_checkpointing=False,  # TRL's default is on: slower steps, and a 135M model fits without it
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=1,
        max_length=512,
        completion_only_loss=True,  # prompt/completion data: the loss is on the assistant's answer only
        logging_steps=4,
        save_strategy="no",
        report_to="none",
        push_to_hub=False,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_num_workers=0,
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[clock.callback()],
    )
    trainer.model.train()
    return trainer, trainer.train()


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Merge into a fresh float32 base: the trained model object stays untouched and the weights stay exact."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, local_files_only=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir, safe_serialization=True)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
    fix_tokenizer_config(out_dir)


def main(argv: list[str] | None = None) -> int:
    """Train, save the adapter, merge, write the data note, print the timings."""
    args = parse_args(argv)
    started = time.perf_counter()
    system_prompt = read_system_prompt(args.system_prompt_from)
    records = load_examples(args.data, system_prompt)
    args.out.mkdir(parents=True, exist_ok=True)

    clock = StepClock()
    t0 = time.perf_counter()
    trainer, result = train(args, records, clock)
    train_s = time.perf_counter() - t0
    adapter_dir = args.out / "adapter"
    trainer.model.save_pretrained(adapter_dir, safe_serialization=True)
    trainer.processing_class.save_pretrained(adapter_dir)
    fix_tokenizer_config(adapter_dir)
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    del trainer
    checkpoints = args.out / "checkpoints"
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()

    t0 = time.perf_counter()
    merge(args.model, adapter_dir, args.out / "merged")
    merge_s = time.perf_counter() - t0

    # The keys path, format and system_prompt are the ones a harness run file's `training_data:` takes
    note = {
        "path": str(args.data),
        "sha256": sha256_file(args.data),
        "format": "messages",
        "examples": len(records),
        "system_prompt": system_prompt,
        "system_prompt_source": f"{args.system_prompt_from} (key system_prompt)",
        "system_prompt_use": "prepended as the first (system) message of every example that has none",
        "loss": "completion only: the last (assistant) turn",
        "base_model": str(args.model),
        "training": {
            "seed": args.seed,
            "steps": result.global_step,
            "batch_size": args.batch_size,
            "learning_rate": args.lr,
            "precision": "fp32",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": LORA_TARGETS},
            "loss_curve": [{"step": st, "loss": lo} for st, lo in losses],
        },
    }
    text = json.dumps(note, indent=2, ensure_ascii=False) + "\n"
    (args.out / "training_data.json").write_text(text, encoding="utf-8")

    steps = sorted(clock.seconds)
    median = steps[len(steps) // 2] if steps else 0.0
    last = f"last logged loss {losses[-1][1]:.4f} (step {losses[-1][0]}), " if losses else ""
    print(
        f"done: {result.global_step} steps, {last}mean train loss {result.training_loss:.4f}; "
        f"training {train_s:.1f} s (median step {median:.1f} s), merge {merge_s:.1f} s, "
        f"wall {time.perf_counter() - started:.1f} s; outputs in {args.out}/"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
