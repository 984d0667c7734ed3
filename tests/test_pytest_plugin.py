"""The gate plugin under pytester: one item per check, readable failures, junit XML, bad policy."""

from __future__ import annotations

from pathlib import Path

import peft  # noqa: F401 - imported before pytester snapshots sys.modules: re-importing bitsandbytes fails
import pytest

from tests.conftest import REPO

pytest_plugins = ["pytester"]

POLICY = """version: 1
pipeline: {preset}
checks:
  - {{id: format-floor, kind: threshold, metric: format_strict, min_lower_bound: 0.5}}
  - {{id: merged-no-new-failures, kind: no_new_failures, metric: format_strict, baseline: adapter, variants: [merged]}}
  - {{id: safety-vs-champion, kind: no_new_failures, metric: safety, baseline: champion}}
  - {{id: merge-parity, kind: parity}}
  - {{id: retention, kind: retention, baseline: base, optional: true}}
"""


def _project(pytester: pytest.Pytester, tmp_path: Path, tiny_model_dir: Path) -> tuple[Path, Path]:
    from tests.test_pipeline import _adapter, _small_suite

    suite = _small_suite(tmp_path, n=4, references=False)
    (suite / "gates.yaml").write_text(POLICY.format(preset=REPO / "trainers/configs/demo.yaml"), encoding="utf-8")
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    return suite, adapter


def test_one_item_per_check_and_readable_failures(
    pytester: pytest.Pytester, tmp_path: Path, tiny_model_dir: Path
) -> None:
    suite, adapter = _project(pytester, tmp_path, tiny_model_dir)
    junit = tmp_path / "gates.xml"
    result = pytester.runpytest_subprocess(
        str(suite),
        "--harness-adapter",
        str(adapter),
        "--harness-model",
        str(tiny_model_dir),
        "--harness-reports-dir",
        str(tmp_path / "reports"),
        "--harness-no-cache",
        f"--junitxml={junit}",
        "-p",
        "no:cacheprovider",
        "-rs",
    )
    # a random tiny adapter writes no JSON: the floor fails on both variants; merged matches adapter;
    # parity holds; no champion yet
    result.assert_outcomes(
        failed=2, passed=2, skipped=4
    )  # 2 champion checks (no champion yet), 2 optional retention checks (not run)
    out = result.stdout.str()
    assert "gate adapter.format-floor: FAIL" in out and "Wilson interval" in out and "worst case" in out
    assert "no champion yet" in out and "gates fail" in out
    xml = junit.read_text(encoding="utf-8")
    assert xml.count("<testcase") == 8 and "merge-parity" in xml
    assert "capability retention was not run" in out
    assert result.ret == 1


def test_bad_policy_is_a_collection_error_naming_the_key(
    pytester: pytest.Pytester, tmp_path: Path, tiny_model_dir: Path
) -> None:
    suite, _ = _project(pytester, tmp_path, tiny_model_dir)
    (suite / "gates.yaml").write_text(
        "version: 1\nchecks:\n  - {id: x, kind: threshold, metrik: tone, min_lower_bound: 0.5}\n", encoding="utf-8"
    )
    result = pytester.runpytest_subprocess(str(suite), "-p", "no:cacheprovider")
    assert result.ret == 2
    out = result.stdout.str()
    assert "metrik" in out and "did you mean 'metric'" in out and "Traceback" not in out
