"""The scorer registry drives aggregation, the headline, flips and metric definitions; suites choose their scorers."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessInputError
from harness.scoring import registry
from harness.scoring.extract import Extraction, extract_json
from harness.scoring.judge import JudgeConfig, judge_config
from harness.scoring.registry import (
    SCORERS,
    MetricSpec,
    Registry,
    ScorerSpec,
    ScoringContext,
    UnknownScorerError,
    aggregate,
    build_scorers,
    flip_metrics,
    headline_metrics,
    metric_definitions,
    metric_spec,
    score_case,
    scorer_versions,
)
from harness.scoring.score import Score
from harness.suite import suite as suite_module
from harness.suite.suite import Case, Suite, load_suite
from tests.conftest import REPO, SUPPORT_VI
from tests.test_judge import FakeServer, server  # noqa: F401 - the judge tests' fake OpenAI-compatible endpoint

# load_suite("golden/support_vi").content_hash of support_vi 1.2.0 (short references, budget 112, fluency)
SUPPORT_VI_HASH = "bda046ea77ac54cbe74a26969750ceea36d1c56c155e1a9396a9e7e7eb323c05"
SUITE = load_suite(SUPPORT_VI)
RUBRIC = "Polite, acknowledges the problem, gives one clear next action, no shouting."


def _records(suite: Suite, scorers: list[Any], n: int = 6) -> list[dict[str, Any]]:
    out = []
    for i, case in enumerate(suite.cases[:n]):
        text = json.dumps(case.reference, ensure_ascii=False) if i % 3 else "no json"
        scores = [s.to_json() for s in score_case(text, extract_json(text), case, suite, scorers)]
        out.append({"id": case.id, "expected": case.expected, "tags": list(case.tags), "scores": scores})
    return out


def _write_suite(root: Path, extra: str) -> Path:
    path = root / "suite.yaml"
    text = path.read_text(encoding="utf-8")
    if "scorers:" in extra:  # support_vi's own scorers and fluency block (its last lines) give way to the test's
        text = text.split("\nscorers:")[0] + "\n"
    path.write_text(text + extra, encoding="utf-8")
    return root


# --- the suite side mirrors the registry -----------------------------------------------------------------


def test_suite_known_scorers_are_the_registry_names() -> None:
    assert suite_module.KNOWN_SCORERS == SCORERS.names()
    assert set(suite_module.DEFAULT_SCORERS) <= set(SCORERS.names())
    assert registry.DEFAULT_SCORERS is suite_module.DEFAULT_SCORERS


def test_suite_judge_keys_mirror_judge_config() -> None:
    config_fields = {f.name: f for f in dataclasses.fields(JudgeConfig)}
    suite_only = {"rubric", "field"}
    assert set(suite_module.JUDGE_KEYS) - suite_only == set(config_fields)
    assert set(suite_module.JUDGE_TYPES) == set(suite_module.JUDGE_KEYS)
    hints = typing.get_type_hints(JudgeConfig)
    for name, f in config_fields.items():
        if f.default is not dataclasses.MISSING:
            assert suite_module.JUDGE_DEFAULTS[name] == f.default, name
        args = typing.get_args(hints[name]) or (hints[name],)
        want = suite_module.JUDGE_TYPES[name]
        assert want in args or (typing.get_origin(hints[name]) is typing.Literal and want is str), name


def test_default_suite_is_unchanged() -> None:
    assert SUITE.content_hash == SUPPORT_VI_HASH
    assert SUITE.scorers == ("format", "fields", "tone", "safety", "degeneration", "fluency") and SUITE.judge is None
    defaults = {"format": "1", "fields": "1", "tone": "1", "safety": "1", "degeneration": "1"}
    assert scorer_versions() == defaults and scorer_versions(SUITE.scorers) == {**defaults, "fluency": "1"}
    assert {k: vars(v) for k, v in registry.METRICS.items()} == {
        "format_strict": {
            "name": "format_strict",
            "higher_is_better": True,
            "aggregation": "mean",
            "description": "share of outputs that are exactly one valid JSON object",
        },
        "format_lenient": {
            "name": "format_lenient",
            "higher_is_better": True,
            "aggregation": "mean",
            "description": "share of outputs from which a valid JSON object can be extracted",
        },
        "field_accuracy": {
            "name": "field_accuracy",
            "higher_is_better": True,
            "aggregation": "mean",
            "description": "share of cases whose field equals the expected value",
        },
        "field_macro_f1": {
            "name": "field_macro_f1",
            "higher_is_better": True,
            "aggregation": "macro-F1",
            "description": "macro-averaged F1 over the field's allowed values",
        },
    }


# --- headline, flips, definitions ------------------------------------------------------------------------


def test_headline_and_flip_metrics_of_the_default_scorers() -> None:
    default = ("format_strict", "format_lenient", "tone", "safety", "non_degenerate")
    assert headline_metrics() == default and headline_metrics(SUITE.scorers) == (*default, "fluency")
    assert flip_metrics() == default and flip_metrics(SUITE.scorers) == (*default, "fluency")
    assert headline_metrics(("safety", "format")) == ("format_strict", "format_lenient", "safety")  # registry order
    assert (
        headline_metrics(("format", "fields"))
        == flip_metrics(("format", "fields"))
        == ("format_strict", "format_lenient")
    )
    with_judge = (*SUITE.scorers, "judge")
    assert headline_metrics(with_judge)[-1] == "tone:judge" and "tone:judge" not in flip_metrics(with_judge)


def test_metric_definitions_and_lookup() -> None:
    defs = metric_definitions(SUITE.scorers)
    assert list(defs)[:2] == ["format_strict", "format_lenient"] and "tone:*" in defs and "tone:judge" not in defs
    assert defs["safety"] == {
        "name": "safety",
        "scorer": "safety",
        "higher_is_better": True,
        "aggregation": "mean",
        "headline": True,
        "flips": True,
        "description": defs["safety"]["description"],
    }
    assert metric_spec("tone:chrf").name == "tone:*"  # type: ignore[union-attr]
    assert metric_spec("tone:judge").name == "tone:judge"  # type: ignore[union-attr]  # exact beats pattern
    assert metric_spec("tone:judge", SUITE.scorers).name == "tone:*"  # type: ignore[union-attr]  # judge not chosen
    assert metric_spec("field:priority").name == "field:*"  # type: ignore[union-attr]
    assert metric_spec("nothing") is None


def test_unknown_scorer_names_say_what_exists() -> None:
    with pytest.raises(UnknownScorerError) as info:
        headline_metrics(("fromat", "tone", "saftey"))
    message = str(info.value)
    assert "did you mean 'format'" in message and "did you mean 'safety'" in message
    assert "available: format, fields, tone, safety, degeneration, fluency, judge" in message
    assert isinstance(info.value, HarnessInputError) and isinstance(info.value, KeyError)
    with pytest.raises(UnknownScorerError, match="did you mean 'tone'"):
        build_scorers(SUITE, names=("tonne",))


def test_declarations_are_checked_when_built() -> None:
    with pytest.raises(ValueError, match="pattern"):
        MetricSpec("x:*", True, "mean", "x", headline=True)
    with pytest.raises(ValueError, match="aggregation 'median'"):
        MetricSpec("x", True, "median", "x")
    with pytest.raises(ValueError, match="more than once"):
        ScorerSpec("x", "1", "x", lambda suite, ctx: lambda *a: [], (MetricSpec("x", True, "mean", "a"),) * 2)
    clash = ScorerSpec(
        "copy", "1", "declares safety too", lambda suite, ctx: lambda *a: [], (MetricSpec("safety", True, "mean", "x"),)
    )
    with pytest.raises(ValueError, match="'safety' is declared by both 'safety' and 'copy'"):
        Registry((*SCORERS, clash))
    with pytest.raises(AttributeError):
        SCORERS.register = None  # type: ignore[attr-defined]  # immutable: no registration after import


# --- a scorer added only through a registry entry --------------------------------------------------------


def _toy_factory(suite: Suite, context: ScoringContext) -> Any:
    def score(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
        short = len(output) < 200
        return [
            Score("toy", 1.0 if short else 0.0, "short" if short else "long"),
            Score("toy:len", float(len(output) < 50), "len"),
        ]

    return score


TOY = ScorerSpec(
    "toy",
    "7",
    "short outputs",
    _toy_factory,
    (
        MetricSpec("toy", True, "mean", "share of short outputs", headline=True, flips=True),
        MetricSpec("toy:*", True, "mean", "details"),
    ),
)


def test_a_toy_scorer_flows_into_aggregate_headline_and_flips() -> None:
    reg = Registry((*SCORERS, TOY))
    suite = replace(SUITE, scorers=(*SUITE.scorers, "toy"))
    records = _records(suite, build_scorers(suite, registry=reg))
    overall = aggregate(records, suite, registry=reg)["overall"]
    assert overall["scores"]["toy"]["n"] == 6 and overall["scores"]["toy:len"]["n"] == 6
    assert headline_metrics(suite.scorers, reg) == (
        "format_strict",
        "format_lenient",
        "tone",
        "safety",
        "non_degenerate",
        "fluency",
        "toy",
    )
    assert flip_metrics(suite.scorers, reg)[-1] == "toy"
    assert (
        scorer_versions(suite.scorers, reg)["toy"] == "7"
        and metric_definitions(suite.scorers, reg)["toy"]["scorer"] == "toy"
    )
    with pytest.raises(UnknownScorerError):
        build_scorers(suite)  # the shipped registry has no toy


def test_default_aggregate_is_unchanged_by_the_registry() -> None:
    records = _records(SUITE, build_scorers(SUITE), n=12)
    overall = aggregate(records, SUITE)["overall"]
    assert list(overall) == ["n_cases", "format_strict", "format_lenient", "fields", "scores", "failures"]
    assert set(overall["fields"]) == {"category", "priority"} and overall["failures"]["not_json"] == 4
    assert {"tone", "tone:chrf", "safety", "safety:pii"} <= set(overall["scores"])


# --- suites choose their scorers -------------------------------------------------------------------------


def test_a_suite_with_only_format_and_fields_gets_no_tone_or_safety(suite_copy: Path) -> None:
    suite = load_suite(_write_suite(suite_copy, "scorers: [format, fields]\n"))
    assert suite.scorers == ("format", "fields") and suite.content_hash != SUPPORT_VI_HASH
    records = _records(suite, build_scorers(suite))
    names = {s["scorer"] for r in records for s in r["scores"]}
    assert names == {"format_strict", "format_lenient", "field:category", "field:priority"}
    names_default = {s.scorer for s in score_case("no json", extract_json("no json"), suite.cases[0], suite)}
    assert not any(n.startswith(("tone", "safety")) for n in names_default)
    overall = aggregate(records, suite)["overall"]
    assert set(overall["scores"]) == names and set(overall["fields"]) == {"category", "priority"}
    assert scorer_versions(suite.scorers) == {"format": "1", "fields": "1"}
    assert headline_metrics(suite.scorers) == ("format_strict", "format_lenient")


def test_a_suite_without_fields_reports_no_field_block(suite_copy: Path) -> None:
    suite = load_suite(_write_suite(suite_copy, "scorers: [safety, format]\n"))
    overall = aggregate(_records(suite, build_scorers(suite)), suite)["overall"]
    assert overall["fields"] == {} and "safety" in overall["scores"] and overall["format_strict"]["n"] == 6


def test_suites_without_a_judge_never_load_its_backends() -> None:
    code = (
        "import sys, json; from harness.suite.suite import load_suite; "
        "from harness.scoring.extract import extract_json; "
        "from harness.scoring.registry import build_scorers, score_case; s = load_suite(sys.argv[1]); c = s.cases[0]; "
        "t = json.dumps(c.reference); names = [n for n in s.scorers if n != 'fluency']; "
        "score_case(t, extract_json(t), c, s, build_scorers(s, names=names)); "
        "print([m for m in ('urllib.request', 'torch', 'transformers', 'harness.engine.loading') if m in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(SUPPORT_VI)], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stderr


# --- the judge, reached from suite.yaml ------------------------------------------------------------------


def test_a_suite_that_lists_the_judge_gets_judge_scores(suite_copy: Path, server: FakeServer) -> None:  # noqa: F811
    server.replies.append('{"verdict": "pass", "reason": "polite"}')
    url = server.url + "/v1"
    block = {"kind": "endpoint", "url": url, "model": "judge-model", "samples": 1, "rubric": RUBRIC}
    suite = load_suite(_write_suite(suite_copy, "scorers: [format, fields, judge]\njudge: " + json.dumps(block) + "\n"))
    assert suite.judge == block
    records = _records(suite, build_scorers(suite), n=3)
    seen = [r["body"] for r in server.requests]
    judged = [next(s for s in r["scores"] if s["scorer"] == "tone:judge") for r in records]
    assert [s["value"] for s in judged] == [None, 1.0, 1.0]  # the first output has no JSON: unscored, not judged
    assert len(seen) == 2 and seen[0]["model"] == "judge-model" and RUBRIC in seen[0]["messages"][1]["content"]
    assert judged[1]["details"]["judge"]["url"] == url + "/chat/completions"
    overall = aggregate(records, suite)["overall"]
    assert overall["scores"]["tone:judge"]["n"] == 2 and overall["scores"]["tone:judge"]["value"] == 1.0
    assert headline_metrics(suite.scorers) == ("format_strict", "format_lenient", "tone:judge")
    assert scorer_versions(suite.scorers) == {"format": "1", "fields": "1", "judge": "1"}


def test_judge_without_config_in_code_is_an_input_error() -> None:
    with pytest.raises(HarnessInputError, match="no judge is configured"):
        build_scorers(SUITE, names=("judge",))


def test_local_judge_path_is_relative_to_the_suite_folder(tmp_path: Path) -> None:
    settings = {"kind": "local", "path": "models/judge", "rubric": RUBRIC, "samples": 1, "temperature": 0.0}
    assert judge_config(settings, tmp_path) == JudgeConfig(
        kind="local", path=str(tmp_path / "models/judge"), samples=1, temperature=0.0
    )
    assert judge_config({**settings, "path": "/abs/judge"}, tmp_path).path == "/abs/judge"
    with pytest.raises(HarnessInputError, match="no config.json"):
        build_scorers(replace(SUITE, path=tmp_path, scorers=("judge",), judge=settings))
