"""Bad-input corpus for the files a user writes: suite.yaml, the schema, case files, the tone contract, gates.yaml,
training presets, training data and run files (issue 18: fix the class, test the class).

Every entry copies a shipped file into tmp_path, damages it one way, and runs the CLI command a user would run on
it through tests.badinput.reject: exit 2, one message naming the file (line, key), no traceback, no network
request, nothing changed on disk. The property tests at the end give each loader random bytes, random YAML/JSON
structures and truncations of the shipped files: it may succeed or raise HarnessInputError, nothing else.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import HarnessInputError, Problem
from tests.badinput import reject
from tests.conftest import REPO, SUPPORT_VI

PRESET = REPO / "trainers" / "configs" / "demo.yaml"
TRAIN_DATA = REPO / "trainers" / "data" / "support_vi_train.jsonl"
REPORTS = REPO / "tests" / "fixtures" / "reports"
RUN_ID = "20260301T120000Z-support_vi-demo"


# ------------------------------------------------------------------------------------------------ the world


@dataclass(frozen=True)
class World:
    root: Path
    suite: Path
    reports: Path
    preset: Path
    data: Path
    run: Path


@pytest.fixture(scope="module")
def reports_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture runs, copied once: `harness gate` entries read a run from here (and must not change it)."""
    dst = tmp_path_factory.mktemp("reports") / "reports"
    shutil.copytree(REPORTS, dst)
    return dst


@pytest.fixture
def world(tmp_path: Path, reports_copy: Path) -> World:
    suite = tmp_path / "suite"
    shutil.copytree(SUPPORT_VI, suite)
    data = tmp_path / "train.jsonl"
    shutil.copyfile(TRAIN_DATA, data)
    preset = yaml.safe_load(PRESET.read_text(encoding="utf-8"))
    preset.update(output_dir=str(tmp_path / "candidates"), eval_suite=str(suite))
    preset["data"].update(path=str(data), suite=str(suite))
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset, allow_unicode=True), encoding="utf-8")
    run = {"suite": str(suite), "base": "smollm2-135m-instruct", "variants": [{"name": "base", "kind": "base"}]}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run), encoding="utf-8")
    return World(tmp_path, suite, reports_copy, tmp_path / "preset.yaml", data, tmp_path / "run.yaml")


# ------------------------------------------------------------------------------------------------ damage


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def write_bytes(data: bytes) -> Callable[[Path], None]:
    return lambda p: p.write_bytes(data)


def write_text(text: str) -> Callable[[Path], None]:
    return lambda p: p.write_text(text, encoding="utf-8")


def utf16(p: Path) -> None:
    p.write_bytes(_text(p).encode("utf-16"))


def latin1(p: Path) -> None:
    """A Latin-1 'é' in a comment line (YAML) or a string value (JSON lines): valid text, not UTF-8."""
    if p.suffix == ".jsonl":
        lines = _text(p).splitlines()
        obj = json.loads(lines[2])
        key = "prompt" if "prompt" in obj else "messages"
        if key == "prompt":
            obj["prompt"] = "café " + obj["prompt"]
            lines[2] = json.dumps(obj, ensure_ascii=False)
        else:
            lines[2] = lines[2].replace('"content": "', '"content": "café ', 1)
        p.write_bytes("\n".join(lines[:2]).encode() + b"\n" + "\n".join(lines[2:]).encode("latin-1", "replace"))
    elif p.suffix == ".json":
        p.write_bytes(_text(p).replace('"title": "', '"title": "café ', 1).encode("latin-1", "replace"))
    else:
        p.write_bytes(b"# caf\xe9 au lait\n" + p.read_bytes())


def binary(p: Path) -> None:
    p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00\xff\xfe\x00")


def truncate(fraction: float) -> Callable[[Path], None]:
    def cut(p: Path) -> None:
        data = p.read_bytes()
        p.write_bytes(data[: int(len(data) * fraction)])

    return cut


def to_folder(p: Path) -> None:
    p.unlink()
    p.mkdir()
    (p / "inside.txt").write_text("x", encoding="utf-8")


