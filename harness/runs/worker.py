"""The base variant decoded in a second process while this one decodes the adapter (CPU only).

Why: on this 2-core CPU a decode step at batch 154 is bound by fp32 matrix products that two threads
run only ~1.6x faster than one, so two one-thread processes, each with its own full batch, get more done
than one two-thread process doing one variant after the other (measured 1.31x: two suites in 90 s
against 2 x 58-60 s). The base needs no adapter, so it is the variant that can run beside the adapter.
The worker writes its generations into the shared result cache (SQLite, WAL) and the pipeline reads
them back as cache hits; when it finishes, the pipeline's own decode goes back to every thread.

fp32 decoding gives the same tokens at one or two threads (tested), so this changes no output.
Training is never run beside anything: its bf16 products depend on the thread count, and an adapter's
hash must not depend on timing. Anything unexpected (no memory to spare, a crashed worker) falls back
to decoding the base here, after the adapter, as before.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.engine.threads import drop_requests, request_threads

MIN_CASES = 32  # below this a second process (imports, model load: ~6 s) costs more than it saves
HEADROOM_BYTES = 1 << 30


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes; None where the system does not say."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def decode_memory(model: Any, rows: int, length: int) -> int:
    """Bytes a decoding process needs: its fp32 weights plus a static key/value cache of rows x length."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    weights = sum(p.numel() for p in model.parameters()) * 4
    cache = int(cfg.num_hidden_layers) * 2 * rows * kv_heads * length * head_dim * 4
    return weights + cache


def plan_base_worker(
    asked: bool | None,
    device: str,
    cached: bool,
    missing: int,
    model: Any,
    tokenizer: Any,
    chats: list[Any],
    batch_size: int,
    max_new_tokens: int,
) -> dict[str, Any]:
    """Whether the base is decoded by a second process beside the adapter, and why (for the report)."""
    from harness.engine.generate import encode_chats  # generate imports this module

    def plan(used: bool, reason: str) -> dict[str, Any]:
        return {"used": used, "reason": reason}

    if asked is False:
        return plan(False, "turned off (--sequential)")
    if device != "cpu":
        return plan(False, f"runs on the CPU only (device {device})")
    if not cached:
        return plan(False, "needs the result cache, which is off (--no-cache)")
    if torch.get_num_threads() < 2:
        return plan(False, "needs two CPU threads")
    if missing < (1 if asked else MIN_CASES):
        return plan(False, f"{missing} base cases to decode (fewer than {MIN_CASES})")
    length = max(len(p) for p in encode_chats(tokenizer, chats)) + max_new_tokens
    need = 2 * decode_memory(model, min(batch_size, missing), length) + HEADROOM_BYTES
    free = available_memory()
    if free is not None and free < need:
        return plan(
            False,
            f"needs ~{need / 2**30:.1f} GiB of memory for two decoding processes; {free / 2**30:.1f} GiB available",
        )
    return plan(True, f"{missing} base cases decoded by a second process (1 thread) beside the adapter's decode")


@dataclass
class BaseWorker:
    """A running worker; `finish()` waits for it and returns its timings, or None if it failed."""

    proc: subprocess.Popen[bytes]
    folder: Path
    threads_after: int

    def __post_init__(self) -> None:
        def watch() -> None:
            self.proc.wait()
            request_threads(self.threads_after)

        threading.Thread(target=watch, name="base-worker-watch", daemon=True).start()

    def finish(self) -> tuple[dict[str, Any] | None, str]:
        """Wait for the worker; (its evaluate() timings, "") or (None, why it failed)."""
        code = self.proc.wait()
        self._restore_threads()
        try:
            if code == 0:
                return json.loads((self.folder / "timings.json").read_text(encoding="utf-8")), ""
            tail = (self.folder / "worker.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            return None, f"exit code {code}: " + " | ".join(tail)
        except (OSError, ValueError) as exc:
            return None, f"no result ({type(exc).__name__}: {exc})"
        finally:
            self._cleanup()

    def stop(self) -> None:
        """Kill the worker (the pipeline failed or was interrupted) and restore the thread count."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._restore_threads()
        self._cleanup()

    def _restore_threads(self) -> None:
        """Back to the thread count from before the worker; a pending request from the watcher is dropped."""
        drop_requests()
        torch.set_num_threads(self.threads_after)

    def _cleanup(self) -> None:
        for name in ("spec.json", "timings.json", "worker.log"):
            (self.folder / name).unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass


def start_base_worker(suite_path: Path, model_path: Path, options: Any, model_key: str, device: str) -> BaseWorker:
    """Start `python -m harness.runs.worker` on the base model with one thread; this process drops to one too."""
    folder = Path(tempfile.mkdtemp(prefix="harness-base-worker-"))
    spec = {
        "suite": str(suite_path),
        "model": str(model_path),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(options).items()},
        "model_key": model_key,
        "device": device,
        "timings": str(folder / "timings.json"),
    }
    (folder / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(folder / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "harness.runs.worker", str(folder / "spec.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    return BaseWorker(proc, folder, threads)


def _run(spec_file: Path) -> int:
    torch.set_num_threads(1)
    from harness.engine.cache import ResultCache
    from harness.engine.loading import Runtime, load_model, load_tokenizer
    from harness.io import atomic_write_json
    from harness.models.embedded import resolve
    from harness.runs.evaluate import EvalOptions, evaluate
    from harness.suite.suite import load_suite

    spec = json.loads(spec_file.read_text(encoding="utf-8"))
    opts = dict(spec["options"])
    opts["canaries"] = tuple(opts.get("canaries") or ())
    opts["cache_path"] = Path(opts["cache_path"])
    opts["progress"] = False
    options = EvalOptions(**opts)
    suite = load_suite(spec["suite"])
    ref = resolve(spec["model"])
    model = load_model(ref, Runtime.pick(spec["device"]))
    tokenizer = load_tokenizer(ref)
    cache = ResultCache(options.cache_path)
    try:
        _, _, timings, _ = evaluate(suite, model, tokenizer, options, cache=cache, model_key=spec["model_key"])
    finally:
        cache.close()
    atomic_write_json(Path(spec["timings"]), timings)
    return 0


if __name__ == "__main__":
    sys.exit(_run(Path(sys.argv[1])))
