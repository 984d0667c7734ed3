"""Bad-input corpus for runs: adapter folders, reports and run folders, run ids, reports dirs, presets'
output_dir, model flags, gate and promote. Every entry goes through tests.badinput.reject, the CLI as a user
calls it: exit 2, one message naming the file, key or flag, no traceback, no network, nothing overwritten.

Adapter folders are checked before any model loads (config JSON, the safetensors header, ranks and shapes
against the base's config.json), so these entries take milliseconds; one tiny compare run, shared by the
module, is the existing run that gate, promote and --run-id entries work on.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.cli import main
from tests.badinput import reject
from tests.conftest import REPO
from tests.test_pipeline import _adapter, _small_suite

TRAIN_DATA = REPO / "trainers" / "data" / "support_vi_train.jsonl"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """A suite, a good adapter, a preset on the tiny model, and one finished compare run ("done")."""
    root = tmp_path_factory.mktemp("bad-runs")
    suite = _small_suite(root, n=3, max_new=4)
    adapter = _adapter(root, tiny_model_dir, trained=True)
    reports = root / "reports"
    code = main(
        [
            "compare",
            "--suite",
            str(suite),
            "--base",
            str(tiny_model_dir),
            "--adapter",
            f"cand={adapter}",
            "--reports-dir",
            str(reports),
            "--run-id",
            "done",
            "--batch-size",
            "4",
            "--no-progress",
            "--no-cache",
        ]
    )
    assert code in (0, 1, 3) and (reports / "done" / "report.json").is_file()
    preset = yaml.safe_load((REPO / "trainers" / "configs" / "demo.yaml").read_text(encoding="utf-8"))
    preset.update(model=str(tiny_model_dir), output_dir=str(root / "candidates"), eval_suite=str(suite))
    preset["data"].update(path=str(TRAIN_DATA), suite=str(suite))
    (root / "preset.yaml").write_text(yaml.safe_dump(preset), encoding="utf-8")
    return {"root": root, "suite": suite, "adapter": adapter, "reports": reports, "preset": root / "preset.yaml"}


# ---------------------------------------------------------------- adapter folders


def _config(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))


def _set_config(**changes: Any) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        cfg = _config(folder)
        for k, v in changes.items():
            if v is _DROP:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        (folder / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")

    return edit


_DROP = object()


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).write_bytes(data)

    return edit


def _truncate(fraction: float) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        w = folder / "adapter_model.safetensors"
        data = w.read_bytes()
        w.write_bytes(data[: int(len(data) * fraction)])

    return edit


def _tensors(change: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        w = folder / "adapter_model.safetensors"
        save_file(change(load_file(str(w))), str(w))

    return edit


def _narrow_q(tensors: dict[str, Any]) -> dict[str, Any]:
    """q_proj's lora_A as if the base were 32 wide, not 64: an adapter of another model size."""
    import torch

    return {k: (torch.zeros(t.shape[0], 32) if "q_proj.lora_A" in k else t) for k, t in tensors.items()}


def _rename_modules(tensors: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("q_proj", "c_attn"): t for k, t in tensors.items()}


def _remove(name: str) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        (folder / name).unlink()

    return edit


def _to_file(folder: Path) -> None:
    shutil.rmtree(folder)
    folder.write_text("not a folder", encoding="utf-8")


def _meta_broken(folder: Path) -> None:
    (folder.parent / "training_metadata.json").write_text("{broken", encoding="utf-8")


def _meta_list(folder: Path) -> None:
    (folder.parent / "training_metadata.json").write_text("[1, 2]", encoding="utf-8")