def yaml_edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        raw = yaml.safe_load(_text(p))
        fn(raw)
        p.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")

    return edit


def yaml_set(dotted: str, value: Any) -> Callable[[Path], None]:
    def fn(raw: dict[str, Any]) -> None:
        *head, last = dotted.split(".")
        node: Any = raw
        for k in head:
            node = node[int(k)] if isinstance(node, list) else node[k]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return yaml_edit(fn)


def yaml_drop(key: str) -> Callable[[Path], None]:
    return yaml_edit(lambda raw: raw.pop(key))


def yaml_raw(old: str, new: str) -> Callable[[Path], None]:
    """Replace text in the file as written (for values safe_dump cannot write, such as .nan)."""

    def edit(p: Path) -> None:
        text = _text(p)
        assert old in text, f"{old!r} not in {p}"
        p.write_text(text.replace(old, new, 1), encoding="utf-8")

    return edit


def json_edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def edit(p: Path) -> None:
        obj = json.loads(_text(p))
        fn(obj)
        p.write_text(json.dumps(obj, ensure_ascii=False, indent=2), encoding="utf-8")

    return edit


def line_edit(n: int, fn: Callable[[str], str]) -> Callable[[Path], None]:
    """Rewrite line n (1-based) of a JSONL file."""

    def edit(p: Path) -> None:
        lines = _text(p).splitlines()
        lines[n - 1] = fn(lines[n - 1])
        p.write_text("\n".join(lines) + "\n", encoding="utf-8")

    return edit


