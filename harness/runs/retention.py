"""Capability retention: lm-eval on local tasks, run on a model that is already in memory.

A narrow LoRA can win its golden suite and still lose what the base model could do. The pipeline runs
the tasks in `golden/retention/` on each variant of one resident model (base with the adapter
disabled, adapter, merged) and the gate compares them item by item, so every task must yield one
0/1 score per item under a stable item id.

Response cache. lm-eval's response cache (`use_cache`) keys each answer on the request text only, not
on the model, so two models sharing one cache file would be served each other's answers. Here the
cache is off unless the caller passes both `cache_dir` and `cache_key` (a hash that identifies the
variant's weights, e.g. base weights + adapter); the file name also mixes in the tokenizer hash,
dtype, device, batch size and lm-eval version, so any of those changing starts a fresh file. The
base variant is the same weights for every candidate, so its answers are computed once.
lm-eval's other cache (`cache_requests`, the built prompts) is always off: it lives in one global
folder and is keyed by task name, not by the data, so an edited item would keep its stale prompt.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import sys
import time
import warnings
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from harness.env import tokenizer_sha256
from harness.errors import HarnessInputError, Problem
from harness.io import atomic_write_json, read_jsonl, sha256_json

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks import TaskManager
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

RETENTION_DIR = Path(__file__).resolve().parents[2] / "golden" / "retention"
OUTPUT_TYPES = ("multiple_choice", "generate_until")
BINARY_METRICS = ("acc", "acc_norm", "exact_match")
_NOISY_LOGGERS = ("lm_eval", "datasets", "transformers", "accelerate", "peft", "filelock", "fsspec", "urllib3")


@dataclass(frozen=True)
class RetentionTask:
    """One local lm-eval task: where it lives and which per-item 0/1 score the gate pairs across variants."""

    name: str
    yaml_path: Path
    data_file: Path
    output_type: str
    metric: str
    filter_name: str
    version: str
    item_ids: tuple[str, ...]
    content_sha256: str


@dataclass(frozen=True)
class _TaskFile:
    """What the harness read and checked in one task YAML and its data file, before lm-eval builds it."""

    name: str
    path: Path
    data_file: Path
    split: str
    metric: str
    filter_name: str
    version: str
    ids: tuple[str, ...]
    lines: tuple[int, ...]


def load_retention_tasks(tasks_dir: Path = RETENTION_DIR) -> list[RetentionTask]:
    """Validate a retention folder (every problem at once) and describe its tasks, without a model."""
    with _quiet():
        return [spec for spec, _ in _build_tasks(Path(tasks_dir))[1]]


def run_retention(
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    variant: str,
    tasks_dir: Path,
    cache_dir: Path | None,
    limit: int | None = None,
    batch_size: int = 16,
    cache_key: str | None = None,
) -> dict[str, Any]:
    """Run every task in `tasks_dir` on the model as it is now (adapter on, off or merged: the caller decides).

    Returns per task the gated metric, its value, n and the 0/1 score of every item keyed by item id,
    so variants can be compared with paired statistics. See the module docstring for the cache.
    """
    if not variant or not isinstance(variant, str):
        raise ValueError("variant must be a non-empty name such as 'base', 'adapter' or 'merged'")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items or None, got {limit}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if cache_dir is not None and not cache_key:
        raise ValueError(
            "a cache_dir needs a cache_key that identifies the variant's weights; "
            "pass one, or cache_dir=None to run uncached"
        )

    import lm_eval
    from lm_eval.models.huggingface import HFLM

    started = time.perf_counter()
    cache: dict[str, Any] | None = None
    with _quiet():
        manager, built = _build_tasks(Path(tasks_dir))
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        use_cache: str | None = None
        if cache_dir is not None and cache_key:
            use_cache, cache = _open_cache(
                Path(cache_dir), cache_key, model, tokenizer, batch_size, lm_eval.__version__
            )
        setup_s = time.perf_counter() - started
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task for _, task in built],
            task_manager=manager,
            limit=limit,
            log_samples=True,
            use_cache=use_cache,
            cache_requests=False,
            bootstrap_iters=0,
            apply_chat_template=False,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    wall_s = time.perf_counter() - started
    if results is None:
        raise RuntimeError("lm-eval returned no results (it only does so on non-zero ranks of a distributed run)")
    if cache is not None:
        cache["entries_added"] = _cache_entries(Path(cache["path"])) - cache["entries_before"]
    return {
        "variant": variant,
        "tasks_dir": str(Path(tasks_dir).resolve()),
        "limit": limit,
        "batch_size": batch_size,
        "lm_eval": lm_eval.__version__,
        "wall_s": round(wall_s, 3),
        "setup_s": round(setup_s, 3),
        "cache": cache,
        "tasks": {spec.name: _task_result(spec, results) for spec, _ in built},
    }


def _task_result(spec: RetentionTask, results: dict[str, Any]) -> dict[str, Any]:
    """Pull the gated metric and its per-item scores out of lm-eval's results for one task."""
    samples = [s for s in results["samples"][spec.name] if s["filter"] == spec.filter_name]
    samples.sort(key=lambda s: s["doc_id"])
    items: dict[str, int] = {}
    for s in samples:
        score = s[spec.metric]
        if score not in (0, 1):
            raise RuntimeError(f"{spec.name}: item {s['doc']['id']} scored {score!r} on {spec.metric}; expected 0 or 1")
        items[str(s["doc"]["id"])] = int(score)
    if not items:
        raise RuntimeError(f"{spec.name}: lm-eval scored zero items; a retention gate cannot pass on nothing")
    aggregate = results["results"][spec.name]
    value = float(aggregate[f"{spec.metric},{spec.filter_name}"])
    if abs(value - sum(items.values()) / len(items)) > 1e-9:
        raise RuntimeError(
            f"{spec.name}: lm-eval's {spec.metric} {value} is not the mean of its per-item scores; "
            "the per-item extraction is out of step with lm-eval"
        )
    suffix = f",{spec.filter_name}"
    metrics = {
        k.removesuffix(suffix): float(v)
        for k, v in aggregate.items()
        if k.endswith(suffix) and "_stderr" not in k and isinstance(v, (int, float))
    }
    out: dict[str, Any] = {
        "metric": spec.metric,
        "value": value,
        "n": len(items),
        "items": items,
        "metrics": metrics,
        "output_type": spec.output_type,
        "version": spec.version,
        "content_sha256": spec.content_sha256,
    }
    if spec.output_type == "generate_until":
        out["responses"] = {str(s["doc"]["id"]): s["filtered_resps"][0] for s in samples}
    return out


