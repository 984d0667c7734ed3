"""Capability retention on the tiny model: the shipped tasks load, per-item results come back per model,
bad input is named."""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from harness.errors import HarnessInputError
from harness.runs.retention import RETENTION_DIR, load_retention_tasks, run_retention

LIMIT = 6


@pytest.fixture()
def tasks_copy(tmp_path: Path) -> Path:
    """A writable copy of golden/retention for tests that break it on purpose."""
    dst = tmp_path / "retention"
    shutil.copytree(RETENTION_DIR, dst)
    return dst


@pytest.fixture(scope="module")
def damaged_model(tiny_model):  # noqa: ANN001, ANN201 - transformers model
    """The tiny model with every weight pushed by noise: same shapes, different answers."""
    damaged = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in damaged.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.5)
    return damaged.eval()


@pytest.fixture(scope="module")
def base_result(tiny_model, tokenizer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:  # noqa: ANN001
    """One uncached run of the tiny model, started from an unrelated working directory."""
    with contextlib.chdir(tmp_path_factory.mktemp("elsewhere")):
        return run_retention(tiny_model, tokenizer, "base", RETENTION_DIR, None, limit=LIMIT, batch_size=8)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _problems(exc: pytest.ExceptionInfo[HarnessInputError]) -> list[str]:
    return [str(p) for p in exc.value.problems]


def test_shipped_tasks_load_with_enough_items() -> None:
    tasks = {t.name: t for t in load_retention_tasks(RETENTION_DIR)}
    assert set(tasks) == {"retention_mc", "retention_gen"}
    mc, gen = tasks["retention_mc"], tasks["retention_gen"]
    assert (mc.output_type, mc.metric) == ("multiple_choice", "acc_norm")
    assert (gen.output_type, gen.metric, gen.filter_name) == ("generate_until", "exact_match", "answer")
    for task in tasks.values():
        assert len(task.item_ids) >= 100
        assert task.version == "1.0"
        assert len(set(task.item_ids)) == len(task.item_ids)


def test_mc_gold_positions_are_balanced_and_options_distinct() -> None:
    rows = _rows(RETENTION_DIR / "retention_mc.jsonl")
    counts = [sum(r["answer"] == k for r in rows) for k in range(4)]
    assert all(len(r["choices"]) == 4 and len(set(r["choices"])) == 4 for r in rows)
    assert max(counts) - min(counts) <= 1, counts


def test_run_returns_per_item_scores_from_any_working_directory(base_result: dict[str, Any]) -> None:
    out = base_result
    assert out["variant"] == "base" and out["cache"] is None and out["wall_s"] > 0
    specs = {t.name: t for t in load_retention_tasks(RETENTION_DIR)}
    for name, result in out["tasks"].items():
        assert result["n"] == LIMIT
        assert list(result["items"]) == list(specs[name].item_ids[:LIMIT])
        assert set(result["items"].values()) <= {0, 1}
        assert result["value"] == pytest.approx(sum(result["items"].values()) / LIMIT)
        assert result["metric"] == specs[name].metric
    assert set(out["tasks"]["retention_gen"]["responses"]) == set(out["tasks"]["retention_gen"]["items"])
    assert "responses" not in out["tasks"]["retention_mc"]


def test_cache_is_per_key_and_never_serves_another_model(tiny_model, damaged_model, tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    cache = tmp_path / "cache"
    first = run_retention(
        tiny_model, tokenizer, "base", RETENTION_DIR, cache, limit=LIMIT, batch_size=8, cache_key="weights-a"
    )
    again = run_retention(
        tiny_model, tokenizer, "base", RETENTION_DIR, cache, limit=LIMIT, batch_size=8, cache_key="weights-a"
    )
    other = run_retention(
        damaged_model, tokenizer, "adapter", RETENTION_DIR, cache, limit=LIMIT, batch_size=8, cache_key="weights-b"
    )

    assert first["cache"]["entries_added"] > 0
    assert again["cache"]["entries_added"] == 0, "a rerun of the same weights should be served from the cache"
    assert again["tasks"] == first["tasks"]
    assert other["cache"]["path"] != first["cache"]["path"]
    assert other["cache"]["entries_added"] == first["cache"]["entries_added"], (
        "the damaged model must compute every request itself"
    )
    assert other["tasks"]["retention_gen"]["responses"] != first["tasks"]["retention_gen"]["responses"]


def test_peft_model_with_adapter_disabled_matches_the_base(tiny_model, tokenizer, base_result: dict[str, Any]) -> None:  # noqa: ANN001
    from peft import LoraConfig, get_peft_model

    base = base_result
    peft = get_peft_model(
        copy.deepcopy(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
    )
    peft.eval()
    with peft.disable_adapter():
        disabled = run_retention(peft, tokenizer, "base", RETENTION_DIR, None, limit=LIMIT, batch_size=8)
    enabled = run_retention(peft, tokenizer, "adapter", RETENTION_DIR, None, limit=LIMIT, batch_size=8)
    assert disabled["tasks"] == base["tasks"]
    assert enabled["tasks"]["retention_gen"]["responses"] != base["tasks"]["retention_gen"]["responses"]


def test_cache_dir_without_cache_key_is_refused(tiny_model, tokenizer, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="cache_key"):
        run_retention(tiny_model, tokenizer, "base", RETENTION_DIR, tmp_path, limit=LIMIT)


def test_missing_or_empty_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(HarnessInputError, match="does not exist") as exc:
        load_retention_tasks(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(exc.value)
    with pytest.raises(HarnessInputError, match=r"no \*\.yaml"):
        load_retention_tasks(tmp_path)


def test_broken_yaml_names_file_and_line(tasks_copy: Path) -> None:
    path = tasks_copy / "retention_mc.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace("test_split: test", "test_split: [test"), encoding="utf-8")
    with pytest.raises(HarnessInputError) as exc:
        load_retention_tasks(tasks_copy)
    (problem,) = _problems(exc)
    assert f"{path}:" in problem and "not valid YAML" in problem


def test_every_task_file_problem_is_reported_at_once(tasks_copy: Path) -> None:
    mc = tasks_copy / "retention_mc.yaml"
    mc.write_text(
        mc.read_text(encoding="utf-8").replace("test: retention_mc.jsonl", "test: missing.jsonl"), encoding="utf-8"
    )
    gen = tasks_copy / "retention_gen.yaml"
    text = gen.read_text(encoding="utf-8").replace("dataset_path: json", "dataset_path: someone/hub-dataset")
    gen.write_text(text.replace("metadata:\n  version: 1.0\n", ""), encoding="utf-8")
    with pytest.raises(HarnessInputError) as exc:
        load_retention_tasks(tasks_copy)
    problems = _problems(exc)
    assert len(problems) == 3, problems
    assert any("missing.jsonl does not exist" in p and str(mc) in p for p in problems)
    assert any("dataset_path" in p and "never the hub" in p for p in problems)
    assert any("metadata.version" in p for p in problems)


def test_bad_items_are_named_by_line(tasks_copy: Path) -> None:
    mc_path = tasks_copy / "retention_mc.jsonl"
    rows = _rows(mc_path)
    rows[6]["id"] = rows[5]["id"]
    _write_rows(mc_path, rows)
    with pytest.raises(HarnessInputError) as exc:
        load_retention_tasks(tasks_copy)
    assert any(f"{mc_path}:7" in p and "also used on line 6" in p for p in _problems(exc))

    rows[6]["id"] = "mc-unique"
    rows[2]["answer"] = 9
    rows[4]["choices"] = ["same", "same", "other", "more"]
    _write_rows(mc_path, rows)
    with pytest.raises(HarnessInputError) as exc:
        load_retention_tasks(tasks_copy)
    problems = _problems(exc)
    assert len(problems) == 2, problems
    assert any(f"{mc_path}:3" in p and "not an index" in p for p in problems), problems
    assert any(f"{mc_path}:5" in p and "distinct" in p for p in problems), problems


def test_item_missing_a_field_is_refused(tasks_copy: Path) -> None:
    path = tasks_copy / "retention_gen.jsonl"
    rows = _rows(path)
    del rows[3]["prefix"]
    _write_rows(path, rows)
    with pytest.raises(HarnessInputError, match=r"missing \['prefix'\]") as exc:
        load_retention_tasks(tasks_copy)
    assert f"{path}:4" in str(exc.value)


def test_generation_item_without_accepted_answer_is_refused(tasks_copy: Path) -> None:
    path = tasks_copy / "retention_gen.jsonl"
    rows = _rows(path)
    rows[0]["answers"] = []
    _write_rows(path, rows)
    with pytest.raises(HarnessInputError, match="accepted answers") as exc:
        load_retention_tasks(tasks_copy)
    assert f"{path}:1" in str(exc.value)


def test_non_binary_metric_and_duplicate_task_name_are_refused(tasks_copy: Path) -> None:
    mc = tasks_copy / "retention_mc.yaml"
    mc.write_text(mc.read_text(encoding="utf-8").replace("metric: acc_norm", "metric: brier_score"), encoding="utf-8")
    shutil.copy(tasks_copy / "retention_gen.yaml", tasks_copy / "copy_of_gen.yaml")
    with pytest.raises(HarnessInputError) as exc:
        load_retention_tasks(tasks_copy)
    problems = _problems(exc)
    assert any("metric_list" in p and "brier_score" in p for p in problems), problems
    assert any("'retention_gen' is also used" in p for p in problems), problems
