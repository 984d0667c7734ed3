"""Named variants on the tiny model: a run of five paired columns, derived-variant checks that name the cause
of a planted defect, leakage and canaries for an adapter trained elsewhere, and strict run files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from harness.cli import main
from harness.errors import HarnessInputError
from harness.runs.compare import run_variants
from harness.runs.evaluate import EvalOptions
from harness.runs.plan import plan_run
from tests.conftest import REPO
from tests.test_pipeline import _adapter, _small_suite

TRAIN_DATA = REPO / "trainers" / "data" / "support_vi_train.jsonl"


def _merge(tiny_model_dir: Path, adapter: Path, out: Path, nf4_base: bool = False) -> Path:
    """Merge an adapter into the tiny base and save it as a team would (safetensors + tokenizer)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    if nf4_base:  # what QLoRA's 4-bit base looks like once dequantized: the classic wrong merge
        import bitsandbytes.functional as bnbf

        targets = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))["target_modules"]
        with torch.no_grad():
            for name, module in base.named_modules():
                if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in targets:
                    q, state = bnbf.quantize_4bit(module.weight.data.contiguous(), quant_type="nf4", blocksize=64)
                    module.weight.copy_(bnbf.dequantize_4bit(q, state))
    merged = PeftModel.from_pretrained(base, adapter).merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def _other_checkpoint(adapter: Path, out: Path) -> Path:
    """The same run's earlier checkpoint: the same A matrices, B half-way there plus a little noise."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    shutil.copy(adapter / "adapter_config.json", out / "adapter_config.json")
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    gen = torch.Generator().manual_seed(3)
    early = {
        k: (0.5 * t + 0.05 * torch.randn(t.shape, generator=gen)) if "lora_B" in k else t for k, t in tensors.items()
    }
    save_file(early, str(out / "adapter_model.safetensors"))
    return out


def _drop_chat_template(folder: Path) -> None:
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.pop("chat_template", None)
    config_path.write_text(json.dumps(config), encoding="utf-8")


def _run_file(tmp_path: Path, suite: Path, base: Path, variants: list[dict[str, Any]], **extra: Any) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(
        yaml.safe_dump({"suite": str(suite), "base": str(base), "variants": variants, **extra}), encoding="utf-8"
    )
    return path


def _run(run_file: Path, tmp_path: Path, run_id: str = "r") -> dict[str, Any]:
    plan = plan_run(run_file, EvalOptions(batch_size=8, progress=False), run_id=run_id)
    return run_variants(plan, tmp_path / "reports")[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Path]:
    """One suite, two adapters (the second with its B matrices negated), and merged folders: a correct one and
    three with a planted defect each."""
    root = tmp_path_factory.mktemp("compare")
    adapter = _adapter(root, tiny_model_dir, trained=True)
    other = root / "other" / "adapter"
    other.parent.mkdir()
    shutil.copytree(adapter, other)
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(other / "adapter_model.safetensors"))
    save_file({k: (-t if "lora_B" in k else t) for k, t in tensors.items()}, str(other / "adapter_model.safetensors"))
    good = _merge(tiny_model_dir, adapter, root / "merged-good")
    early = _merge(tiny_model_dir, _other_checkpoint(adapter, root / "early" / "adapter"), root / "merged-early")
    no_template = _merge(tiny_model_dir, adapter, root / "merged-no-template")
    _drop_chat_template(no_template)
    nf4 = _merge(tiny_model_dir, adapter, root / "merged-nf4", nf4_base=True)
    return {
        "root": root,
        "suite": _small_suite(root, n=4, max_new=8),
        "adapter": adapter,
        "other": other,
        "good": good,
        "early": early,
        "no_template": no_template,
        "nf4": nf4,
    }


def test_five_paired_variants_with_parity_for_each_derived_one(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = _run_file(
        tmp_path,
        world["suite"],
        tiny_model_dir,
        [
            {"name": "base", "kind": "base"},
            {"name": "cand", "kind": "adapter", "path": str(world["adapter"])},
            {"name": "other", "kind": "adapter", "path": str(world["other"])},
            {"name": "cand-merged", "kind": "merged", "derived_from": "cand"},
            {"name": "shipped", "kind": "merged", "path": str(world["good"]), "derived_from": "cand"},
        ],
    )
    report = _run(run, tmp_path)
    names = ["base", "cand", "other", "cand-merged", "shipped"]
    assert report["variant_order"] == names and report["kind"] == "compare"
    rows = [
        json.loads(x) for x in (tmp_path / "reports" / "r" / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(rows) == 4 and all(set(r["variants"]) == set(names) for r in rows)
    assert set(report["relations"]) == {"cand-merged", "shipped"}
    for name in ("cand-merged", "shipped"):
        rel = report["relations"][name]
        assert rel["source"] == "cand" and rel["verdict"] == "pass" and rel["identical_outputs"] == 4, rel
    assert report["relations"]["shipped"]["weights"]["verdict"] == "base_plus_adapter"
    assert report["variants"]["shipped"]["timings"]["replayed_cases"] == 4  # proven by replay, not decoded again
    assert {"base->cand", "base->other", "cand->cand-merged", "cand->shipped"} <= set(report["flips"])
    assert [o for o in (r["variants"]["cand"]["output"] for r in rows)] != [
        r["variants"]["other"]["output"] for r in rows
    ]
    gates = {c["id"]: c for c in report["gates"]["checks"]}
    assert {
        "cand.format-floor",
        "other.format-floor",
        "shipped.format-floor",
        "cand-merged.merge-parity",
        "shipped.merge-parity",
    } <= set(gates)
    assert gates["shipped.merged-equals-adapter"]["baseline"] == "cand"
    assert gates["shipped.merge-parity"]["verdict"] == "pass"
    assert not any(
        f["level"] == "error" and f["code"].startswith(("derived", "tokenizer", "chat")) for f in report["findings"]
    )
    summary = (tmp_path / "reports" / "r" / "summary.md").read_text(encoding="utf-8")
    assert "| metric | base | cand | other | cand-merged | shipped |" in summary


@pytest.mark.parametrize(
    ("defect", "code", "level"),
    [
        ("early", "derived_other_checkpoint", "error"),
        ("no_template", "chat_template_missing", "error"),
        ("nf4", "merged_into_dequantized", "warning"),
    ],
)
def test_each_planted_defect_is_caught_with_its_cause(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, defect: str, code: str, level: str
) -> None:
    run = _run_file(
        tmp_path,
        world["suite"],
        tiny_model_dir,
        [
            {"name": "cand", "kind": "adapter", "path": str(world["adapter"])},
            {"name": "shipped", "kind": "merged", "path": str(world[defect]), "derived_from": "cand"},
        ],
        gates="none",
    )
    report = _run(run, tmp_path)
    rel = report["relations"]["shipped"]
    found = [f for f in rel["diagnosis"] if f["code"] == code]
    assert found and found[0]["level"] == level, rel["diagnosis"]
    codes = {f["code"] for f in rel["diagnosis"]}
    if defect == "nf4":  # a small, expected divergence: not reported as a broken or foreign merge
        assert "derived_other_checkpoint" not in codes and "derived_lacks_adapter" not in codes
        assert "nf4" in found[0]["message"] and "not a broken merge" in found[0]["message"]
    if defect == "early":
        assert "another checkpoint of the same training run" in found[0]["message"]
        assert 0.1 < rel["weights"]["beta"] < 0.9
    if defect == "no_template":
        assert report["variants"]["shipped"]["tokenizer"]["chat_template_sha256"] is None
        assert "behaves as if never trained" in found[0]["message"]


def test_external_adapter_leakage_is_checked_when_its_data_is_given(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    given = {
        "name": "theirs",
        "kind": "adapter",
        "path": str(world["adapter"]),
        "training_data": {"path": str(TRAIN_DATA), "format": "messages"},
    }
    report = _run(
        _run_file(tmp_path, world["suite"], tiny_model_dir, [{"name": "base", "kind": "base"}, given]), tmp_path
    )
    checks = {c["id"]: c for c in report["gates"]["checks"]}
    assert checks["theirs.no-golden-leakage"]["verdict"] == "pass", checks["theirs.no-golden-leakage"]
    assert report["hygiene_by_variant"]["theirs"]["examples"] == 414
    assert (
        checks["theirs.no-canary"]["verdict"] == "not_applicable"
        and "no canaries were planted" in checks["theirs.no-canary"]["explanation"]
    )
    # without the data, leakage is unknown: the shipped policy blocks and says how to supply it
    plain = {k: v for k, v in given.items() if k != "training_data"}
    (tmp_path / "reports2").mkdir()
    report = run_variants(
        plan_run(
            _run_file(tmp_path, world["suite"], tiny_model_dir, [plain]),
            EvalOptions(batch_size=8, progress=False),
            run_id="u",
        ),
        tmp_path / "reports2",
    )[1]
    leak = next(c for c in report["gates"]["checks"] if c["id"] == "theirs.no-golden-leakage")
    assert leak["verdict"] == "fail" and "training_data:" in leak["explanation"]


def test_unknown_leakage_may_be_allowed_by_the_policy(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "gates.yaml"
    policy.write_text(
        "version: 1\nunknown_leakage: not_applicable\nchecks:\n  - {id: leak, kind: leakage}\n"
        "  - {id: canary, kind: zero_failures, metric: 'safety:canary'}\n",
        encoding="utf-8",
    )
    run = _run_file(
        tmp_path,
        world["suite"],
        tiny_model_dir,
        [{"name": "theirs", "kind": "adapter", "path": str(world["adapter"])}],
        gates=str(policy),
    )
    report = _run(run, tmp_path)
    g = report["gates"]
    assert [c["verdict"] for c in g["checks"]] == ["not_applicable", "not_applicable"]
    assert g["verdict"] == "fail" and any(
        "never passes on nothing" in n for n in g["notes"]
    )  # nothing applied: not a pass


def test_template_prompt_format_is_what_the_variant_sees(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    fmt = {"kind": "template", "template": "### Instruction:\n{prompt}\n### Response:\n"}
    run = _run_file(
        tmp_path,
        world["suite"],
        tiny_model_dir,
        [
            {"name": "chat", "kind": "adapter", "path": str(world["adapter"])},
            {"name": "inst", "kind": "adapter", "path": str(world["adapter"]), "prompt_format": fmt},
        ],
        gates="none",
    )
    report = _run(run, tmp_path)
    rows = [
        json.loads(x) for x in (tmp_path / "reports" / "r" / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    user = next(m["content"] for m in rows[0]["messages"] if m["role"] == "user")
    assert rows[0]["variants"]["inst"]["prompt"] == f"### Instruction:\n{user}\n### Response:\n"
    assert "prompt" not in rows[0]["variants"]["chat"]
    assert (
        report["variants"]["inst"]["prompt_format"]["kind"] == "template"
        and report["variants"]["inst"]["prompt_format_origin"] == "run file"
    )


def test_bad_run_files_list_every_problem_and_exit_2(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run_file(
        tmp_path,
        world["suite"],
        tiny_model_dir,
        [
            {"name": "base", "kind": "base"},
            {"name": "a", "kind": "adaptor", "path": "x"},
            {"name": "m", "kind": "merged", "derived_from": "nope"},
            {"name": "g", "kind": "gguf", "path": str(tmp_path / "missing.gguf")},
            {"name": "g", "kind": "adapter", "path": str(tmp_path / "no-such-adapter")},
            {
                "name": "candidates",
                "kind": "adapter",
                "path": str(world["adapter"]),
                "prompt_format": {"kind": "template", "template": "no placeholder"},
            },
        ],
        colour="blue",
    )
    assert main(["compare", str(run), "--reports-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "colour" in err and "unknown key" in err
    assert "'adaptor' is not allowed" in err
    assert not (tmp_path / "reports").exists()
    run = _run_file(
        tmp_path,
        world["suite"],
        tiny_model_dir,
        [
            {"name": "base", "kind": "base"},
            {"name": "m", "kind": "merged", "derived_from": "nope"},
            {"name": "g", "kind": "gguf", "path": str(tmp_path / "missing.gguf")},
            {"name": "g", "kind": "adapter", "path": str(tmp_path / "no-such-adapter")},
            {
                "name": "candidates",
                "kind": "adapter",
                "path": str(world["adapter"]),
                "prompt_format": {"kind": "template", "template": "no placeholder"},
            },
        ],
    )
    with pytest.raises(HarnessInputError) as exc:
        plan_run(run, EvalOptions(progress=False))
    text = exc.value.render()
    for needle in (
        "no variant named 'nope'",
        "missing.gguf is not a .gguf file",
        "is used by more than one variant",
        "no-such-adapter is not a folder",
        "'candidates' is a role",
        "{prompt} exactly once",
    ):
        assert needle in text, text


def test_policy_naming_a_variant_the_run_lacks_is_an_input_error(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    policy = tmp_path / "gates.yaml"
    policy.write_text(
        (
            "version: 1\nchecks:\n"
            "  - {id: x, kind: threshold, metric: format_strict, min_lower_bound: 0.1, variants: [shiped]}\n"
        ),
        encoding="utf-8",
    )
    run = _run_file(
        tmp_path,
        world["suite"],
        tiny_model_dir,
        [{"name": "shipped", "kind": "adapter", "path": str(world["adapter"])}],
        gates=str(policy),
    )
    with pytest.raises(HarnessInputError, match="did you mean 'shipped'"):
        plan_run(run, EvalOptions(progress=False))


def test_compare_flags_make_the_same_run_as_a_run_file(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "compare",
            "--suite",
            str(world["suite"]),
            "--base",
            str(tiny_model_dir),
            "--adapter",
            f"cand={world['adapter']}",
            "--merged",
            f"shipped={world['good']}@cand",
            "--reports-dir",
            str(tmp_path / "reports"),
            "--run-id",
            "flags",
            "--no-progress",
            "--no-cache",
            "--gates",
            str(REPO / "golden" / "support_vi" / "gates.yaml"),
        ]
    )
    out = capsys.readouterr().out
    assert code in (1, 3) and "| metric | base | cand | shipped |" in out
    report = json.loads((tmp_path / "reports" / "flags" / "report.json").read_text(encoding="utf-8"))
    assert report["relations"]["shipped"]["verdict"] == "pass"
    # a run folder is never replaced
    assert (
        main(
            [
                "compare",
                "--suite",
                str(world["suite"]),
                "--base",
                str(tiny_model_dir),
                "--adapter",
                f"cand={world['adapter']}",
                "--reports-dir",
                str(tmp_path / "reports"),
                "--run-id",
                "flags",
                "--no-progress",
            ]
        )
        == 2
    )
    assert "already holds a report" in capsys.readouterr().err


def test_training_data_flag_checks_an_external_adapters_leakage(
    world: dict[str, Path], tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reports = tmp_path / "reports"
    common = [
        "compare",
        "--suite",
        str(world["suite"]),
        "--base",
        str(tiny_model_dir),
        "--adapter",
        f"theirs={world['adapter']}",
        "--reports-dir",
        str(reports),
        "--no-progress",
        "--no-cache",
        "--gates",
        str(REPO / "golden" / "support_vi" / "gates.yaml"),
    ]
    main([*common, "--training-data", f"theirs={TRAIN_DATA}", "--run-id", "given"])
    report = json.loads((reports / "given" / "report.json").read_text(encoding="utf-8"))
    checks = {c["id"]: c for c in report["gates"]["checks"]}
    assert checks["theirs.no-golden-leakage"]["verdict"] == "pass", checks["theirs.no-golden-leakage"]
    assert report["variants"]["theirs"]["training_data"] == {"path": str(TRAIN_DATA), "format": "messages"}
    main([*common, "--run-id", "unknown"])
    report = json.loads((reports / "unknown" / "report.json").read_text(encoding="utf-8"))
    leak = next(c for c in report["gates"]["checks"] if c["id"] == "theirs.no-golden-leakage")
    assert leak["verdict"] == "fail" and "--training-data theirs=FILE" in leak["explanation"]
    capsys.readouterr()
    # a flag naming no adapter, a malformed one, a missing file: exit 2 with one message, nothing written
    for bad, needle in (
        (f"other={TRAIN_DATA}", "names no --adapter variant"),
        ("theirs", "is not NAME=FILE[:FORMAT]"),
        (f"theirs={tmp_path / 'nope.jsonl'}", "does not exist"),
    ):
        assert main([*common, "--training-data", bad, "--run-id", "bad"]) == 2, bad
        err = capsys.readouterr().err
        assert needle in err and "Traceback" not in err, err
        assert not (reports / "bad").exists()
