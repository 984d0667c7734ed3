"""The fluency scorer: scrambled replies fail, fluent ones pass, short or missing ones are unscored; the block is
checked at load; `harness check --fluency` calibrates. Fast tests use a fake log-prob or the tiny model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessInputError
from harness.models.embedded import DEFAULT_MODEL
from harness.scoring import fluency
from harness.scoring.extract import extract_json
from harness.scoring.fluency import (
    CALIBRATION_SALT,
    METRIC,
    ScoringModel,
    calibrate,
    coherence,
    fluency_scorer,
    resolve_scoring_model,
    shuffles,
)
from harness.scoring.registry import SCORERS, build_scorers, flip_metrics, headline_metrics
from harness.scoring.score import Score
from harness.suite.suite import FLUENCY_DEFAULTS, Suite, load_suite
from tests.conftest import SUPPORT_VI

FLUENT = "Mình rất tiếc vì đơn hàng bị giao chậm. Bạn vui lòng gửi mã đơn để mình kiểm tra ngay."
IDENTITY = {"name": "fake", "path": "/nowhere"}


class FakeLogProb:
    """lp -1 for a text in `fluent`, -2 for anything else; counts calls (one per case is the contract)."""

    def __init__(self, fluent: Sequence[str] = (FLUENT,)) -> None:
        self.fluent = set(fluent)
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, context: str, texts: Sequence[str]) -> list[float]:
        self.calls.append((context, list(texts)))
        return [-1.0 if t in self.fluent else -2.0 for t in texts]


def _suite(tmp_path: Path, extra: str) -> Suite:
    """support_vi with its scorers/fluency lines replaced by `extra`."""
    dst = tmp_path / "suite"
    dst.mkdir()
    for f in SUPPORT_VI.iterdir():
        if f.is_file():
            (dst / f.name).write_bytes(f.read_bytes())
    text = (SUPPORT_VI / "suite.yaml").read_text(encoding="utf-8").split("\nscorers:")[0]
    (dst / "suite.yaml").write_text(text + "\n" + extra, encoding="utf-8")
    return load_suite(dst)


def _problems(tmp_path: Path, extra: str) -> str:
    with pytest.raises(HarnessInputError) as info:
        _suite(tmp_path, extra)
    return info.value.render()


def _score(answer: object, fake: FakeLogProb, settings: dict[str, object] | None = None) -> Score:
    suite = load_suite(SUPPORT_VI)
    text = json.dumps({"category": "shipping", "priority": "low", "answer": answer}, ensure_ascii=False)
    fn = fluency_scorer({**FLUENCY_DEFAULTS, **(settings or {})}, ScoringModel(fake, IDENTITY))
    (score,) = fn(text, extract_json(text), suite.cases[0], suite)
    return score


# --- scoring ----------------------------------------------------------------------------------------------


def test_a_fluent_reply_passes_in_one_call_with_its_shuffles() -> None:
    fake = FakeLogProb()
    score = _score(FLUENT, fake)
    assert score.scorer == METRIC == "fluency" and score.value == 1.0 and score.passed
    assert score.details["coherence"] == 1.0 and score.details["lp"] == -1.0 and score.details["lp_shuffled"] == -2.0
    assert score.details["model"] == IDENTITY
    assert "coherence 1.00 >= 0.25" in score.explanation
    ((context, texts),) = fake.calls  # one call per case: the reply and its 2 shuffles, batched
    assert context.startswith("Customer: ") and context.endswith("\nSupport: ") and len(texts) == 3
    assert texts[0] == FLUENT and sorted(texts[1].split()) == sorted(FLUENT.split())


def test_a_scrambled_reply_fails_and_says_why() -> None:
    scrambled = shuffles(FLUENT, 1, "x")[0]
    score = _score(scrambled, FakeLogProb())
    assert score.value == 0.0 and score.passed is False
    assert "word order barely matters to the scoring model: coherence 0.00 < 0.25" in score.explanation
    assert "reads as scrambled" in score.explanation


def test_threshold_and_shuffles_come_from_the_settings() -> None:
    fake = FakeLogProb()
    score = _score(FLUENT, fake, {"min_coherence": 1.5, "shuffles": 4})
    assert score.value == 0.0 and "coherence 1.00 < 1.50" in score.explanation and len(fake.calls[0][1]) == 5


def test_short_missing_and_unparsed_replies_are_unscored() -> None:
    fake = FakeLogProb()
    short = _score("Dạ vâng ạ", fake)
    assert short.value is None and short.passed is None and "3 word(s)" in short.explanation
    assert _score(None, fake).value is None  # no string in the field: nothing to read word order from
    suite = load_suite(SUPPORT_VI)
    fn = fluency_scorer(FLUENCY_DEFAULTS, ScoringModel(fake, IDENTITY))
    (no_json,) = fn("not json", extract_json("not json"), suite.cases[0], suite)
    assert no_json.value is None and "no answer field" in no_json.explanation
    assert not fake.calls  # nothing unscored reaches the model


def test_shuffles_are_deterministic_and_salted() -> None:
    assert shuffles(FLUENT, 3) == shuffles(FLUENT, 3)
    assert shuffles(FLUENT, 1, CALIBRATION_SALT) != shuffles(FLUENT, 1)
    assert all(sorted(s.split()) == sorted(FLUENT.split()) for s in shuffles(FLUENT, 3))
    a, b = _score(FLUENT, FakeLogProb()), _score(FLUENT, FakeLogProb())
    assert a == b


def test_coherence_is_the_reply_minus_its_shuffles() -> None:
    lps = iter([[-1.0, -1.5, -2.5]])
    c = coherence(FLUENT, "ctx", lambda ctx, texts: next(lps), 2)
    assert (c.coherence, c.lp, c.lp_shuffled) == (1.0, -1.0, -2.0)


def test_registry_entry() -> None:
    spec = SCORERS.get("fluency")
    (metric,) = spec.metrics
    assert metric.name == "fluency" and metric.higher_is_better and metric.aggregation == "mean"
    assert metric.headline and metric.flips
    assert "fluency" in headline_metrics(("format", "fluency")) and "fluency" in flip_metrics(("fluency",))
    assert FLUENCY_DEFAULTS["model"] == DEFAULT_MODEL


# --- the suite block --------------------------------------------------------------------------------------


def test_support_vi_runs_fluency_with_its_calibrated_threshold() -> None:
    suite = load_suite(SUPPORT_VI)
    assert "fluency" in suite.scorers
    assert suite.fluency == {"model": DEFAULT_MODEL, "field": "answer", "min_coherence": 0.35, "shuffles": 2}


def test_listed_without_a_block_uses_the_defaults(tmp_path: Path) -> None:
    suite = _suite(tmp_path, "scorers: [format, fluency]\n")
    assert suite.fluency == FLUENCY_DEFAULTS and suite.scorers == ("format", "fluency")


@pytest.mark.parametrize(
    ("block", "where", "expected"),
    [
        ("{modle: x}", "fluency.modle", "unknown key"),
        ("{min_coherence: 0}", "fluency.min_coherence", "must be > 0"),
        ("{min_coherence: -0.1}", "fluency.min_coherence", "must be > 0"),
        ("{min_coherence: 9}", "fluency.min_coherence", "<= 5.0"),
        ("{min_coherence: high}", "fluency.min_coherence", "must be a number"),
        ("{shuffles: 0}", "fluency.shuffles", "must be 1..16"),
        ("{shuffles: 2.5}", "fluency.shuffles", "must be int"),
        ("{model: ' '}", "fluency.model", "is empty"),
        ("{field: 3}", "fluency.field", "must be str"),
        ("[smollm2]", "fluency", "must be a mapping"),
    ],
)
def test_bad_blocks_name_the_key(tmp_path: Path, block: str, where: str, expected: str) -> None:
    msg = _problems(tmp_path, f"scorers: [format, fluency]\nfluency: {block}\n")
    assert f"key '{where}'" in msg and expected in msg, msg


def test_a_block_without_the_scorer_is_an_error(tmp_path: Path) -> None:
    msg = _problems(tmp_path, "scorers: [format, fields]\nfluency: {min_coherence: 0.3}\n")
    assert "key 'fluency'" in msg and "scorers does not list fluency" in msg and "[format, fields, fluency]" in msg


# --- the scoring model ------------------------------------------------------------------------------------


def test_an_unprovisioned_embedded_model_says_to_pull_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(HarnessInputError) as info:
        resolve_scoring_model(DEFAULT_MODEL, tmp_path)
    msg = info.value.render()
    assert "not provisioned" in msg and f"harness models pull {DEFAULT_MODEL}" in msg
    suite = replace(load_suite(SUPPORT_VI), scorers=("fluency",))
    with pytest.raises(HarnessInputError, match="harness models pull"):
        build_scorers(suite)  # refused when the run's scorers are built, before any case is scored


def test_a_missing_local_model_names_the_folder(tmp_path: Path) -> None:
    with pytest.raises(HarnessInputError, match="is neither an embedded model") as info:
        resolve_scoring_model("models/scorer", tmp_path)
    assert str(tmp_path / "models/scorer") in info.value.render()


def test_tiny_model_batched_logprob_matches_one_at_a_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Right padding must not change any sequence's log-prob: the batch equals each sequence on its own."""
    import os

    suite_dir = tmp_path / "s"
    suite_dir.mkdir()
    rel = os.path.relpath(tiny_model_dir, suite_dir)
    scoring = fluency.load_scoring_model(rel, suite_dir)  # relative to the suite folder
    assert scoring.identity["path"] == str(tiny_model_dir.resolve())
    texts = [FLUENT, *shuffles(FLUENT, 2), "Dạ"]
    batched = scoring.logprob("Customer: đơn hàng\nSupport: ", texts)
    single = [scoring.logprob("Customer: đơn hàng\nSupport: ", [t])[0] for t in texts]
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(v < 0 for v in batched)
    suite = replace(load_suite(SUPPORT_VI), path=suite_dir, scorers=("fluency",), fluency={"model": rel})
    case = suite.cases[0]
    text = json.dumps(case.reference, ensure_ascii=False)
    (score,) = build_scorers(suite)[0](text, extract_json(text), case, suite)
    assert score.value in (0.0, 1.0) and score.details["model"]["name"] == rel