def obj_edit(n: int, fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def change(line: str) -> str:
        obj = json.loads(line)
        fn(obj)
        return json.dumps(obj, ensure_ascii=False)

    return line_edit(n, change)


def set_schema_ref(ref: str) -> Callable[[Path], None]:
    def fn(obj: dict[str, Any]) -> None:
        obj["properties"]["category"] = {"$ref": ref}

    return json_edit(fn)


# ------------------------------------------------------------------------------------------------ the corpus


@dataclass(frozen=True)
class Entry:
    id: str
    target: str  # which file of the world is damaged: suite.yaml, schema.json, cases.jsonl, tone.yaml, gates.yaml,
    # preset, data, run
    damage: Callable[[Path], None]
    where: tuple[str, ...]  # any of these in the message


def _target(w: World, target: str) -> Path:
    if target in ("suite.yaml", "schema.json", "cases.jsonl", "adversarial.jsonl", "tone.yaml", "gates.yaml"):
        return w.suite / target
    return {"preset": w.preset, "data": w.data, "run": w.run}[target]


def _argv(w: World, target: str) -> list[str]:
    if target == "gates.yaml":
        return ["gate", RUN_ID, "--reports-dir", str(w.reports), "--gates", str(w.suite / "gates.yaml")]
    if target in ("preset", "data"):
        return ["doctor", str(w.preset)]
    if target == "run":
        return ["compare", str(w.run), "--reports-dir", str(w.root / "reports"), "--no-progress"]
    return ["check", str(w.suite)]


def E(id: str, target: str, damage: Callable[[Path], None], *where: str) -> Any:  # noqa: A002, N802
    return pytest.param(Entry(id, target, damage, where or (target,)), id=id)


SUITE = [
    E("suite-binary", "suite.yaml", binary, "suite.yaml", "binary"),
    E("suite-utf16", "suite.yaml", utf16, "UTF-16"),
    E("suite-latin1", "suite.yaml", latin1, "suite.yaml:1"),
    E("suite-empty", "suite.yaml", write_text(""), "is empty"),
    E("suite-list", "suite.yaml", write_text("- name\n- version\n"), "must be a YAML mapping"),
    E("suite-scalar", "suite.yaml", write_text("just words\n"), "must be a YAML mapping"),
    E("suite-truncated", "suite.yaml", truncate(0.6), "suite.yaml"),
    E("suite-bad-yaml", "suite.yaml", write_text("name: x\nlabels: [category\n"), "invalid YAML"),
    E("suite-unknown-key", "suite.yaml", yaml_edit(lambda r: r.update(lables=["category"])), "'lables'"),
    E("suite-missing-name", "suite.yaml", yaml_drop("name"), "'name'"),
    E("suite-name-int", "suite.yaml", yaml_set("name", 7), "'name'"),
    E("suite-labels-empty", "suite.yaml", yaml_set("labels", []), "'labels'"),
    E("suite-labels-not-in-contract", "suite.yaml", yaml_set("labels", ["category", "urgency"]), "'urgency'"),
    E("suite-gen-huge", "suite.yaml", yaml_set("generation.max_new_tokens", 10**30), "generation.max_new_tokens"),
    E("suite-gen-nan", "suite.yaml", yaml_raw("max_new_tokens: 112", "max_new_tokens: .nan"), "max_new_tokens"),
    E("suite-gen-not-mapping", "suite.yaml", yaml_set("generation", [1, 2]), "'generation'"),
    E("suite-scorer-typo", "suite.yaml", yaml_set("scorers", ["format", "feilds"]), "'feilds'"),
    E("suite-cases-int", "suite.yaml", yaml_set("cases", 3), "'cases'"),
    E("suite-cases-missing-file", "suite.yaml", yaml_set("cases", ["nope.jsonl"]), "nope.jsonl"),
    E("suite-int-keys", "suite.yaml", yaml_raw("name: support_vi", "name: support_vi\n1: one"), "key 1"),
    E("suite-deep-nesting", "suite.yaml", write_text("a: " + "[" * 5000 + "]" * 5000 + "\n"), "suite.yaml"),
    E("suite-yaml-is-folder", "suite.yaml", to_folder, "suite.yaml"),
]
SCHEMA = [
    E("schema-binary", "schema.json", binary, "schema.json", "binary"),
    E("schema-utf16", "schema.json", utf16, "UTF-16"),
    E("schema-latin1", "schema.json", latin1, "schema.json:"),
    E("schema-empty", "schema.json", write_text(""), "schema.json"),
    E("schema-truncated", "schema.json", truncate(0.5), "schema.json"),
    E("schema-array", "schema.json", write_text("[1, 2]"), "must be a JSON object"),
    E("schema-https-ref", "schema.json", set_schema_ref("https://example.com/category.json"), "$ref"),
    E(
        "schema-http-ref-in-defs",
        "schema.json",
        json_edit(lambda o: o.update({"$defs": {"x": {"$ref": "http://10.0.0.1/s"}}})),
        "#/$defs/x/$ref",
    ),  # noqa: E501
    E("schema-relative-ref", "schema.json", set_schema_ref("other.json#/category"), "#/properties/category/$ref"),
    E("schema-dangling-local-ref", "schema.json", set_schema_ref("#/$defs/nothing"), "points at nothing"),
    E("schema-bad-type", "schema.json", json_edit(lambda o: o.update(type="objekt")), "invalid JSON Schema"),
    E("schema-nan", "schema.json", yaml_raw('"type": "object"', '"type": "object", "maxProperties": NaN'), "NaN"),
    E(
        "schema-huge-number",
        "schema.json",
        yaml_raw('"type": "object"', '"type": "object", "maxProperties": 1e999'),
        "schema.json",
    ),  # noqa: E501
    E("schema-deep-nesting", "schema.json", write_text("[" * 100000 + "]" * 100000), "schema.json"),
    E("schema-draft-int", "schema.json", json_edit(lambda o: o.update({"$schema": 7})), "$schema"),
    E("schema-is-folder", "schema.json", to_folder, "is a folder"),
]
CASES = [
    E("cases-binary", "cases.jsonl", binary, "cases.jsonl"),
    E("cases-utf16", "cases.jsonl", utf16, "UTF-16"),
    E("cases-latin1", "cases.jsonl", latin1, "cases.jsonl:3"),
    E("cases-empty", "cases.jsonl", write_text(""), "has no cases"),
    E("cases-truncated", "cases.jsonl", truncate(0.5), "cases.jsonl:"),
    E("cases-line-array", "cases.jsonl", line_edit(2, lambda _: "[1, 2, 3]"), "cases.jsonl:2"),
    E(
        "cases-duplicate-id",
        "cases.jsonl",
        line_edit(2, lambda _: _text(SUPPORT_VI / "cases.jsonl").splitlines()[0]),
        "duplicate id",
    ),  # noqa: E501
    E(
        "cases-missing-expected",
        "cases.jsonl",
        obj_edit(4, lambda o: o.pop("expected")),
        "cases.jsonl:4: key 'expected'",
    ),  # noqa: E501
    E("cases-unknown-key", "cases.jsonl", obj_edit(5, lambda o: o.update(promt="x")), "'promt'"),
    E("cases-id-int", "cases.jsonl", obj_edit(6, lambda o: o.update(id=6)), "cases.jsonl:6: key 'id'"),
    E(
        "cases-bad-label-value",
        "cases.jsonl",
        obj_edit(7, lambda o: o["expected"].update(category="refund")),
        "expected.category",
    ),  # noqa: E501
    E("cases-nan", "cases.jsonl", line_edit(8, lambda s: s.replace('"tags": []', '"tags": NaN')), "cases.jsonl:8"),
    E(
        "cases-huge-float",
        "cases.jsonl",
        line_edit(9, lambda s: s.replace('"tags": []', '"tags": 1e400')),
        "cases.jsonl:9",
    ),  # noqa: E501
    E(
        "cases-huge-int",
        "cases.jsonl",
        line_edit(10, lambda s: s.replace('"tags": []', '"tags": ' + "9" * 5000)),
        "cases.jsonl:10",
    ),  # noqa: E501
    E("cases-deep-nesting", "cases.jsonl", line_edit(11, lambda _: "[" * 50000), "cases.jsonl:11"),
    E(
        "cases-checks-bad",
        "cases.jsonl",
        obj_edit(12, lambda o: o.update(checks={"refusal": "maybe"})),
        "checks.refusal",
    ),  # noqa: E501
    E("cases-is-folder", "cases.jsonl", to_folder, "is a folder"),
    E(
        "cases-role-list",
        "cases.jsonl",
        obj_edit(13, lambda o: [o.pop("prompt"), o.update(messages=[{"role": ["user"], "content": "hi"}])]),
        "messages[0].role",
    ),
]
TONE = [
    E("tone-binary", "tone.yaml", binary, "tone.yaml"),
    E("tone-utf16", "tone.yaml", utf16, "UTF-16"),
    E("tone-latin1", "tone.yaml", latin1, "tone.yaml:1"),
    E("tone-empty", "tone.yaml", write_text(""), "tone.yaml: is empty"),
    E("tone-truncated", "tone.yaml", truncate(0.3), "tone.yaml"),
    E("tone-unknown-key", "tone.yaml", yaml_edit(lambda r: r.update(forbiden=[])), "'forbiden'"),
    E("tone-missing-markers", "tone.yaml", yaml_drop("markers"), "'markers'"),
    E("tone-caps-nan", "tone.yaml", yaml_set("shouting.max_caps_ratio", float("nan")), "shouting.max_caps_ratio"),
    E("tone-length-inf", "tone.yaml", yaml_set("length_words.max", float("inf")), "length_words.max"),
    E("tone-language-int", "tone.yaml", yaml_set("language", 5), "'language'"),
    E("tone-is-folder", "tone.yaml", to_folder, "is a folder"),
]
GATES = [
    E("gates-binary", "gates.yaml", binary, "gates.yaml"),
    E("gates-utf16", "gates.yaml", utf16, "UTF-16"),
    E("gates-latin1", "gates.yaml", latin1, "gates.yaml:1"),
    E("gates-empty", "gates.yaml", write_text(""), "gates.yaml: is empty"),
    E("gates-truncated", "gates.yaml", truncate(0.5), "gates.yaml"),
    E("gates-alpha-zero", "gates.yaml", yaml_set("alpha", 0.0), "gates.yaml.alpha"),
    E("gates-alpha-above-one", "gates.yaml", yaml_set("alpha", 1.5), "gates.yaml.alpha"),
    E("gates-alpha-nan", "gates.yaml", yaml_set("alpha", float("nan")), "gates.yaml.alpha"),
    E("gates-alpha-string", "gates.yaml", yaml_set("alpha", "five percent"), "gates.yaml.alpha"),
    E("gates-resamples-zero", "gates.yaml", yaml_set("bootstrap_resamples", 0), "bootstrap_resamples"),
    E("gates-resamples-negative", "gates.yaml", yaml_set("bootstrap_resamples", -5), "bootstrap_resamples"),
    E("gates-resamples-float", "gates.yaml", yaml_set("bootstrap_resamples", 2.5), "bootstrap_resamples"),
    E("gates-metric-typo", "gates.yaml", yaml_set("checks.0.metric", "format_strcit"), "(format-floor).metric"),
    E("gates-metric-label-typo", "gates.yaml", yaml_set("checks.2.metric", "field:categroy"), "field:category"),
    E("gates-metric-suite-level", "gates.yaml", yaml_set("checks.0.metric", "field_accuracy"), "suite-level"),
    E("gates-metric-tone-rule-typo", "gates.yaml", yaml_set("checks.3.metric", "tone:lenght"), "tone:length"),
    E("gates-unknown-key", "gates.yaml", yaml_edit(lambda r: r.update(alhpa=0.05)), "alhpa"),
    E("gates-bad-kind", "gates.yaml", yaml_set("checks.0.kind", "treshold"), "checks[0].kind"),
    E("gates-duplicate-id", "gates.yaml", yaml_set("checks.1.id", "format-floor"), "duplicate check id"),
    E("gates-margin-inf", "gates.yaml", yaml_set("checks.4.margin", float("inf")), "checks[4].margin"),
    E("gates-lower-bound-above-one", "gates.yaml", yaml_set("checks.0.min_lower_bound", 5), "min_lower_bound"),
    E("gates-checks-mapping", "gates.yaml", yaml_set("checks", {"a": 1}), "checks"),
    E("gates-is-folder", "gates.yaml", to_folder, "is a folder"),
]
PRESETS = [
    E("preset-binary", "preset", binary, "preset.yaml"),
    E("preset-utf16", "preset", utf16, "UTF-16"),
    E("preset-latin1", "preset", latin1, "preset.yaml:1"),
    E("preset-empty", "preset", write_text(""), "preset.yaml: is empty"),
    E("preset-truncated", "preset", truncate(0.4), "preset.yaml"),
    E("preset-lr-nan", "preset", yaml_set("training.learning_rate", float("nan")), "training.learning_rate"),
    E("preset-lr-inf", "preset", yaml_set("training.learning_rate", float("inf")), "training.learning_rate"),
    E("preset-unknown-key", "preset", yaml_edit(lambda r: r.update(epochz=1)), "epochz"),
    E("preset-missing-model", "preset", yaml_drop("model"), "'model'"),
    E("preset-is-folder", "preset", to_folder, "is a folder"),
]
DATA = [
    E("data-binary", "data", binary, "train.jsonl"),
    E("data-utf16", "data", utf16, "UTF-16"),
    E("data-latin1", "data", latin1, "train.jsonl:3"),
    E("data-empty", "data", write_text(""), "train.jsonl"),
    E("data-truncated-line", "data", line_edit(3, lambda s: s[: len(s) // 2]), "train.jsonl:3"),
    E("data-nan", "data", line_edit(4, lambda s: '{"messages": NaN}'), "train.jsonl:4"),
    E(
        "data-role-list",
        "data",
        line_edit(
            5,
            lambda _: json.dumps({"messages": [{"role": ["user"], "content": 5}, {"role": "assistant", "content": 7}]}),
        ),
        "train.jsonl:5",
    ),
    E(
        "data-wrong-format",
        "data",
        lambda p: p.write_text(
            "".join(json.dumps({"instruction": f"q{i}", "response": f"a{i}"}) + "\n" for i in range(40)),
            encoding="utf-8",
        ),
        "format 'instruction'",
    ),
]
RUNS = [
    E("run-binary", "run", binary, "run.yaml"),
    E("run-utf16", "run", utf16, "UTF-16"),
    E("run-latin1", "run", latin1, "run.yaml:1"),
    E("run-empty", "run", write_text(""), "run.yaml: is empty"),
    E("run-list", "run", write_text("- base\n"), "must be a YAML mapping"),
    E("run-unknown-key", "run", yaml_edit(lambda r: r.update(variantz=[])), "variantz"),
    E("run-is-folder", "run", to_folder, "is a folder"),
]
CORPUS = SUITE + SCHEMA + CASES + TONE + GATES + PRESETS + DATA + RUNS


@pytest.mark.parametrize("entry", CORPUS)
def test_bad_file_is_rejected(entry: Entry, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    entry.damage(_target(world, entry.target))
    allowed = [world.root / "reports"] if entry.target == "run" else []
    reject(_argv(world, entry.target), entry.where, [world.root, world.reports], monkeypatch, allowed)


def test_corpus_is_large_and_distinct() -> None:
    ids = [p.values[0].id for p in CORPUS]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


def test_one_broken_line_is_one_cause(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broken case line that carried the only 'abusive' tag is that line's problem, not also an empty slice."""
    adv = world.suite / "adversarial.jsonl"
    lines = _text(adv).splitlines()
    tagged = [i for i, line in enumerate(lines) if "abusive" in json.loads(line).get("tags", [])]
    for i in tagged:
        lines[i] = lines[i][:-5]
    adv.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = reject(["check", str(world.suite)], f"adversarial.jsonl:{tagged[0] + 1}", [world.root], monkeypatch)
    assert "has no cases" not in out.stderr and "slice" not in out.stderr


def test_local_refs_keep_working(world: World) -> None:
    """#/$defs and #/definitions refs resolve inside the file, for cases' expected values and for outputs."""
    from harness.suite.suite import load_suite

    schema = world.suite / "schema.json"
    obj = json.loads(_text(schema))
    obj["$defs"] = {"category": obj["properties"]["category"]}
    obj["definitions"] = {"priority": obj["properties"]["priority"]}
    obj["properties"]["category"] = {"$ref": "#/$defs/category"}
    obj["properties"]["priority"] = {"$ref": "#/definitions/priority"}
    schema.write_text(json.dumps(obj), encoding="utf-8")
    suite = load_suite(world.suite)
    errors = list(suite.validator().iter_errors({"category": "refund", "priority": "high", "answer": "x"}))
    assert errors and "refund" in errors[0].message
    lines = _text(world.suite / "cases.jsonl").splitlines()
    case = json.loads(lines[0])
    case["expected"]["priority"] = "urgent"
    (world.suite / "cases.jsonl").write_text("\n".join([json.dumps(case), *lines[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(HarnessInputError, match="expected.priority"):
        load_suite(world.suite)


def test_policy_metric_problems_are_all_reported(world: World) -> None:
    from harness.verdict.gates import load_policy

    gates = world.suite / "gates.yaml"
    yaml_edit(lambda r: [r["checks"][i].update(metric="nope") for i in (0, 1)] and r.update(alpha=2))(gates)
    with pytest.raises(HarnessInputError) as exc:
        load_policy(gates)
    text = exc.value.render()
    assert "3 problems" in text and "(format-floor).metric" in text and "(format-beats-base).metric" in text


# ------------------------------------------------------------------------------------------------ properties

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_keys = st.sampled_from(
    ["name", "version", "checks", "kind", "metric", "alpha", "data", "model", "variants"]
) | st.text(max_size=8)
structures = st.recursive(
    _scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5), max_leaves=20
)
FAST = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _loaders() -> dict[str, tuple[Callable[[Path], Any], Path]]:
    """name -> (a loader of one file, the shipped file it reads)."""
    from harness.io import read_jsonl
    from harness.suite.tone_contract import load_tone_contract
    from harness.training.config import load_train_config
    from harness.variants.spec import load_run_file
    from harness.verdict.gates import load_policy

    def jsonl(p: Path) -> Any:
        problems: list[Problem] = []
        rows = list(read_jsonl(p, problems))
        return rows, problems

    return {
        "policy": (load_policy, SUPPORT_VI / "gates.yaml"),
        "tone": (load_tone_contract, SUPPORT_VI / "tone.yaml"),
        "preset": (load_train_config, PRESET),
        "run": (load_run_file, REPO / "examples" / "compare_support_vi.yaml"),
        "jsonl": (jsonl, SUPPORT_VI / "cases.jsonl"),
    }


def _suite_loader(file: str) -> Callable[[Path], Any]:
    """load_suite on a copy of support_vi whose `file` is the given one."""
    from harness.suite.suite import load_suite

    def load(p: Path) -> Any:
        folder = p.parent / "suite"
        if not folder.exists():
            shutil.copytree(SUPPORT_VI, folder)
        shutil.copyfile(p, folder / file)
        return load_suite(folder)

    return load


def _all_loaders() -> dict[str, tuple[Callable[[Path], Any], Path]]:
    out = _loaders()
    for file in ("suite.yaml", "schema.json", "cases.jsonl"):
        out[f"suite:{file}"] = (_suite_loader(file), SUPPORT_VI / file)
    return out


LOADERS = ["policy", "tone", "preset", "run", "jsonl", "suite:suite.yaml", "suite:schema.json", "suite:cases.jsonl"]


def _only_input_errors(loader: Callable[[Path], Any], path: Path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        loader(path)
    except HarnessInputError as exc:
        assert exc.render().strip()


@pytest.mark.parametrize("name", LOADERS)
@FAST
@given(data=st.binary(max_size=300))
def test_random_bytes(name: str, data: bytes, tmp_path: Path) -> None:
    loader, shipped = _all_loaders()[name]
    _only_input_errors(loader, tmp_path / shipped.name, data)


@pytest.mark.parametrize("name", LOADERS)
@FAST
@given(value=structures, as_json=st.booleans())
def test_random_structures(name: str, value: Any, as_json: bool, tmp_path: Path) -> None:
    loader, shipped = _all_loaders()[name]
    if shipped.suffix == ".jsonl":
        text = "\n".join(json.dumps(v) for v in (value if isinstance(value, list) else [value]))
    elif as_json or shipped.suffix == ".json":
        text = json.dumps(value)  # JSON is YAML too (NaN and Infinity aside)
    else:
        text = yaml.safe_dump(value)
    _only_input_errors(loader, tmp_path / shipped.name, text.encode("utf-8"))


@pytest.mark.parametrize("name", LOADERS)
@FAST
@given(cut=st.floats(min_value=0.0, max_value=1.0))
def test_truncations(name: str, cut: float, tmp_path: Path) -> None:
    loader, shipped = _all_loaders()[name]
    data = shipped.read_bytes()
    _only_input_errors(loader, tmp_path / shipped.name, data[: int(len(data) * cut)])


_message = st.fixed_dictionaries(
    {"role": structures | st.sampled_from(["user", "assistant", "system"]), "content": structures}
)
_example = (
    st.fixed_dictionaries({"messages": st.lists(_message, max_size=3) | structures})
    | st.fixed_dictionaries({"instruction": structures, "response": structures}, optional={"input": structures})
    | st.fixed_dictionaries({"text": structures})
    | st.dictionaries(_keys, structures, max_size=3)
)


@pytest.mark.parametrize("fmt", ["messages", "instruction", "text"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_example, min_size=1, max_size=4))
def test_training_data_structures(fmt: str, rows: list[Any], tmp_path: Path) -> None:
    """Training data lines of any shape, read as each format (with the suite's contract): only input errors."""
    from dataclasses import replace

    from harness.suite.suite import load_suite
    from harness.training.config import load_train_config
    from harness.training.data import load_examples

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = replace(
        _CACHE["data"] if "data" in _CACHE else _CACHE.setdefault("data", load_train_config(PRESET).data),
        path=str(data),
        format=fmt,
        template="Q: {instruction}\nA: " if fmt != "messages" else None,
    )
    try:
        load_examples(cfg, _CACHE["suite"] if "suite" in _CACHE else _CACHE.setdefault("suite", load_suite(SUPPORT_VI)))
    except HarnessInputError as exc:
        assert exc.render().strip()


_CACHE: dict[str, Any] = {}