def _build_tasks(tasks_dir: Path) -> tuple[TaskManager, list[tuple[RetentionTask, Task]]]:
    """Read, validate and build every task in the folder; one HarnessInputError lists every problem.

    The TaskManager indexes this folder only: lm-eval's default one indexes its thousands of built-in
    task files (about a minute here) and simple_evaluate builds one unless it is given this.
    """
    if not tasks_dir.is_dir():
        raise HarnessInputError(
            Problem(
                str(tasks_dir),
                "retention task folder does not exist",
                f"pass the folder that holds the task YAMLs (the shipped one is {RETENTION_DIR})",
            )
        )
    yaml_paths = sorted(p for p in tasks_dir.rglob("*.yaml") if "__pycache__" not in p.parts)
    if not yaml_paths:
        raise HarnessInputError(
            Problem(
                str(tasks_dir),
                "holds no *.yaml task definitions",
                "add one YAML per task (see golden/retention/README.md)",
            )
        )

    problems: list[Problem] = []
    read = [r for p in yaml_paths if (r := _read_task_yaml(p, problems)) is not None]
    seen: dict[str, Path] = {}
    for f in read:
        if f.name in seen:
            problems.append(
                Problem(
                    str(f.path),
                    f"task name '{f.name}' is also used by {seen[f.name]}",
                    "give every task a unique 'task:' name",
                )
            )
        seen.setdefault(f.name, f.path)
    if problems:
        raise HarnessInputError(problems)

    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    manager = TaskManager(include_path=str(tasks_dir), include_defaults=False)
    built: list[tuple[RetentionTask, Task]] = []
    for f in read:
        if f.name not in manager.all_subtasks:
            problems.append(
                Problem(
                    str(f.path),
                    f"lm-eval's task index skipped this file, so task '{f.name}' would silently not run",
                    "run `lm_eval --include_path <folder> --tasks list` to see why",
                )
            )
            continue
        try:
            config = deepcopy(load_yaml(f.path, resolve_func=True))
            config["dataset_kwargs"]["data_files"] = {f.split: str(f.data_file)}
            task = manager.load([config])["tasks"][f.name]
        except Exception as exc:  # noqa: BLE001 - any failure here is the task definition's
            problems.append(
                Problem(
                    str(f.path),
                    f"lm-eval could not build the task ({type(exc).__name__}: {str(exc)[:300]})",
                    "fix the key or !function named in the message (see lm-eval's TaskConfig)",
                )
            )
            continue
        before = len(problems)
        _check_docs(task, f, problems)
        if len(problems) > before:
            continue
        digest = hashlib.sha256(f.path.read_bytes() + b"\0" + f.data_file.read_bytes()).hexdigest()
        spec = RetentionTask(
            f.name, f.path, f.data_file, config["output_type"], f.metric, f.filter_name, f.version, f.ids, digest
        )
        built.append((spec, task))
    if problems:
        raise HarnessInputError(problems)
    return manager, built