# --- calibration ------------------------------------------------------------------------------------------


def _fake_model(monkeypatch: pytest.MonkeyPatch, fake: FakeLogProb) -> None:
    monkeypatch.setattr(fluency, "load_scoring_model", lambda spec, root: ScoringModel(fake, IDENTITY))


def test_calibration_separates_references_from_scrambled_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    suite = load_suite(SUPPORT_VI)
    refs = [c.reference["answer"] for c in suite.cases if c.reference]
    result = calibrate(suite, ScoringModel(FakeLogProb(refs), IDENTITY))
    assert result.n == len(refs) and result.skipped == len(suite.cases) - len(refs)
    assert result.share(result.references) == 1.0 and result.share(result.scrambled) == 0.0 and result.separates
    assert result.suggested == pytest.approx(0.5) and result.min_coherence == 0.35
    text = result.render()
    assert "references median  1.000" in text and "suggested min_coherence 0.50" in text and "ok:" in text


def test_check_fluency_exit_codes(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    suite = load_suite(SUPPORT_VI)
    _fake_model(monkeypatch, FakeLogProb([c.reference["answer"] for c in suite.cases if c.reference]))
    assert main(["check", str(SUPPORT_VI), "--fluency"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: support_vi") and "fluency calibration:" in out and "pass at 0.35: 100.0%" in out
    _fake_model(monkeypatch, FakeLogProb([]))  # nothing reads as fluent: the threshold cannot separate
    assert main(["check", str(SUPPORT_VI), "--fluency"]) == 1
    assert "FAIL: the threshold does not separate" in capsys.readouterr().out


def test_check_fluency_with_model_runs_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = load_suite(SUPPORT_VI)
    _fake_model(monkeypatch, FakeLogProb([c.reference["answer"] for c in suite.cases if c.reference]))
    code = main(["check", str(SUPPORT_VI), "--model", DEFAULT_MODEL, "--fluency"])
    out = capsys.readouterr().out
    assert "fluency calibration:" in out and code in (0, 1)  # 1 only if the token budget check fails


def test_check_fluency_refuses_an_unprovisioned_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "empty-cache"))
    assert main(["check", str(SUPPORT_VI), "--fluency"]) == 2
    captured = capsys.readouterr()
    assert "harness models pull" in captured.err and captured.out == "" and "Traceback" not in captured.err


# --- the real scoring model -------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_model_separates_support_vi_references(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One calibration pass (minutes on 2 CPU cores) through the CLI; its numbers are checked too."""
    seen: list[fluency.Calibration] = []
    real = fluency.calibrate

    def spy(suite: Suite, scoring: ScoringModel | None = None) -> fluency.Calibration:
        seen.append(real(suite, scoring))
        return seen[-1]

    monkeypatch.setattr(fluency, "calibrate", spy)
    assert main(["check", str(SUPPORT_VI), "--fluency"]) == 0
    print(capsys.readouterr().out)
    (result,) = seen
    assert result.n == len(load_suite(SUPPORT_VI).cases)
    assert result.share(result.references) >= 0.95 and result.share(result.scrambled) <= 0.05