ADAPTERS: dict[str, tuple[Callable[[Path], None], str]] = {
    "config-not-json": (_write("adapter_config.json", b"{not json"), "adapter_config.json"),
    "config-empty": (_write("adapter_config.json", b""), "adapter_config.json"),
    "config-a-list": (_write("adapter_config.json", b"[1, 2]"), "adapter_config.json"),
    "config-a-string": (_write("adapter_config.json", b'"LORA"'), "adapter_config.json"),
    "config-not-utf8": (_write("adapter_config.json", b'{"r": "\xff\xfe"}'), "adapter_config.json"),
    "peft-type-prefix": (_set_config(peft_type="PREFIX_TUNING"), "peft_type"),
    "peft-type-ia3": (_set_config(peft_type="IA3"), "peft_type"),
    "r-missing": (_set_config(r=_DROP), "key 'r'"),
    "r-zero": (_set_config(r=0), "key 'r'"),
    "r-string": (_set_config(r="8"), "key 'r'"),
    "r-bool": (_set_config(r=True), "key 'r'"),
    "r-float": (_set_config(r=4.5), "key 'r'"),
    "target-modules-missing": (_set_config(target_modules=_DROP), "target_modules"),
    "target-modules-empty": (_set_config(target_modules=[]), "target_modules"),
    "target-modules-number": (_set_config(target_modules=5), "target_modules"),
    "target-modules-not-strings": (_set_config(target_modules=[1, 2]), "target_modules"),
    "target-modules-not-in-base": (_set_config(target_modules=["c_attn", "c_proj"]), "target_modules"),
    "lora-alpha-string": (_set_config(lora_alpha="sixteen"), "lora_alpha"),
    "use-dora-string": (_set_config(use_dora="yes"), "use_dora"),
    "rank-pattern-list": (_set_config(rank_pattern=[4]), "rank_pattern"),
    "rank-mismatch": (_set_config(r=8), "rank 4"),
    "shape-of-another-base": (_tensors(_narrow_q), "q_proj"),
    "weights-adapt-unknown-module": (_tensors(_rename_modules), "c_attn"),
    "weights-no-lora-tensors": (
        _tensors(lambda t: {"something.weight": next(iter(t.values()))}),
        "no LoRA tensors",
    ),
    "weights-truncated-half": (_truncate(0.5), "adapter_model.safetensors"),
    "weights-truncated-header": (_truncate(0.001), "adapter_model.safetensors"),
    "weights-empty": (_write("adapter_model.safetensors", b""), "adapter_model.safetensors"),
    "weights-garbage": (_write("adapter_model.safetensors", b"\x00\x01garbage" * 50), "adapter_model.safetensors"),
    "weights-header-not-json": (
        _write("adapter_model.safetensors", (16).to_bytes(8, "little") + b"{this is no json" + b"\0" * 8),
        "adapter_model.safetensors",
    ),
    "weights-missing": (_remove("adapter_model.safetensors"), "adapter_model.safetensors"),
    "config-missing": (_remove("adapter_config.json"), "adapter_config.json"),
    "folder-is-a-file": (_to_file, "is not a folder"),
    "metadata-broken": (_meta_broken, "training_metadata.json"),
    "metadata-a-list": (_meta_list, "training_metadata.json"),
}


def _bad_adapter(world: dict[str, Path], tmp_path: Path, edit: Callable[[Path], None]) -> Path:
    folder = tmp_path / "cand" / "adapter"
    shutil.copytree(world["adapter"], folder)
    edit(folder)
    return folder