def _read_task_yaml(path: Path, problems: list[Problem]) -> _TaskFile | None:
    """Check one task YAML the way the harness needs it (lm-eval itself would skip a broken file silently)."""
    from lm_eval.tasks._yaml_loader import load_yaml

    where = str(path)
    try:
        cfg = load_yaml(path, resolve_func=False)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f"{path}:{mark.line + 1}"
        problems.append(
            Problem(
                where, f"is not valid YAML ({getattr(exc, 'problem', None) or exc})", "fix the YAML syntax at that line"
            )
        )
        return None
    except (OSError, ValueError) as exc:
        problems.append(
            Problem(
                where, f"could not be read as a task ({exc})", "make the file a YAML mapping; check any 'include:' path"
            )
        )
        return None

    found: list[Problem] = []
    name = cfg.get("task")
    if "group" in cfg or not isinstance(name, str) or not name:
        found.append(
            Problem(
                f"{where}: task",
                "each file must define one task with a string 'task:' name (groups are not supported)",
                "add e.g. `task: retention_mc`",
            )
        )
    if cfg.get("output_type") not in OUTPUT_TYPES:
        found.append(
            Problem(
                f"{where}: output_type",
                (
                    f"is {cfg.get('output_type')!r}; retention scores each item 0/1, "
                    f"which needs one of {', '.join(OUTPUT_TYPES)}"
                ),
                "set output_type to multiple_choice or generate_until",
            )
        )
    if cfg.get("dataset_path") != "json":
        found.append(
            Problem(
                f"{where}: dataset_path",
                f"is {cfg.get('dataset_path')!r}; retention tasks read a local JSONL file, never the hub",
                "set `dataset_path: json` and name the file in dataset_kwargs.data_files",
            )
        )
    split = cfg.get("test_split")
    if not isinstance(split, str) or not split:
        found.append(
            Problem(
                f"{where}: test_split",
                "is missing",
                "add `test_split: test` and the same key under dataset_kwargs.data_files",
            )
        )
    metadata = cfg.get("metadata")
    version = metadata.get("version") if isinstance(metadata, dict) else None
    if version is None:
        found.append(
            Problem(
                f"{where}: metadata.version",
                "is missing; reports must say which version of the items ran",
                "add `metadata: {version: 1.0}` and bump it when items change",
            )
        )

    metric_list = cfg.get("metric_list")
    metric = (
        metric_list[0].get("metric")
        if isinstance(metric_list, list) and metric_list and isinstance(metric_list[0], dict)
        else None
    )
    if metric not in BINARY_METRICS:
        found.append(
            Problem(
                f"{where}: metric_list",
                f"first metric is {metric!r}; the first metric is the gated one and must score each item 0/1",
                f"list one of {', '.join(BINARY_METRICS)} first",
            )
        )
    filter_list = cfg.get("filter_list")
    filter_name = "none"
    if filter_list is not None:
        if (
            not isinstance(filter_list, list)
            or len(filter_list) != 1
            or not isinstance(filter_list[0], dict)
            or not filter_list[0].get("name")
        ):
            found.append(
                Problem(
                    f"{where}: filter_list",
                    "must hold exactly one named filter pipeline, so each item has one score",
                    "merge the steps into one `- name: ...` entry",
                )
            )
        else:
            filter_name = str(filter_list[0]["name"])

    data_file: Path | None = None
    data_files = (
        (cfg.get("dataset_kwargs") or {}).get("data_files") if isinstance(cfg.get("dataset_kwargs"), dict) else None
    )
    if not (isinstance(data_files, dict) and list(data_files) == [split] and isinstance(data_files[split], str)):
        found.append(
            Problem(
                f"{where}: dataset_kwargs.data_files",
                f"must map the test split to one file, e.g. `{{{split or 'test'}: items.jsonl}}`",
                "name the JSONL file, relative to this YAML's folder",
            )
        )
    else:
        data_file = (path.parent / data_files[split]).resolve()
        if not data_file.is_file():
            found.append(
                Problem(
                    f"{where}: dataset_kwargs.data_files",
                    f"{data_files[split]} does not exist (looked for {data_file})",
                    "paths are relative to the YAML's folder; fix the name or add the file",
                )
            )
            data_file = None

    ids: list[str] = []
    line_of: list[int] = []
    if data_file is not None:
        seen: dict[str, int] = {}
        first: tuple[int, set[str]] | None = None
        for lineno, row in read_jsonl(data_file, found):
            keys = {k for k, v in row.items() if v is not None}
            first = first or (lineno, keys)
            if keys != first[1]:
                missing, extra = sorted(first[1] - keys), sorted(keys - first[1])
                found.append(
                    Problem(
                        f"{data_file}:{lineno}",
                        f"item fields differ from line {first[0]} (missing {missing}, extra {extra})",
                        (
                            "give every item the same fields, none null; "
                            "lm-eval would fill a gap with None and render it as text"
                        ),
                    )
                )
                continue
            item_id = row.get("id")
            if not isinstance(item_id, str) or not item_id:
                found.append(
                    Problem(
                        f"{data_file}:{lineno}",
                        "item has no string 'id'",
                        "give every item a unique id such as 'mc-001'",
                    )
                )
                continue
            if item_id in seen:
                found.append(
                    Problem(
                        f"{data_file}:{lineno}",
                        f"id '{item_id}' is also used on line {seen[item_id]}",
                        "make ids unique; paired statistics match items by id",
                    )
                )
                continue
            seen[item_id] = lineno
            ids.append(item_id)
            line_of.append(lineno)
        if not ids and not found:
            found.append(Problem(str(data_file), "holds no items", "add at least one JSON object per line"))
    problems.extend(found)
    if found or data_file is None:
        return None
    return _TaskFile(name, path, data_file, split, str(metric), filter_name, str(version), tuple(ids), tuple(line_of))


