"""Result cache: the full demo gate run twice, from scratch and then unchanged, in the same session.

First run: a fresh candidate folder and an empty result cache, so it trains the demo candidate and
generates every case for base, adapter and merged. Second run: nothing changed, so the candidate is
reused and every generation, score and parity figure comes from the cache. Prints both wall times and
the ratio (target: the rerun takes at most 5% of the first run).

    python benchmarks/bench_cache.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(work: Path, env: dict[str, str], run_id: str) -> float:
    cmd = [
        sys.executable,
        "-m",
        "harness",
        "pipeline",
        "trainers/configs/demo.yaml",
        "--reports-dir",
        str(work / "reports"),
        "--run-id",
        run_id,
        "--no-progress",
    ]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1, 3):  # 1/3: the gate's verdict, not a crash
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"pipeline failed with exit code {proc.returncode}")
    return seconds


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-cache-"))
    from harness.models.embedded import cache_dir

    # a private cache root that shares the converted model but starts with no results
    private = work / "cache"
    (private / "models").mkdir(parents=True, exist_ok=True)
    for model in (cache_dir() / "models").iterdir():
        link = private / "models" / model.name
        if not link.exists():
            link.symlink_to(model, target_is_directory=True)
    env = {**os.environ, "HARNESS_CACHE": str(private)}
    candidates = ROOT / "runs" / "candidates"
    stale = [p for p in candidates.glob("demo-*")] if candidates.is_dir() else []
    moved = work / "moved-candidates"
    moved.mkdir(exist_ok=True)
    for p in stale:  # the first run must train; put earlier demo candidates aside and back afterwards
        shutil.move(str(p), moved / p.name)
    try:
        first = run(work, env, "first")
        second = run(work, env, "second")
    finally:
        for p in moved.iterdir():
            if not (candidates / p.name).exists():
                shutil.move(str(p), candidates / p.name)
    print(f"first run (train + generate everything): {first:.1f} s")
    print(f"unchanged rerun (all cached):             {second:.1f} s")
    print(f"ratio: {100 * second / first:.1f}% of the first run (target <= 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
