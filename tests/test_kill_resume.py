"""Kill and resume: `harness pipeline` killed with SIGKILL during training and again during evaluation, then
rerun, finishes with the same result as a run that was never interrupted, and leaves the cache sound.

The pipeline runs as a user runs it (a subprocess of `python -m harness`), in its own process group, so the
kill also takes the base worker it may have started. Slow lane: five pipeline processes on the tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tests.test_pipeline import _small_suite

STEPS = 12
SAVE_EVERY = 3


def _world(tmp_path: Path, tiny_model_dir: Path, suite: Path) -> dict[str, Path]:
    """A preset on the tiny model with its own candidates folder, reports folder and result cache."""
    preset = yaml.safe_load((REPO / "trainers" / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    preset.update(model=str(tiny_model_dir), output_dir=str(tmp_path / "candidates"), eval_suite=str(suite))
    preset["data"].update(path=str(REPO / preset["data"]["path"]), suite=str(suite))
    preset["training"].update(batch_size=2, save_steps=SAVE_EVERY, max_length=256)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset), encoding="utf-8")
    return {
        "preset": path,
        "reports": tmp_path / "reports",
        "cache": tmp_path / "cache",
        "cands": tmp_path / "candidates",
    }


def _command(w: dict[str, Path]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "pipeline",
        str(w["preset"]),
        "--reports-dir",
        str(w["reports"]),
        "--run-id",
        "run",
        "--no-progress",
        "--batch-size",
        "2",
        "--max-steps",
        str(STEPS),
    ]


def _env(w: dict[str, Path]) -> dict[str, str]:
    return {**os.environ, "HARNESS_CACHE": str(w["cache"]), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def _run(w: dict[str, Path], log: Path) -> int:
    with log.open("ab") as out:
        return subprocess.run(
            _command(w), cwd=REPO, env=_env(w), stdout=out, stderr=subprocess.STDOUT, timeout=900, check=False
        ).returncode


def _kill_when(w: dict[str, Path], log: Path, ready: Callable[[], bool], what: str) -> None:
    """Start the pipeline, SIGKILL its whole process group as soon as `ready()` holds."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            _command(w), cwd=REPO, env=_env(w), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 600
        try:
            while not ready():
                if proc.poll() is not None:
                    pytest.fail(
                        f"the pipeline ended (exit {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}"
                    )
                if time.monotonic() > deadline:
                    pytest.fail(f"no {what} within 600 s")
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"expected the kill during {what}, got exit {proc.returncode}"


def _checkpoints(w: dict[str, Path]) -> list[Path]:
    return sorted(w["cands"].glob("*/checkpoints/checkpoint-*"))


def _cached_generations(w: dict[str, Path]) -> int:
    db = w["cache"] / "results.sqlite"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.2) as con:
            return int(con.execute("SELECT COUNT(*) FROM generations").fetchone()[0])
    except sqlite3.Error:
        return 0


def _outcome(w: dict[str, Path]) -> dict[str, Any]:
    """What must equal between an interrupted and an uninterrupted run: the adapter, outputs, scores, gates."""
    report = json.loads((w["reports"] / "run" / "report.json").read_text(encoding="utf-8"))
    rows = [json.loads(x) for x in (w["reports"] / "run" / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    return {
        "adapter": report["adapter"]["sha256"],
        "outputs": [{n: v["output"] for n, v in r["variants"].items()} for r in rows],
        "headline": report["headline"],
        "parity": {n: (r["verdict"], r["identical_outputs"]) for n, r in report["relations"].items()},
        "gates": [(c["id"], c["verdict"]) for c in (report["gates"] or {}).get("checks", [])],
    }


@pytest.mark.slow
def test_pipeline_killed_in_training_and_in_evaluation_resumes_to_the_same_result(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    suite = _small_suite(tmp_path, n=12, max_new=16, references=False)
    reference = _world(tmp_path / "reference", tiny_model_dir, suite)
    killed = _world(tmp_path / "killed", tiny_model_dir, suite)
    log = tmp_path / "pipeline.log"

    assert _run(reference, log) in (0, 1, 3), log.read_text()[-3000:]

    # 1. killed during training, once a checkpoint exists and before the adapter is written
    _kill_when(killed, log, lambda: len(_checkpoints(killed)) >= 2, "training (two checkpoints)")
    assert not list(killed["cands"].glob("*/adapter/adapter_model.safetensors")), "training had already finished"
    assert not (killed["reports"] / "run" / "report.json").exists()

    # 2. rerun, killed during evaluation: the adapter is complete, some generations are cached, no report yet
    adapter_done = lambda: bool(list(killed["cands"].glob("*/training_metadata.json")))  # noqa: E731
    _kill_when(killed, log, lambda: adapter_done() and _cached_generations(killed) > 0, "evaluation")
    assert not (killed["reports"] / "run" / "report.json").exists(), "evaluation had already finished"
    meta = json.loads(next(killed["cands"].glob("*/training_metadata.json")).read_text(encoding="utf-8"))
    assert meta["resumed_from_step"] >= SAVE_EVERY, meta["resumed_from_step"]

    # 3. rerun to the end
    assert _run(killed, log) in (0, 1, 3), log.read_text()[-3000:]
    with sqlite3.connect(killed["cache"] / "results.sqlite") as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert _outcome(killed) == _outcome(reference)
    report = json.loads((killed["reports"] / "run" / "report.json").read_text(encoding="utf-8"))
    assert report["cache"]["hits"]["generations"] > 0, report["cache"]  # the killed run's work was kept


def test_a_checkpoint_cut_off_mid_save_is_not_resumed(tmp_path: Path) -> None:
    from trainers.sft_recipe import _last_checkpoint

    for step, state in ((3, "{}"), (6, "{}"), (9, '{"global_step": 9, "log_hi'), (12, None)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if state is not None:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state, encoding="utf-8")
    assert _last_checkpoint(tmp_path) == str(tmp_path / "checkpoint-6")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-3", "checkpoint-6"]
    assert _last_checkpoint(tmp_path / "none") is None