def _check_docs(task: Task, f: _TaskFile, problems: list[Problem]) -> None:
    """Render every item's prompt and target through lm-eval now, so a bad item fails here and not mid-run."""
    docs = list(task.eval_docs)
    if [str(d.get("id")) for d in docs] != list(f.ids):
        problems.append(
            Problem(
                str(f.data_file),
                f"lm-eval read {len(docs)} items but the file has {len(f.ids)} (or in another order)",
                "make each line one JSON object with the same keys",
            )
        )
        return
    multiple_choice = task.get_config("output_type") == "multiple_choice"
    for doc, lineno in zip(docs, f.lines):
        where = f"{f.data_file}:{lineno}"
        try:
            text = task.doc_to_text(doc)
            target = task.doc_to_target(doc)
            choices = task.doc_to_choice(doc) if multiple_choice else None
        except Exception as exc:  # noqa: BLE001 - a template or field error in this item
            problems.append(
                Problem(
                    where,
                    f"task {f.name} cannot render this item ({type(exc).__name__}: {exc})",
                    "give the item every field the YAML's doc_to_* templates use",
                )
            )
            continue
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem(where, "renders an empty prompt", "fill the question field"))
        if multiple_choice:
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or not all(isinstance(c, str) and c for c in choices)
                or len(set(choices)) != len(choices)
            ):
                problems.append(
                    Problem(
                        where,
                        f"choices {choices!r} are not two or more distinct non-empty strings",
                        "list distinct answer options",
                    )
                )
            elif not isinstance(target, int) or not 0 <= target < len(choices):
                problems.append(
                    Problem(
                        where,
                        f"answer {target!r} is not an index into the {len(choices)} choices",
                        f"set the answer to a number from 0 to {len(choices) - 1}",
                    )
                )
        else:
            golds = target if isinstance(target, list) else [target]
            if not golds or not all(isinstance(g, str) and g.strip() for g in golds):
                problems.append(
                    Problem(
                        where,
                        f"accepted answers {target!r} must be non-empty strings",
                        "list at least one accepted answer",
                    )
                )


