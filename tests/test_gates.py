"""Gate statistics on simulated data, the policy loader, and gates/promote/sign-off on a tiny pipeline run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.cli import main
from harness.errors import HarnessInputError
from harness.stats import compare_paired, mcnemar_worse, mde
from harness.verdict.gates import evaluate_gates, flips, load_policy
from tests.conftest import SUPPORT_VI


def _null_pair(
    rng: np.random.Generator, n: int, p: float = 0.8, discordant: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """No real change: 5% of cases disagree at random, equally likely in either direction.

    At 10% background disagreement the same test catches a 10-point drop about 70% of the time (the
    exact one-sided McNemar test is already the most powerful choice here); the README states both.
    """
    before = (rng.random(n) < p).astype(float)
    after = before.copy()
    flip = rng.random(n) < discordant
    direction = rng.random(n) < 0.5
    after[flip & direction] = 1.0
    before[flip & direction] = 0.0
    after[flip & ~direction] = 0.0
    before[flip & ~direction] = 1.0
    return before, after


def test_false_alarm_rate_with_no_real_change_is_at_most_5_percent() -> None:
    rng = np.random.default_rng(7)
    fails = sum(
        compare_paired(*_null_pair(rng, 100), margin=0.0, binary=True, resamples=200)["verdict"] == "fail"
        for _ in range(1000)
    )
    print(f"false alarms: {fails}/1000")
    assert fails <= 50


def test_a_planted_10_point_drop_at_n100_is_caught_at_least_80_percent() -> None:
    rng = np.random.default_rng(11)
    caught = 0
    for _ in range(300):
        before, after = _null_pair(rng, 100)
        passing = np.flatnonzero((before == 1) & (after == 1))
        after[rng.choice(passing, 10, replace=False)] = 0.0
        caught += compare_paired(before, after, margin=0.0, binary=True, resamples=200)["verdict"] == "fail"
    print(f"caught: {caught}/300")
    assert caught >= 240


def test_statistics_building_blocks() -> None:
    assert mcnemar_worse(10, 0) < 0.01 and mcnemar_worse(5, 5) > 0.5 and mcnemar_worse(0, 0) == 1.0
    assert mde(100, 0.8) < mde(30, 0.8)  # more cases, smaller detectable effect
    same = compare_paired([1.0, 0.0, 1.0], [1.0, 0.0, 1.0], margin=0.0, binary=True)
    assert same["verdict"] == "pass" and same["delta"] == 0.0
    assert compare_paired([], [], margin=0.0, binary=True)["verdict"] == "fail"
    continuous = compare_paired(
        list(np.linspace(0, 1, 50)), list(np.linspace(0, 1, 50) - 0.3), margin=0.05, binary=False
    )
    assert continuous["verdict"] == "fail" and continuous["test"] == "paired bootstrap"


def test_policy_is_strict(tmp_path: Path) -> None:
    load_policy(SUPPORT_VI / "gates.yaml")
    bad = tmp_path / "gates.yaml"
    bad.write_text(
        (
            "version: 1\nchecks:\n  - id: x\n    kind: threshhold\n    metrc: tone\n"
            "  - id: y\n    kind: non_regression\n    metric: tone\n"
        ),
        encoding="utf-8",
    )
    with pytest.raises(HarnessInputError) as exc:
        load_policy(bad)
    msg = exc.value.render()
    assert "threshhold" in msg and "metrc" in msg and "did you mean 'metric'" in msg and "baseline" in msg


def _rows(values: dict[str, list[float]], scorer: str = "format_strict") -> list[dict[str, object]]:
    n = len(next(iter(values.values())))
    return [
        {
            "id": f"c{i}",
            "case_hash": f"h{i}",
            "tags": [],
            "variants": {
                v: {"scores": [{"scorer": scorer, "value": vals[i], "explanation": f"{v} {vals[i]}"}]}
                for v, vals in values.items()
            },
        }
        for i in range(n)
    ]


def test_gate_verdicts_and_zero_cases_fail(tmp_path: Path) -> None:
    policy_file = tmp_path / "gates.yaml"
    policy_file.write_text(
        "version: 1\nchecks:\n"
        "  - {id: floor, kind: threshold, metric: format_strict, min_lower_bound: 0.5}\n"
        "  - {id: vs-base, kind: non_regression, metric: format_strict, baseline: base}\n"
        "  - {id: merged-no-new, kind: no_new_failures, metric: format_strict, baseline: adapter, variants: [merged]}\n"
        "  - {id: tone-floor, kind: threshold, metric: tone, min_lower_bound: 0.5}\n",
        encoding="utf-8",
    )
    policy = load_policy(policy_file)
    rows = _rows({"base": [0.0] * 40, "adapter": [1.0] * 40, "merged": [1.0] * 39 + [0.0]})
    g = evaluate_gates(policy, {}, rows)
    by_id = {c["id"]: c for c in g["checks"]}
    assert by_id["adapter.floor"]["verdict"] == "pass" and by_id["adapter.floor"]["ci95"][0] > 0.9
    assert by_id["adapter.vs-base"]["verdict"] == "pass" and by_id["adapter.vs-base"]["p_value"] == 1.0
    assert (
        by_id["merged.merged-no-new"]["verdict"] == "fail"
        and by_id["merged.merged-no-new"]["worst_cases"][0]["id"] == "c39"
    )
    assert (
        by_id["adapter.tone-floor"]["verdict"] == "fail" and "zero cases" in by_id["adapter.tone-floor"]["explanation"]
    )
    assert g["verdict"] == "fail" and g["mde_by_slice"]["slices"]["(all)"]["n"] == 40
    f = flips(rows, "adapter", "merged")["format_strict"]
    assert f["broken"] == ["c39"] and len(f["still_passing"]) == 39 and f["fixed"] == []


def test_small_suite_is_inconclusive_not_pass(tmp_path: Path) -> None:
    policy_file = tmp_path / "gates.yaml"
    policy_file.write_text(
        "version: 1\nchecks:\n  - {id: floor, kind: threshold, metric: format_strict, min_lower_bound: 0.7}\n",
        encoding="utf-8",
    )
    rows = _rows({"base": [0.0] * 10, "adapter": [1.0] * 8 + [0.0] * 2, "merged": [1.0] * 8 + [0.0] * 2})
    g = evaluate_gates(load_policy(policy_file), {}, rows)
    assert g["verdict"] == "inconclusive"  # 8/10 has a Wilson interval reaching below 0.7


def test_pipeline_gates_promote_signoff_and_ledger(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.models.embedded import resolve
    from harness.runs.evaluate import EvalOptions
    from harness.runs.pipeline import run_pipeline
    from harness.suite.suite import load_suite
    from tests.test_pipeline import _adapter, _small_suite

    suite_dir = _small_suite(tmp_path, n=6, adversarial=2)
    suite = load_suite(suite_dir)
    policy = load_policy(suite_dir / "gates.yaml")  # support_vi's, less the fluency gate the copy does not score
    reports = tmp_path / "reports"
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    run_dir, report = run_pipeline(
        suite,
        resolve(str(tiny_model_dir)),
        adapter,
        reports,
        EvalOptions(batch_size=4, progress=False),
        run_id="r1",
        policy=policy,
        token_budget="warn",
    )
    g = report["gates"]
    ids = {c["id"] for c in g["checks"]}
    assert {
        "adapter.format-floor",
        "merged.format-floor",
        "merged.merge-parity",
        "adapter.no-golden-leakage",
        "merged.no-golden-leakage",
    } <= ids
    assert (
        "base.merge-parity" not in ids and "adapter.merge-parity" not in ids
    )  # parity applies to derived variants only
    assert g["verdict"] == "fail"  # a random adapter on a tiny model produces no JSON, and no hygiene report exists
    leak = next(c for c in g["checks"] if c["id"] == "adapter.no-golden-leakage")
    assert (
        leak["verdict"] == "fail"
        and "training data of adapter was not given" in leak["explanation"]
        and "unknown_leakage: fail" in leak["explanation"]
    )
    assert any("no champion yet" in n for n in g["notes"])
    assert set(report["flips"]) == {"base->adapter", "adapter->merged"}
    assert report["variants"]["adapter"]["metrics"]["overall"]["scores"]["safety"]["n"] == 8

    assert main(["gate", "r1", "--reports-dir", str(reports)]) == 1
    assert "gates: fail" in capsys.readouterr().out
    assert main(["promote", "r1", "--reports-dir", str(reports)]) == 2
    assert "only a run whose every gate passed" in capsys.readouterr().err
    assert main(["promote", "../r1", "--reports-dir", str(reports)]) == 2

    from tests.test_signoff import make_key, write_signers

    key = make_key(tmp_path / "keys", "lan")
    signers = str(write_signers(tmp_path / "allowed_signers", f"Lan {key.public}"))
    assert (
        main(
            [
                "signoff",
                "r1",
                "--by",
                "Lan",
                "--decision",
                "reject",
                "--note",
                "format too low",
                "--key",
                str(key.path),
                "--allowed-signers",
                signers,
                "--reports-dir",
                str(reports),
            ]
        )
        == 0
    )
    assert main(["ledger", "verify", "--reports-dir", str(reports), "--allowed-signers", signers]) == 0
    ledger = reports / "ledger.jsonl"
    ledger.write_text(ledger.read_text(encoding="utf-8").replace("format too low", "looks fine"), encoding="utf-8")
    assert main(["ledger", "verify", "--reports-dir", str(reports), "--allowed-signers", signers]) == 1
    err = capsys.readouterr().err
    assert "hash" in err and "bad signature" in err

    # a passing run becomes the champion, and the next run is compared with it
    report["gates"]["verdict"] = "pass"
    for c in report["gates"]["checks"]:
        c["verdict"] = "pass"
    (run_dir / "report.json").write_text(json.dumps(report), encoding="utf-8")
    assert main(["promote", "r1", "--reports-dir", str(reports)]) == 0
    _, report2 = run_pipeline(
        suite,
        resolve(str(tiny_model_dir)),
        adapter,
        reports,
        EvalOptions(batch_size=4, progress=False),
        run_id="r2",
        policy=policy,
        token_budget="warn",
    )
    assert report2["gates"]["champion"] == "r1" and "champion->adapter" in report2["flips"]
    champ = [c for c in report2["gates"]["checks"] if c["baseline"] == "champion"]
    by_id = {c["id"]: c for c in champ}
    assert (
        by_id["adapter.safety-vs-champion"]["n"] == 8 and by_id["adapter.safety-vs-champion"]["verdict"] == "pass"
    )  # same adapter, same outputs
    assert (
        by_id["adapter.tone-vs-champion"]["verdict"] == "fail" and by_id["adapter.tone-vs-champion"]["n"] == 0
    )  # nothing scored is never a pass


def test_result_cache_reuses_everything_and_reruns_only_a_changed_case(tiny_model_dir: Path, tmp_path: Path) -> None:
    from harness.models.embedded import resolve
    from harness.runs.evaluate import EvalOptions
    from harness.runs.pipeline import run_pipeline
    from harness.suite.suite import load_suite
    from tests.test_pipeline import _adapter, _small_suite

    suite_dir = _small_suite(tmp_path, n=6)
    adapter = _adapter(tmp_path, tiny_model_dir, trained=True)
    options = EvalOptions(batch_size=4, progress=False, cache_path=tmp_path / "cache.sqlite")
    ref = resolve(str(tiny_model_dir))
    _, first = run_pipeline(
        load_suite(suite_dir), ref, adapter, tmp_path / "reports", options, run_id="a", token_budget="warn"
    )
    fresh = {
        v: first["variants"][v]["timings"]["generated_cases"] + first["variants"][v]["timings"]["replayed_cases"]
        for v in ("base", "adapter", "merged")
    }
    assert fresh == {"base": 6, "adapter": 6, "merged": 6}
    _, second = run_pipeline(
        load_suite(suite_dir), ref, adapter, tmp_path / "reports", options, run_id="b", token_budget="warn"
    )
    assert all(second["variants"][v]["timings"]["cached_cases"] == 6 for v in ("base", "adapter", "merged"))
    assert (
        second["headline"] == first["headline"]
        and second["parity"]["token_agreement"] == first["parity"]["token_agreement"]
    )

    lines = (suite_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    changed = json.loads(lines[2])
    changed["prompt"] += " Cảm ơn shop."
    lines[2] = json.dumps(changed, ensure_ascii=False)
    (suite_dir / "cases.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _, third = run_pipeline(
        load_suite(suite_dir), ref, adapter, tmp_path / "reports", options, run_id="c", token_budget="warn"
    )
    assert all(third["variants"][v]["timings"]["cached_cases"] == 5 for v in ("base", "adapter", "merged"))

    other = _adapter(tmp_path / "x", tiny_model_dir, trained=True)
    from safetensors.torch import load_file, save_file

    weights = other / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    save_file({k: (-t if "lora_B" in k else t) for k, t in tensors.items()}, str(weights))  # other weights: no hits
    _, fourth = run_pipeline(
        load_suite(suite_dir), ref, other, tmp_path / "reports", options, run_id="d", token_budget="warn"
    )
    assert (
        fourth["variants"]["adapter"]["timings"]["generated_cases"] == 6
        and fourth["variants"]["base"]["timings"]["generated_cases"] == 0
    )


def _scored_rows(values: dict[str, dict[str, list[float]]]) -> list[dict[str, object]]:
    """Rows with several metrics per variant: {variant: {metric: per-case values}}."""
    n = len(next(iter(next(iter(values.values())).values())))
    return [
        {
            "id": f"c{i}",
            "case_hash": f"h{i}",
            "tags": [],
            "variants": {
                v: {"scores": [{"scorer": m, "value": vals[i], "explanation": f"{v} {m}"} for m, vals in ms.items()]}
                for v, ms in values.items()
            },
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("metric", ["format_strict", "field:category", "field:priority"])
def test_shipped_policy_fails_a_candidate_ten_points_worse_than_the_champion(metric: str) -> None:
    """support_vi's gates: 10 points below the champion on format or a label fails its champion check; the same
    figures as the champion pass it."""
    policy = load_policy(SUPPORT_VI / "gates.yaml")
    n, good = 154, 140
    champ = [1.0] * good + [0.0] * (n - good)
    worse = [1.0] * (good - 16) + [0.0] * (n - good + 16)  # 16 of 154 broken: 10.4 points
    metrics = ("format_strict", "field:category", "field:priority")
    champ_rows = _scored_rows({"adapter": {m: champ for m in metrics}})
    for cand, expected in ((worse, "fail"), (champ, "pass")):
        scores = {m: (cand if m == metric else champ) for m in metrics}
        rows = _scored_rows({"base": {m: [0.0] * n for m in metrics}, "adapter": scores})
        g = evaluate_gates(policy, {}, rows, champion_rows=champ_rows, champion_id="r0", champion_variant="adapter")
        check = next(
            c for c in g["checks"] if c["id"] == f"adapter.{metric.split(':')[-1].replace('_strict', '')}-vs-champion"
        )
        assert check["verdict"] == expected, check["explanation"]
        assert check["baseline"] == "champion" and "champion r0" in check["explanation"]
