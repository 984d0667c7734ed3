"""The base decoded by a second process beside the adapter: same results, a clean fallback, honest reasons."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

import harness.runs.compare as engine
import harness.runs.worker as worker
from harness.engine.threads import apply_requested_threads, request_threads
from harness.models.embedded import resolve
from harness.runs.evaluate import EvalOptions
from harness.runs.pipeline import run_pipeline
from harness.runs.worker import MIN_CASES, plan_base_worker
from harness.suite.suite import load_suite
from tests.test_pipeline import _adapter, _small_suite


def _run(tiny_model_dir: Path, tmp_path: Path, name: str, parallel: bool | None) -> tuple[Path, dict[str, Any]]:
    """One pipeline run in its own folder and cache, on one shared suite and adapter."""
    suite = (
        load_suite(tmp_path / "suite")
        if (tmp_path / "suite").is_dir()
        else load_suite(_small_suite(tmp_path, n=6, max_new=10))
    )
    adapter = tmp_path / "trained" / "adapter"
    if not adapter.is_dir():
        adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    options = EvalOptions(batch_size=4, progress=False, cache_path=tmp_path / name / "results.sqlite")
    return run_pipeline(
        suite,
        resolve(str(tiny_model_dir)),
        adapter,
        tmp_path / name / "reports",
        options,
        run_id=name,
        parallel_base=parallel,
        token_budget="warn",
    )


def _outputs(run_dir: Path) -> list[dict[str, str]]:
    rows = [json.loads(x) for x in (run_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    return [{v: r["variants"][v]["output"] for v in ("base", "adapter", "merged")} for r in rows]


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="the worker needs two CPU threads")
def test_worker_gives_the_same_results_as_one_process(tiny_model_dir: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    before = set(Path(tempfile.gettempdir()).glob("harness-base-worker-*"))
    par_dir, par = _run(tiny_model_dir, tmp_path, "par", True)
    seq_dir, seq = _run(tiny_model_dir, tmp_path, "seq", False)
    assert par["timings"]["base_worker"]["used"] is True
    assert par["variants"]["base"]["timings"]["worker"].startswith("second process")
    assert par["variants"]["base"]["timings"]["generated_cases"] == 6
    assert seq["timings"]["base_worker"] == {"used": False, "reason": "turned off (--sequential)"}
    assert _outputs(par_dir) == _outputs(seq_dir)
    assert par["headline"] == seq["headline"]
    assert torch.get_num_threads() == threads  # this process got its threads back
    assert set(Path(tempfile.gettempdir()).glob("harness-base-worker-*")) <= before  # its folder is removed


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="the worker needs two CPU threads")
def test_failed_worker_falls_back_to_decoding_here(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = engine.start_base_worker

    def broken(suite_path: Path, model_path: Path, *args: Any) -> Any:
        return real(suite_path, tmp_path / "no-such-model", *args)

    monkeypatch.setattr(engine, "start_base_worker", broken)
    threads = torch.get_num_threads()
    run_dir, report = _run(tiny_model_dir, tmp_path, "broken", True)
    plan = report["timings"]["base_worker"]
    assert (
        plan["used"] is False
        and "base worker failed (exit code" in plan["reason"]
        and "no-such-model" in plan["reason"]
    )
    assert "base worker failed" in capsys.readouterr().err
    assert report["variants"]["base"]["timings"]["generated_cases"] == 6
    assert "worker" not in report["variants"]["base"]["timings"]
    assert torch.get_num_threads() == threads
    seq_dir, _ = _run(tiny_model_dir, tmp_path, "seq", False)
    assert _outputs(run_dir) == _outputs(seq_dir)


def test_worker_plan_says_why_not(tiny_model_dir: Path) -> None:
    from harness.engine.loading import Runtime, load_model, load_tokenizer

    ref = resolve(str(tiny_model_dir))
    model, tok = load_model(ref, Runtime.pick("cpu")), load_tokenizer(ref)
    chats = [[{"role": "user", "content": "xin chào"}]]

    def plan(**kw: Any) -> dict[str, Any]:
        args: dict[str, Any] = {
            "asked": None,
            "device": "cpu",
            "cached": True,
            "missing": MIN_CASES,
            "model": model,
            "tokenizer": tok,
            "chats": chats,
            "batch_size": 160,
            "max_new_tokens": 16,
        }
        return plan_base_worker(**{**args, **kw})

    assert plan(asked=False)["reason"] == "turned off (--sequential)"
    assert "CPU only" in plan(device="cuda")["reason"]
    assert "--no-cache" in plan(cached=False)["reason"]
    assert plan(missing=MIN_CASES - 1)["used"] is False
    assert plan(missing=1, asked=True)["used"] is (torch.get_num_threads() >= 2)
    if torch.get_num_threads() >= 2:
        assert plan()["used"] is True


def test_worker_plan_respects_memory(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.engine.loading import Runtime, load_model, load_tokenizer

    if torch.get_num_threads() < 2:
        pytest.skip("the worker needs two CPU threads")
    ref = resolve(str(tiny_model_dir))
    model, tok = load_model(ref, Runtime.pick("cpu")), load_tokenizer(ref)
    monkeypatch.setattr(worker, "available_memory", lambda: 1 << 20)
    p = plan_base_worker(None, "cpu", True, MIN_CASES, model, tok, [[{"role": "user", "content": "hi"}]], 160, 16)
    assert p["used"] is False and "GiB available" in p["reason"]


def test_thread_requests_apply_on_the_decoding_thread() -> None:
    threads = torch.get_num_threads()
    try:
        request_threads(1)
        assert torch.get_num_threads() == threads  # nothing changes until the loop applies it
        apply_requested_threads()
        assert torch.get_num_threads() == 1
        apply_requested_threads()  # nothing pending: no change
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="the worker needs two CPU threads")
def test_worker_is_killed_when_the_pipeline_fails(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[Any] = []
    real_start, real_evaluate = engine.start_base_worker, engine.evaluate

    def start(*args: Any) -> Any:
        started.append(real_start(*args))
        return started[-1]

    def evaluate(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("model_key", "").startswith("adapter:"):
            raise RuntimeError("adapter decode broke")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(engine, "start_base_worker", start)
    monkeypatch.setattr(engine, "evaluate", evaluate)
    threads = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="adapter decode broke"):
        _run(tiny_model_dir, tmp_path, "fails", True)
    assert len(started) == 1
    assert started[0].proc.poll() is not None  # not left running
    assert not started[0].folder.exists()
    assert torch.get_num_threads() == threads