def _open_cache(
    cache_dir: Path,
    cache_key: str,
    model: PreTrainedModel | PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    batch_size: int,
    lm_eval_version: str,
) -> tuple[str, dict[str, Any]]:
    """Pick the response-cache file for these exact weights and settings; lm-eval appends `_rank0.db`."""
    parameter = next(model.parameters())
    identity = {
        "cache_key": cache_key,
        "tokenizer_sha256": tokenizer_sha256(tokenizer),
        "dtype": str(parameter.dtype).replace("torch.", ""),
        "device": parameter.device.type,
        "batch_size": batch_size,
        "lm_eval": lm_eval_version,
    }
    digest = sha256_json(identity)[:24]
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = cache_dir / f"retention-{digest}"
    atomic_write_json(stem.with_suffix(".json"), identity)
    db = Path(f"{stem}_rank0.db")
    return str(stem), {"path": str(db), "key": cache_key, "entries_before": _cache_entries(db)}


def _cache_entries(db: Path) -> int:
    if not db.is_file():
        return 0
    from sqlitedict import SqliteDict

    with SqliteDict(str(db), flag="r") as store:
        return len(store)


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Silence lm-eval's and its dependencies' logs, warnings and progress bars for the duration.

    Progress bars write to sys.stderr, so stderr is captured (process-wide, like any redirect);
    on an unexpected failure the captured tail is written out so the cause is not lost.
    """
    loggers = [logging.getLogger(name) for name in _NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    buffer = io.StringIO()
    real_stderr = sys.stderr
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with contextlib.redirect_stderr(buffer), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield buffer
    except HarnessInputError:
        raise
    except BaseException:
        tail = buffer.getvalue()[-4000:]
        if tail.strip():
            real_stderr.write(f"--- lm-eval output before the failure (last {len(tail)} characters) ---\n{tail}\n")
        raise
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)