@pytest.mark.parametrize("case", list(ADAPTERS), ids=list(ADAPTERS))
def test_compare_refuses_a_bad_adapter_folder(
    case: str, world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, where = ADAPTERS[case]
    folder = _bad_adapter(world, tmp_path, edit)
    argv = ["compare", "--suite", str(world["suite"]), "--base", str(tiny_model_dir), "--adapter", f"cand={folder}"]
    reject([*argv, "--reports-dir", str(tmp_path / "reports"), "--no-cache"], where, [tmp_path], monkeypatch)


PIPELINE_ADAPTERS = ("config-not-json", "r-missing", "target-modules-not-in-base", "weights-truncated-half")


@pytest.mark.parametrize("case", PIPELINE_ADAPTERS, ids=[f"pipeline-{c}" for c in PIPELINE_ADAPTERS])
def test_pipeline_refuses_a_bad_adapter_folder(
    case: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, where = ADAPTERS[case]
    folder = _bad_adapter(world, tmp_path, edit)
    argv = ["pipeline", str(world["preset"]), "--adapter", str(folder), "--reports-dir", str(tmp_path / "reports")]
    reject([*argv, "--no-cache"], where, [tmp_path, world["root"] / "candidates"], monkeypatch)


def test_pipeline_refuses_a_missing_adapter_folder(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["pipeline", str(world["preset"]), "--adapter", str(tmp_path / "nope"), "--reports-dir", str(tmp_path)]
    reject(argv, "nope", [tmp_path], monkeypatch)


def test_a_run_file_naming_a_truncated_adapter_is_refused(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _bad_adapter(world, tmp_path, _truncate(0.6))
    run = tmp_path / "run.yaml"
    variants = [{"name": "base", "kind": "base"}, {"name": "cand", "kind": "adapter", "path": str(folder)}]
    run.write_text(
        yaml.safe_dump({"suite": str(world["suite"]), "base": str(tiny_model_dir), "variants": variants}),
        encoding="utf-8",
    )
    reject(["compare", str(run), "--reports-dir", str(tmp_path / "reports")], "truncated", [tmp_path], monkeypatch)


def test_adapter_flag_without_a_name_is_refused(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["compare", "--suite", str(world["suite"]), "--adapter", str(world["adapter"])]
    reject([*argv, "--reports-dir", str(tmp_path)], "--adapter", [tmp_path], monkeypatch)


# ---------------------------------------------------------------- run ids and reports folders

RUN_IDS = {
    "parent": "../x",
    "absolute": "/tmp/harness-abs-run",
    "separator": "a/b",
    "backslash": "a\\b",
    "empty": "",
    "dot": ".",
    "dotdot": "..",
    "hidden": ".hidden",
    "spaces": " x ",
}


def _new_run_argv(command: str, world: dict[str, Path], tiny_model_dir: Path, reports: Path) -> list[str]:
    if command == "compare":
        head = ["compare", "--suite", str(world["suite"]), "--base", str(tiny_model_dir)]
        return [*head, "--adapter", f"cand={world['adapter']}", "--reports-dir", str(reports), "--no-cache"]
    if command == "eval":
        return ["eval", str(world["suite"]), "--model", str(tiny_model_dir), "--reports-dir", str(reports)]
    return ["pipeline", str(world["preset"]), "--adapter", str(world["adapter"]), "--reports-dir", str(reports)]


@pytest.mark.parametrize("command", ["compare", "eval", "pipeline"])
@pytest.mark.parametrize("run_id", list(RUN_IDS.values()), ids=list(RUN_IDS))
def test_a_run_id_that_is_not_one_folder_name_is_refused(
    command: str,
    run_id: str,
    world: dict[str, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    argv = [*_new_run_argv(command, world, tiny_model_dir, reports), "--run-id", run_id]
    reject(argv, "--run-id", [tmp_path, Path("/tmp/harness-abs-run")], monkeypatch)


@pytest.mark.parametrize("command", ["compare", "eval", "pipeline"])
def test_a_run_id_naming_an_existing_run_never_replaces_it(
    command: str, world: dict[str, Path], tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = [*_new_run_argv(command, world, tiny_model_dir, world["reports"]), "--run-id", "done"]
    reject(argv, ["already holds a report", "--run-id"], [world["reports"]], monkeypatch)


def test_a_signed_run_id_is_never_replaced_either(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = tmp_path / "reports"
    shutil.copytree(world["reports"] / "done", reports / "done")
    (reports / "ledger.jsonl").write_text('{"seq": 1, "run_id": "done"}\n', encoding="utf-8")
    argv = [*_new_run_argv("compare", world, tiny_model_dir, reports), "--run-id", "done"]
    reject(argv, "already holds a report", [tmp_path], monkeypatch)


@pytest.mark.parametrize("command", ["compare", "eval", "pipeline", "gate", "promote"])
@pytest.mark.parametrize("shape", ["file", "under-a-file"])
def test_a_reports_dir_that_is_a_file_is_refused(
    command: str,
    shape: str,
    world: dict[str, Path],
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocker = tmp_path / "reports.txt"
    blocker.write_text("a file", encoding="utf-8")
    reports = blocker if shape == "file" else blocker / "sub"
    if command in ("gate", "promote"):
        argv = [command, "done", "--reports-dir", str(reports)]
    else:
        argv = _new_run_argv(command, world, tiny_model_dir, reports)
    reject(argv, "reports.txt", [tmp_path], monkeypatch)


# ---------------------------------------------------------------- reports: gate and promote


def _copy_run(world: dict[str, Path], tmp_path: Path) -> Path:
    reports = tmp_path / "reports"
    shutil.copytree(world["reports"] / "done", reports / "done")
    return reports


def _report_edit(change: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        report = json.loads((run / "report.json").read_text(encoding="utf-8"))
        change(report)
        (run / "report.json").write_text(json.dumps(report), encoding="utf-8")

    return edit


def _raw(name: str, data: bytes | None) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        if data is None:
            (run / name).unlink()
        else:
            (run / name).write_bytes(data)

    return edit


def _regate(gates: Any) -> Callable[[Path], None]:
    """A re-gating of the current report.json whose gates block is damaged."""

    def edit(run: Path) -> None:
        sha = hashlib.sha256((run / "report.json").read_bytes()).hexdigest()
        (run / "regate-20990101T000000Z.json").write_text(
            json.dumps({"kind": "regate", "report_sha256": sha, "gates": gates}), encoding="utf-8"
        )

    return edit


def _half(run: Path) -> None:
    data = (run / "report.json").read_bytes()
    (run / "report.json").write_bytes(data[: len(data) // 2])


REPORTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "report-not-json": (_raw("report.json", b"<html>oops</html>"), "report.json"),
    "report-truncated": (_half, "report.json"),
    "report-empty": (_raw("report.json", b""), "report.json"),
    "report-a-list": (_raw("report.json", b"[]"), "report.json"),
    "report-not-utf8": (_raw("report.json", b'{"kind": "\xff"}'), "report.json"),
    "report-kind-eval": (_report_edit(lambda r: r.update(kind="eval")), "report.json"),
    "report-no-suite": (_report_edit(lambda r: r.pop("suite")), "key 'suite'"),
    "report-suite-path-number": (_report_edit(lambda r: r["suite"].update(path=7)), "key 'suite.path'"),
    "report-variants-a-list": (_report_edit(lambda r: r.update(variants=[])), "key 'variants'"),
    "report-variant-block-a-string": (_report_edit(lambda r: r["variants"].update(cand="x")), "variants.cand"),
    "report-no-run-id": (_report_edit(lambda r: r.pop("run_id")), "key 'run_id'"),
    "report-variant-order-a-string": (_report_edit(lambda r: r.update(variant_order="cand")), "variant_order"),
    "report-missing": (_raw("report.json", None), "report.json"),
    "cases-missing": (_raw("cases.jsonl", None), "cases.jsonl"),
    "cases-broken-line": (_raw("cases.jsonl", b'{"id": 1}\n{broken\n'), "cases.jsonl:2"),
}


@pytest.mark.parametrize("case", list(REPORTS), ids=[f"gate-{c}" for c in REPORTS])
def test_gate_refuses_a_damaged_run(
    case: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, where = REPORTS[case]
    reports = _copy_run(world, tmp_path)
    edit(reports / "done")
    reject(["gate", "done", "--reports-dir", str(reports)], where, [tmp_path], monkeypatch)


def _gates_edit(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    return _report_edit(lambda r: change(r["gates"]))


PROMOTES: dict[str, tuple[Callable[[Path], None], str]] = {
    "report-not-json": REPORTS["report-not-json"],
    "report-truncated": (_half, "report.json"),
    "report-no-variants": (_report_edit(lambda r: r.pop("variants")), "key 'variants'"),
    "gates-a-string": (_report_edit(lambda r: r.update(gates="pass")), "key 'gates'"),
    "gates-no-verdict": (_gates_edit(lambda g: g.pop("verdict")), "gates.verdict"),
    "gates-checks-not-a-list": (_gates_edit(lambda g: g.update(checks={"a": 1})), "gates.checks"),
    "gates-missing": (_report_edit(lambda r: r.pop("gates")), "has no gate results"),
    "regate-file-corrupt": (_raw("regate-20990101T000000Z.json", b"{cut"), "regate-20990101T000000Z.json"),
    "regate-gates-a-list": (_regate([]), "regate-20990101T000000Z.json: key 'gates'"),
}


@pytest.mark.parametrize("case", list(PROMOTES), ids=[f"promote-{c}" for c in PROMOTES])
def test_promote_refuses_a_damaged_run(
    case: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edit, where = PROMOTES[case]
    reports = _copy_run(world, tmp_path)
    edit(reports / "done")
    reject(["promote", "done", "--reports-dir", str(reports)], where, [tmp_path], monkeypatch)


@pytest.mark.parametrize("command", ["gate", "promote"])
@pytest.mark.parametrize("run", ["../done", "/etc", "nope", ""], ids=["parent", "absolute", "missing", "empty"])
def test_gate_and_promote_refuse_a_bad_run_id(
    command: str, run: str, world: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    reject([command, run, "--reports-dir", str(world["reports"])], "run", [world["reports"]], monkeypatch)


# ---------------------------------------------------------------- promotion under a foreign policy


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _passed_under(policy: Path) -> Callable[[Path], None]:
    """The run's gates as if a (weaker) ad-hoc policy had passed it."""

    def change(report: dict[str, Any]) -> None:
        g = report["gates"]
        g.update(verdict="pass", policy=str(policy), policy_sha256=_sha(policy))
        for c in g["checks"]:
            c["verdict"] = "pass"

    return _report_edit(change)


def _weak_policy(tmp_path: Path) -> Path:
    weak = tmp_path / "weak.yaml"
    weak.write_text("checks: []\n", encoding="utf-8")
    return weak


def test_promote_refuses_a_run_gated_with_another_policy(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = _copy_run(world, tmp_path)
    _passed_under(_weak_policy(tmp_path))(reports / "done")
    reject(
        ["promote", "done", "--reports-dir", str(reports)], "not gated with the suite's policy", [tmp_path], monkeypatch
    )


def test_promote_refuses_allow_policy_naming_another_file(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = _copy_run(world, tmp_path)
    _passed_under(_weak_policy(tmp_path))(reports / "done")
    other = tmp_path / "other.yaml"
    other.write_text("checks: [] # another\n", encoding="utf-8")
    argv = ["promote", "done", "--reports-dir", str(reports), "--allow-policy", str(other)]
    reject(argv, "--allow-policy", [tmp_path], monkeypatch)


def test_promote_refuses_allow_policy_that_does_not_exist(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reports = _copy_run(world, tmp_path)
    _passed_under(_weak_policy(tmp_path))(reports / "done")
    argv = ["promote", "done", "--reports-dir", str(reports), "--allow-policy", str(tmp_path / "gone.yaml")]
    reject(argv, "--allow-policy", [tmp_path], monkeypatch)


def test_allow_policy_promotes_and_records_it_loudly(world: dict[str, Path], tmp_path: Path, capsys) -> None:  # noqa: ANN001
    reports = _copy_run(world, tmp_path)
    weak = _weak_policy(tmp_path)
    _passed_under(weak)(reports / "done")
    assert main(["promote", "done", "--reports-dir", str(reports), "--allow-policy", str(weak)]) == 0
    assert "NOT the suite's gate policy" in capsys.readouterr().err
    entry = json.loads((reports / "champion.json").read_text(encoding="utf-8"))
    p = entry["policy"]
    assert p["path"] == str(weak) and p["sha256"] == _sha(weak) and p["suite_policy"] is False
    assert "NOT the suite's policy" in p["note"]


def test_suite_policy_promotes_and_says_so(world: dict[str, Path], tmp_path: Path) -> None:
    reports = _copy_run(world, tmp_path)
    _passed_under(world["suite"] / "gates.yaml")(reports / "done")
    assert main(["promote", "done", "--reports-dir", str(reports)]) == 0
    entry = json.loads((reports / "champion.json").read_text(encoding="utf-8"))
    assert entry["policy"]["suite_policy"] is True


def test_promote_reads_the_newest_regate_of_this_report(world: dict[str, Path], tmp_path: Path) -> None:
    reports = _copy_run(world, tmp_path)
    _passed_under(world["suite"] / "gates.yaml")(reports / "done")
    main(["gate", "done", "--reports-dir", str(reports)])  # the real verdict of the tiny model: not a pass
    regate = json.loads(next((reports / "done").glob("regate-*.json")).read_text(encoding="utf-8"))
    if regate["gates"]["verdict"] != "pass":
        assert main(["promote", "done", "--reports-dir", str(reports)]) == 2
    _report_edit(lambda r: r.update(edited="again"))(reports / "done")  # report changed: the regate is stale
    assert main(["promote", "done", "--reports-dir", str(reports)]) == 0


def test_regating_writes_a_new_file_and_never_the_report(world: dict[str, Path], tmp_path: Path) -> None:
    reports = _copy_run(world, tmp_path)
    before = (reports / "done" / "report.json").read_bytes()
    main(["gate", "done", "--reports-dir", str(reports)])
    main(["gate", "done", "--reports-dir", str(reports)])
    assert (reports / "done" / "report.json").read_bytes() == before
    regates = sorted((reports / "done").glob("regate-*.json"))
    assert len(regates) == 2
    data = json.loads(regates[-1].read_text(encoding="utf-8"))
    assert data["gates"]["policy_sha256"] == _sha(world["suite"] / "gates.yaml")
    assert data["report_sha256"] == hashlib.sha256(before).hexdigest()


# ---------------------------------------------------------------- training output_dir


def _preset_with(world: dict[str, Path], tmp_path: Path, output_dir: str) -> Path:
    preset = yaml.safe_load(world["preset"].read_text(encoding="utf-8"))
    preset["output_dir"] = output_dir
    path = tmp_path / "preset.yaml"
    path.write_text(yaml.safe_dump(preset), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["train", "pipeline"])
@pytest.mark.parametrize("shape", ["file", "under-a-file"])
def test_output_dir_that_is_a_file_is_refused_before_training(
    command: str, shape: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "candidates.txt"
    blocker.write_text("a file", encoding="utf-8")
    preset = _preset_with(world, tmp_path, str(blocker if shape == "file" else blocker / "sub"))
    argv = [command, str(preset)] + (["--reports-dir", str(tmp_path / "reports")] if command == "pipeline" else [])
    reject(argv, "output_dir", [tmp_path], monkeypatch)


def test_output_dir_flag_that_is_a_file_is_refused(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "out.txt"
    blocker.write_text("a file", encoding="utf-8")
    reject(["train", str(world["preset"]), "--output-dir", str(blocker)], "output_dir", [tmp_path], monkeypatch)


# ---------------------------------------------------------------- models


def _offline_errors() -> dict[str, Exception]:
    from huggingface_hub import errors

    return {
        "local-entry-not-found": errors.LocalEntryNotFoundError("offline and not in the cache"),
        "offline-mode": errors.OfflineModeIsEnabled("HF_HUB_OFFLINE=1"),
        "connection-error": ConnectionError("Failed to resolve 'huggingface.co'"),
        "timeout": TimeoutError("read timed out"),
    }


@pytest.mark.parametrize("error", ["local-entry-not-found", "offline-mode", "connection-error", "timeout"])
def test_allow_hub_while_offline_is_an_input_error(
    error: str, world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    exc = _offline_errors()[error]

    def offline(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    argv = ["eval", str(world["suite"]), "--model", "someone/some-model", "--allow-hub"]
    reject([*argv, "--reports-dir", str(tmp_path / "reports")], "unreachable", [tmp_path], monkeypatch)


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "{suite}", "--model", "{tmp}/no-such-model"],
        ["eval", "{suite}", "--model", "someone/some-model"],
        ["compare", "--suite", "{suite}", "--base", "{tmp}/no-such-model", "--adapter", "cand={adapter}"],
    ],
    ids=["eval-missing-folder", "eval-hub-id-without-allow-hub", "compare-missing-base"],
)
def test_a_model_that_is_not_there_is_refused(
    argv: list[str], world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    filled = [a.format(suite=world["suite"], tmp=tmp_path, adapter=world["adapter"]) for a in argv]
    reject([*filled, "--reports-dir", str(tmp_path / "reports")], "model", [tmp_path], monkeypatch)


# ---------------------------------------------------------------- personal data: line numbers, as the docs promise


def test_personal_data_problem_and_summary_name_the_lines(tmp_path: Path) -> None:
    from harness.training.hygiene import hygiene_summary
    from tests.test_hygiene import _chat, _report

    h = _report(
        tmp_path,
        [_chat("Tôi quên mật khẩu."), _chat("Đơn hàng chưa tới."), _chat("Mail tôi: lan.nguyen@example.com nhé.")],
    )
    what = h["problems"][0]["what"]
    assert "line 3 (email" in what and "lan.nguyen@example.com" not in what, what
    assert "line 3 (email" in hygiene_summary(h)
