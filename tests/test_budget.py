"""Suite token budget: references that cannot fit max_new_tokens are caught by `check` and before a pipeline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.cli import main
from harness.errors import HarnessInputError
from harness.models.embedded import ModelRef, resolve
from harness.suite.budget import check_budget, measure, reference_text
from harness.suite.suite import load_suite
from tests.conftest import SUPPORT_VI

SCHEMA = {
    "type": "object",
    "properties": {"category": {"enum": ["billing", "shipping"]}, "answer": {"type": "string"}},
    "required": ["category", "answer"],
}
LONG = {"category": "billing", "answer": "Mình rất tiếc vì bạn bị trừ tiền hai lần. Bạn vui lòng gửi ảnh sao kê."}
SHORT = {"category": "shipping", "answer": "Mình sẽ kiểm tra đơn hàng ngay."}


def _suite(tmp_path: Path, max_new: int, references: bool = True, stop_at_json_end: bool = True) -> Path:
    """A two-case suite written from scratch, with or without reference answers."""
    import yaml

    root = tmp_path / f"suite-{max_new}-{references}-{stop_at_json_end}"
    root.mkdir()
    (root / "schema.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    cases = []
    for i, ref in enumerate((LONG, SHORT)):
        case: dict[str, Any] = {"id": f"case-{i}", "prompt": "Xin chào", "expected": {"category": ref["category"]}}
        if references:
            case["reference"] = ref
        cases.append(json.dumps(case, ensure_ascii=False) + "\n")
    (root / "cases.jsonl").write_text("".join(cases), encoding="utf-8")
    suite = {
        "name": "budget",
        "version": "1",
        "contract": "schema.json",
        "cases": "cases.jsonl",
        "labels": ["category"],
        "generation": {"max_new_tokens": max_new, "stop_at_json_end": stop_at_json_end},
    }
    (root / "suite.yaml").write_text(yaml.safe_dump(suite, allow_unicode=True), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def tiny_ref(tiny_model_dir: Path) -> ModelRef:
    return resolve(str(tiny_model_dir))


@pytest.fixture(scope="module")
def long_tokens(tokenizer: Any) -> int:
    """Tokens of the longer reference as a model writes it (the JSON form of the training targets)."""
    return len(tokenizer(json.dumps(LONG, ensure_ascii=False), add_special_tokens=False)["input_ids"])


def _check(suite: Path, model: Path | str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check", str(suite), "--model", str(model)])
    out, err = capsys.readouterr()
    return code, out, err


def test_reference_text_is_the_json_a_model_writes() -> None:
    assert reference_text(SHORT) == '{"category": "shipping", "answer": "Mình sẽ kiểm tra đơn hàng ngay."}'
    assert reference_text("plain answer") == "plain answer"


def test_references_that_fit(
    tmp_path: Path, tiny_model_dir: Path, long_tokens: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _check(_suite(tmp_path, long_tokens * 2), tiny_model_dir, capsys)
    assert code == 0
    assert "2 references measured" in out and "0 do not fit, 0 within 10%" in out
    assert "error:" not in out and "warning:" not in out


def test_reference_within_ten_percent_warns(
    tmp_path: Path, tiny_model_dir: Path, tiny_ref: ModelRef, long_tokens: int, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = _suite(tmp_path, long_tokens)  # exactly fits: no room to spare
    report = check_budget(load_suite(suite), tiny_ref.path, tiny_ref.spec)
    assert [(c.case_id, c.tokens, c.level) for c in report.findings] == [("case-0", long_tokens, "warning")]
    assert report.max == long_tokens and report.cases[0].case_id == "case-0"  # most tokens first
    code, out, _ = _check(suite, tiny_model_dir, capsys)
    assert code == 0 and f"warning: case-0: reference needs {long_tokens} of {long_tokens} tokens" in out


def test_reference_that_does_not_fit_fails_check(
    tmp_path: Path, tiny_model_dir: Path, long_tokens: int, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _check(_suite(tmp_path, long_tokens - 1), tiny_model_dir, capsys)
    assert code == 1
    assert f"error: case-0: reference needs {long_tokens} of {long_tokens - 1} tokens (does not fit)" in out
    assert f"raise generation.max_new_tokens in suite.yaml to at least {long_tokens}" in out


def test_eos_counts_when_only_eos_ends_the_answer(tmp_path: Path, tiny_ref: ModelRef, long_tokens: int) -> None:
    report = check_budget(
        load_suite(_suite(tmp_path, long_tokens, stop_at_json_end=False)), tiny_ref.path, tiny_ref.spec
    )
    assert [(c.case_id, c.tokens, c.level) for c in report.errors] == [("case-0", long_tokens + 1, "error")]


def test_suite_without_references_is_not_applicable(
    tmp_path: Path, tiny_model_dir: Path, tiny_ref: ModelRef, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = _suite(tmp_path, 4, references=False)
    report = check_budget(load_suite(suite), tiny_ref.path, tiny_ref.spec)
    assert report.cases == () and report.not_measured == 2 and report.median is None
    code, out, _ = _check(suite, tiny_model_dir, capsys)
    assert code == 0 and "not applicable: no reference answers (2 cases not measured)" in out


def test_check_without_model_is_unchanged(tmp_path: Path, long_tokens: int, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(_suite(tmp_path, long_tokens - 1))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: budget v1: 2 cases") and "token budget" not in out


@pytest.mark.parametrize("model", ["no-such-model", "missing/folder", "not-a-model"])
def test_bad_model_exits_2_naming_the_flag(tmp_path: Path, model: str, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not-a-model").mkdir()
    arg = str(tmp_path / model) if model != "no-such-model" else model
    code, out, err = _check(_suite(tmp_path, 40), arg, capsys)
    assert code == 2 and out == ""
    assert err.startswith(f"harness: error: --model {arg}: ") and "fix:" in err and "Traceback" not in err
    assert err.count("\n") == 1


def test_model_folder_without_tokenizer_exits_2(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    code, _, err = _check(_suite(tmp_path, 40), folder, capsys)
    assert code == 2 and f"--model {folder}" in err and "tokenizer" in err and "Traceback" not in err


def _adapter(tmp_path: Path, tiny_model_dir: Path) -> Path:
    from tests.test_pipeline import _adapter as make_adapter

    return make_adapter(tmp_path, tiny_model_dir, trained=False)


def test_pipeline_stops_before_generation(
    tmp_path: Path, tiny_model_dir: Path, tiny_ref: ModelRef, long_tokens: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.runs.pipeline as pipeline
    from harness.runs.evaluate import EvalOptions

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("generation started")

    monkeypatch.setattr(pipeline, "run_variants", no_generation)
    suite = load_suite(_suite(tmp_path, long_tokens - 1))
    adapter = _adapter(tmp_path, tiny_model_dir)
    with pytest.raises(HarnessInputError) as exc:
        pipeline.run_pipeline(suite, tiny_ref, adapter, tmp_path / "reports", EvalOptions(progress=False))
    text = exc.value.render()
    assert str(suite.path / "suite.yaml") in text and f"case-0 ({long_tokens} tokens)" in text
    assert f"raise generation.max_new_tokens in suite.yaml to at least {long_tokens}, or shorten" in text
    assert not (tmp_path / "reports").exists()


def test_pipeline_prints_warnings_and_runs(
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_ref: ModelRef,
    long_tokens: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import harness.runs.pipeline as pipeline
    from harness.runs.evaluate import EvalOptions

    monkeypatch.setattr(pipeline, "run_variants", lambda *args, **kwargs: ("ran", {}))
    suite = load_suite(_suite(tmp_path, long_tokens))
    adapter = _adapter(tmp_path, tiny_model_dir)
    assert pipeline.run_pipeline(suite, tiny_ref, adapter, tmp_path / "r", EvalOptions(progress=False))[0] == "ran"
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("harness:")]
    assert err == [
        f"harness: token budget: warning: case-0: reference needs {long_tokens} of {long_tokens} tokens "
        "(fits with under 10% to spare)",
        f"harness: token budget: 0 references do not fit and 1 fit with under 10% to spare in max_new_tokens "
        f"{long_tokens} ({suite.path / 'suite.yaml'})",
    ]


@pytest.mark.slow
def test_support_vi_references_fit_the_embedded_tokenizer(embedded_dir: Path) -> None:
    """The shipped suite must not ask for references its own decode budget cuts off (numbers change with edits)."""
    from harness.models.embedded import DEFAULT_MODEL

    ref = resolve(DEFAULT_MODEL)
    report = check_budget(load_suite(SUPPORT_VI), ref.path, ref.spec)
    assert report.cases, "support_vi has reference answers to measure"
    assert not report.errors, report.render()


def test_measure_takes_any_tokenizer(tmp_path: Path, tokenizer: Any, long_tokens: int) -> None:
    report = measure(load_suite(_suite(tmp_path, long_tokens * 2)), tokenizer, "fixture")
    assert [c.case_id for c in report.cases] == ["case-0", "case-1"] and report.median is not None


def test_embedded_model_not_pulled_exits_2_without_downloading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "empty-cache"))
    code, out, err = _check(_suite(tmp_path, 40), "smollm2-135m-instruct", capsys)
    assert code == 2 and out == ""
    assert "--model smollm2-135m-instruct: the embedded model is not provisioned yet" in err
    assert "harness models pull smollm2-135m-instruct" in err
