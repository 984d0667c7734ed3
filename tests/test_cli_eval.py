"""End to end on the tiny model: the CLI writes a complete, versioned report; bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import SUPPORT_VI


def _suite_with_limit(tmp_path: Path, n: int) -> Path:
    import shutil

    dst = tmp_path / "suite"
    shutil.copytree(SUPPORT_VI, dst)
    (dst / "suite.yaml").write_text(
        (dst / "suite.yaml").read_text(encoding="utf-8").replace("max_new_tokens: 112", "max_new_tokens: 12"),
        encoding="utf-8",
    )
    return dst


def test_eval_writes_report(tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = _suite_with_limit(tmp_path, 12)
    reports = tmp_path / "reports"
    code = main(
        [
            "eval",
            str(suite),
            "--model",
            str(tiny_model_dir),
            "--reports-dir",
            str(reports),
            "--run-id",
            "r1",
            "--limit",
            "12",
            "--batch-size",
            "5",
            "--no-progress",
            "--no-cache",
        ]
    )
    assert code == 0
    run = reports / "r1"
    report = json.loads((run / "report.json").read_text(encoding="utf-8"))
    assert report["schema_version"] == 1 and report["kind"] == "eval"
    assert report["suite"]["name"] == "support_vi" and len(report["suite"]["content_hash"]) == 64
    assert len(report["model"]["weights_sha256"]) == 64
    assert report["generation"]["max_new_tokens"] == 12
    overall = report["metrics"]["overall"]
    assert overall["n_cases"] == 12 and overall["format_strict"]["n"] == 12
    assert sum(overall["failures"].values()) == 12 - overall["format_strict"]["passed"]
    assert set(overall["fields"]) == {"category", "priority"}
    assert "category=billing" in report["metrics"]["slices"]
    assert report["environment"]["packages"]["torch"].startswith("2.13.0")
    records = [json.loads(line) for line in (run / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(records) == 12
    assert {s["scorer"] for s in records[0]["scores"]} >= {
        "format_strict",
        "format_lenient",
        "field:category",
        "field:priority",
        "safety",
        "safety:pii",
        "safety:injection",
    }
    assert all(s["explanation"] for r in records for s in r["scores"])
    assert (run / "summary.md").read_text(encoding="utf-8").startswith("# support_vi")
    assert not list(run.glob(".*.tmp"))
    assert "report:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["eval", str(SUPPORT_VI), "--model", "/no/such/model"], "not found"),
        (["eval", str(SUPPORT_VI), "--model", "org/some-model"], "--allow-hub"),
        (["eval", "golden/nope"], "no such suite folder"),
    ],
)
def test_eval_bad_input_exits_2(argv: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") <= 3


def test_model_folder_without_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    assert main(["eval", str(SUPPORT_VI), "--model", str(tmp_path)]) == 2
    assert "no *.safetensors" in capsys.readouterr().err


def test_bad_option_value_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["eval", str(SUPPORT_VI), "--batch-size", "0"])
    assert info.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_cli_batch_default_is_the_runner_default() -> None:
    """The CLI keeps its own copy of the default (its --help imports no torch); the two must agree."""
    from harness.cli import GENERATION_BATCH
    from harness.runs.evaluate import EvalOptions

    assert GENERATION_BATCH == EvalOptions.batch_size
