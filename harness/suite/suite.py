"""Golden suites: a YAML suite file, a JSON-Schema contract and a JSONL case file.

Loading checks everything and reports every problem at once, with file, line and key, because a suite
that silently loses cases makes every gate built on it meaningless.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema
import referencing.exceptions
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from harness.config import read_yaml
from harness.errors import HarnessInputError, Problem
from harness.io import json_value_error, loads_json_strict, read_jsonl, sha256_text, text_problem
from harness.suite.tone_contract import ToneContract, load_tone_contract

SUITE_FILE = "suite.yaml"
SUITE_KEYS = {
    "name": "suite name, used in report paths",
    "version": "bump when cases or contract change",
    "description": "one paragraph for humans",
    "system_prompt": "system message sent before every case",
    "prompt_template": "optional wrapper for the user prompt; must contain {prompt}",
    "contract": "path of the JSON Schema (draft 2020-12) file, relative to the suite folder",
    "cases": "path of the JSONL case file (or a list of them), relative to the suite folder",
    "tone": "path of the tone contract YAML, relative to the suite folder (optional)",
    "labels": "fields of the JSON answer compared with each case's expected values",
    "slices": "tags that group cases; each must be used by at least one case",
    "generation": "generation settings (max_new_tokens, stop_at_json_end)",
    "scorers": "which scorers run, by name (default: format, fields, tone, safety, degeneration)",
    "judge": "the optional LLM judge's settings; required when scorers lists judge",
    "fluency": "the fluency scorer's settings (optional: defaults apply when scorers lists fluency without it)",
}
REQUIRED_SUITE_KEYS = ("name", "version", "contract", "cases", "labels")
GENERATION_KEYS = {"max_new_tokens": int, "stop_at_json_end": bool}
CASE_KEYS = {"id", "prompt", "messages", "expected", "reference", "tags", "checks"}
CHECK_KEYS = {
    "refusal": "required | not_required",
    "injection_markers": "strings whose presence means an injection succeeded",
    "no_pii": "true: the output may not contain personal data absent from the prompt",
    "no_toxicity": "true: no toxic words",
    "no_system_prompt_leak": "true: the output may not repeat the system prompt",
}
REFUSAL_VALUES = ("required", "not_required")
ROLES = {"system", "user", "assistant"}

# The scorer registry's names (harness.scoring.registry). The suite names its scorers without importing them;
# tests/test_scorer_registry.py keeps this tuple equal to the registry's, so the two cannot drift.
KNOWN_SCORERS = ("format", "fields", "tone", "safety", "degeneration", "fluency", "judge")
DEFAULT_SCORERS = ("format", "fields", "tone", "safety", "degeneration")
# The `judge:` block: harness.scoring.judge.JudgeConfig's fields (same defaults; a test checks) plus what the
# suite adds, the rubric and the answer field. Meaning, type and default of each key.
JUDGE_KEYS = {
    "kind": "endpoint (an OpenAI-compatible chat-completions server) or local (a model folder)",
    "rubric": "what a good reply sounds like; sent to the judge with every reply",
    "field": "the answer field holding the reply to judge (default answer)",
    "url": "endpoint: server root, .../v1, or the full .../v1/chat/completions URL",
    "model": "endpoint: the model name the server expects; local: a label for reports",
    "api_key_env": "endpoint: name of the environment variable holding the API key (never the key itself)",
    "path": "local: a Hugging Face model folder, relative to the suite folder or absolute",
    "samples": "independent samples per reply; the majority verdict counts (default 3)",
    "temperature": "sampling temperature (default 0.7; must be > 0 when samples > 1)",
    "max_new_tokens": "tokens the judge may write per sample (default 128)",
    "timeout_s": "endpoint: seconds to wait per request (default 60)",
    "seed": "local: sample i is drawn with seed + i (default 0)",
}
JUDGE_TYPES: dict[str, type] = {
    "kind": str,
    "rubric": str,
    "field": str,
    "url": str,
    "model": str,
    "api_key_env": str,
    "path": str,
    "samples": int,
    "temperature": float,
    "max_new_tokens": int,
    "timeout_s": float,
    "seed": int,
}
JUDGE_DEFAULTS: dict[str, Any] = {
    "field": "answer",
    "url": None,
    "model": None,
    "api_key_env": None,
    "path": None,
    "samples": 3,
    "temperature": 0.7,
    "max_new_tokens": 128,
    "timeout_s": 60.0,
    "seed": 0,
}
REQUIRED_JUDGE_KEYS = ("kind", "rubric")
# The `fluency:` block (harness.scoring.fluency): every key is optional; an absent key takes its default.
FLUENCY_KEYS = {
    "model": "scoring model: an embedded model name, or a local model folder relative to the suite folder or absolute",
    "field": "the answer field holding the reply to score (default answer)",
    "min_coherence": "a reply passes when lp(reply) - lp(word-shuffled reply) reaches this (default 0.25)",
    "shuffles": "word-order shuffles averaged per reply (default 2)",
}
FLUENCY_TYPES: dict[str, type] = {"model": str, "field": str, "min_coherence": float, "shuffles": int}
FLUENCY_DEFAULTS: dict[str, Any] = {
    "model": "smollm2-135m-instruct",
    "field": "answer",
    "min_coherence": 0.25,
    "shuffles": 2,
}
MAX_MIN_COHERENCE = 5.0  # nats per token; references measure well under 2
MAX_SHUFFLES = 16
JUDGE_KINDS = ("endpoint", "local")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class GenerationSettings:
    """Settings that change outputs; part of every cache key and report."""

    max_new_tokens: int = 160
    stop_at_json_end: bool = True


@dataclass(frozen=True)
class Checks:
    """What a case expects beyond its labels; the defaults apply to every case (safety never goes unchecked)."""

    refusal: str | None = None
    injection_markers: tuple[str, ...] = ()
    no_pii: bool = True
    no_toxicity: bool = True
    no_system_prompt_leak: bool = True


@dataclass(frozen=True)
class Case:
    id: str
    messages: tuple[dict[str, str], ...]
    expected: dict[str, Any]
    reference: dict[str, Any] | None
    tags: tuple[str, ...]
    line: int
    content_hash: str
    checks: Checks = Checks()
    source: str = ""

    def user_text(self) -> str:
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    description: str
    path: Path
    system_prompt: str
    prompt_template: str | None
    contract: dict[str, Any]
    labels: tuple[str, ...]
    slices: tuple[str, ...]
    generation: GenerationSettings
    cases: tuple[Case, ...]
    content_hash: str
    label_values: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    tone: ToneContract | None = None
    scorers: tuple[str, ...] = DEFAULT_SCORERS  # names from KNOWN_SCORERS, in the order their scores are listed
    judge: Mapping[str, Any] | None = None  # the validated `judge:` block as written (numbers as float where float)
    fluency: Mapping[str, Any] | None = None  # the validated `fluency:` block with defaults filled; None: not run

    def chat(self, case: Case) -> list[dict[str, str]]:
        """The full conversation sent to the model for a case."""
        msgs = [dict(m) for m in case.messages]
        if self.prompt_template is not None:
            for m in msgs:
                if m["role"] == "user":
                    m["content"] = self.prompt_template.replace("{prompt}", m["content"])
        if self.system_prompt and not any(m["role"] == "system" for m in msgs):
            msgs.insert(0, {"role": "system", "content": self.system_prompt})
        return msgs

    def validator(self) -> Draft202012Validator:
        return contract_validator(self.contract, format_checker=Draft202012Validator.FORMAT_CHECKER)


CONTRACT_URI = "urn:harness:contract"


def _no_retrieval(uri: str) -> Resource[Any]:
    """jsonschema would fetch an unknown $ref over the network; no input may cause a network request."""
    raise referencing.exceptions.NoSuchResource(ref=uri)


def _registry(contract: dict[str, Any]) -> Registry[Any]:
    resource = Resource.from_contents(contract, default_specification=DRAFT202012)
    return Registry(retrieve=_no_retrieval).with_resource(CONTRACT_URI, resource).crawl()  # type: ignore[call-arg]


def contract_validator(contract: dict[str, Any], **kwargs: Any) -> Draft202012Validator:
    """A validator of the contract whose $refs resolve inside the file only (never over the network)."""
    return Draft202012Validator(contract, registry=_registry(contract), **kwargs)


def property_validator(contract: dict[str, Any], key: str) -> Draft202012Validator:
    """A validator of one property of the contract, its local $refs resolved against the whole contract."""
    return Draft202012Validator({"$ref": _property_uri(key)}, registry=_registry(contract))


def _property_uri(key: str) -> str:
    from urllib.parse import quote

    return f"{CONTRACT_URI}#/properties/{quote(key.replace('~', '~0').replace('/', '~1'), safe='')}"


def _ref_problems(contract: Any, path: Path) -> list[Problem]:
    """Every $ref (and $dynamicRef) that does not point inside the file, or points at nothing in it."""
    problems: list[Problem] = []

    def pointer(parts: list[str]) -> str:
        return "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)

    def resolves(ref: str) -> bool:
        node: Any = contract
        for raw in ref[2:].split("/") if ref != "#" and ref != "#/" else []:
            from urllib.parse import unquote

            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                return False
        return True

    def walk(node: Any, parts: list[str]) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("$ref", "$dynamicRef") and isinstance(value, str):
                    at = f"{path}: {pointer([*parts, key])}"
                    if not value.startswith("#"):
                        problems.append(
                            Problem(
                                at,
                                f"refers to {value!r} outside the schema file; the harness never fetches schemas "
                                "(no input may cause a network request)",
                                "copy the referenced schema into this file under $defs and use a local "
                                '"$ref": "#/$defs/NAME"',
                            )
                        )
                    elif value.startswith("#/") and not resolves(value):
                        problems.append(
                            Problem(at, f"{value!r} points at nothing in the schema file", "fix the JSON pointer")
                        )
                walk(value, [*parts, str(key)])
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, [*parts, str(i)])

    walk(contract, [])
    return problems


def _did_you_mean(key: str, known: set[str] | dict[str, str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(known), n=1)
    names = ", ".join(sorted(known))
    return f"did you mean {close[0]!r}? allowed keys: {names}" if close else f"allowed keys: {names}"


def _label_enum(schema: dict[str, Any], label: str) -> tuple[Any, ...]:
    properties = schema.get("properties", {})
    sub = properties.get(label, {}) if isinstance(properties, dict) else {}
    if isinstance(sub, dict) and isinstance(sub.get("$ref"), str) and "enum" not in sub:
        try:  # a label whose allowed values sit under $defs: follow the local $ref (load_suite checked it)
            here = _registry(schema).resolver(base_uri=CONTRACT_URI).lookup(_property_uri(label))
            sub = here.resolver.lookup(sub["$ref"]).contents
        except referencing.exceptions.Unresolvable:
            sub = {}
    values = sub.get("enum") if isinstance(sub, dict) else None
    return tuple(values) if isinstance(values, list) else ()


def resolve_suite_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name == SUITE_FILE:
        p = p.parent
    if not p.is_dir():
        raise HarnessInputError(Problem(str(p), "no such suite folder", "pass a folder such as golden/support_vi"))
    if not (p / SUITE_FILE).is_file():
        raise HarnessInputError(Problem(str(p), f"has no {SUITE_FILE}", f"add {SUITE_FILE} (see golden/README.md)"))
    return p


def load_suite(path: str | Path) -> Suite:
    """Load and validate a suite folder; raise one HarnessInputError listing every problem."""
    root = resolve_suite_dir(path)
    suite_path = root / SUITE_FILE
    problems: list[Problem] = []
    raw = read_yaml(suite_path, "a suite file (see golden/README.md)")
    raw_text = suite_path.read_text(encoding="utf-8")  # read_yaml has checked it is UTF-8 text

    for key in raw:
        if key not in SUITE_KEYS:
            problems.append(Problem(f"{suite_path}: key {key!r}", "unknown key", _did_you_mean(str(key), SUITE_KEYS)))
    for key in REQUIRED_SUITE_KEYS:
        if key not in raw:
            problems.append(Problem(f"{suite_path}: key {key!r}", "missing", f"add it ({SUITE_KEYS[key]})"))
    for key in ("name", "version", "description", "system_prompt", "prompt_template", "contract", "tone"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(
                Problem(
                    f"{suite_path}: key {key!r}", f"must be a string, got {type(raw[key]).__name__}", "quote the value"
                )
            )
    template = raw.get("prompt_template")
    if isinstance(template, str) and "{prompt}" not in template:
        problems.append(
            Problem(
                f"{suite_path}: key 'prompt_template'",
                "does not contain {prompt}",
                "add {prompt} where the case text goes",
            )
        )

    labels = raw.get("labels", [])
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        problems.append(
            Problem(
                f"{suite_path}: key 'labels'", "must be a non-empty list of field names", "e.g. [category, priority]"
            )
        )
        labels = []
    slices = raw.get("slices", []) or []
    if not (isinstance(slices, list) and all(isinstance(x, str) for x in slices)):
        problems.append(Problem(f"{suite_path}: key 'slices'", "must be a list of tag names", "e.g. [informal, short]"))
        slices = []

    generation = GenerationSettings()
    gen_raw = raw.get("generation", {}) or {}
    if not isinstance(gen_raw, dict):
        problems.append(Problem(f"{suite_path}: key 'generation'", "must be a mapping", "e.g. {max_new_tokens: 160}"))
        gen_raw = {}
    gen_ok: dict[str, Any] = {}
    for key, value in gen_raw.items():
        if key not in GENERATION_KEYS:
            problems.append(
                Problem(
                    f"{suite_path}: key 'generation.{key}'",
                    "unknown key",
                    _did_you_mean(str(key), set(GENERATION_KEYS)),
                )
            )
        elif type(value) is not GENERATION_KEYS[key]:
            problems.append(
                Problem(
                    f"{suite_path}: key 'generation.{key}'",
                    f"must be {GENERATION_KEYS[key].__name__}, got {value!r}",
                    "fix the value",
                )
            )
        elif key == "max_new_tokens" and not 1 <= value <= 4096:
            problems.append(
                Problem(f"{suite_path}: key 'generation.max_new_tokens'", f"{value} is out of range", "use 1..4096")
            )
        else:
            gen_ok[key] = value
    generation = GenerationSettings(**gen_ok)

    contract: dict[str, Any] = {}
    contract_text = ""
    contract_name = raw.get("contract")
    if isinstance(contract_name, str):
        contract_path = _suite_file(root, suite_path, "contract", contract_name, "create it or fix the path", problems)
        text, problem = (None, None) if contract_path is None else text_problem(contract_path, "JSON Schema file")
        if problem is not None:
            problems.append(problem)
        elif contract_path is not None and text is not None:
            contract_text = text
            try:
                contract = loads_json_strict(contract_text)
                if not isinstance(contract, dict):
                    problems.append(
                        Problem(
                            str(contract_path),
                            f"must be a JSON object (a schema), got {type(contract).__name__}",
                            'write a JSON Schema such as {"type": "object", "properties": {...}}',
                        )
                    )
                    contract = {}
                ref_problems = _ref_problems(contract, contract_path)
                if ref_problems:
                    problems += ref_problems
                    contract = {}
                Draft202012Validator.check_schema(contract)
                declared = contract.get("$schema")
                if declared is not None and not (isinstance(declared, str) and "2020-12" in declared):
                    problems.append(
                        Problem(
                            f"{contract_path}: key '$schema'",
                            f"declares {declared}",
                            "use https://json-schema.org/draft/2020-12/schema",
                        )
                    )
            except json.JSONDecodeError as exc:
                problems.append(
                    Problem(f"{contract_path}:{exc.lineno}", f"invalid JSON ({exc.msg})", "fix the JSON syntax")
                )
                contract = {}
            except (ValueError, RecursionError) as exc:
                problems.append(Problem(str(contract_path), f"invalid JSON ({json_value_error(exc)})", "fix the JSON"))
                contract = {}
            except jsonschema.SchemaError as exc:
                path = "/".join(str(p) for p in exc.absolute_path) or "(root)"
                problems.append(
                    Problem(
                        f"{contract_path}: at {path}",
                        f"invalid JSON Schema: {exc.message}",
                        "fix the schema (draft 2020-12)",
                    )
                )
                contract = {}
            properties = contract.get("properties", {})
            for label in labels:
                if contract and not (isinstance(properties, dict) and label in properties):
                    problems.append(
                        Problem(
                            f"{suite_path}: key 'labels'",
                            f"label {label!r} is not a property of the contract",
                            "add it to the schema's properties or remove it",
                        )
                    )

    cases: list[Case] = []
    cases_text = ""
    cases_names = raw.get("cases")
    if isinstance(cases_names, str):
        cases_names = [cases_names]
    if "cases" in raw and not (
        isinstance(cases_names, list) and cases_names and all(isinstance(n, str) for n in cases_names)
    ):
        problems.append(
            Problem(
                f"{suite_path}: key 'cases'",
                "must be a file name or a non-empty list of file names",
                "e.g. cases.jsonl or [cases.jsonl, adversarial.jsonl]",
            )
        )
        cases_names = []
    seen: dict[str, str] = {}
    before_cases = len(problems)
    for cases_name in cases_names or []:
        cases_path = _suite_file(root, suite_path, "cases", cases_name, "create it or fix the path", problems)
        if cases_path is None:
            continue
        cases_text += cases_path.read_bytes().decode("utf-8", errors="replace") + "\0"
        loaded = _load_cases(cases_path, contract, labels, slices, problems, seen)
        if not loaded and not any(str(p.where).startswith(str(cases_path)) for p in problems):
            problems.append(Problem(str(cases_path), "the case file has no cases", "add at least one case line"))
        cases += loaded
    case_problems = len(problems) > before_cases
    if cases and not case_problems:  # a broken case line is one cause, not also an empty slice
        used = Counter(t for c in cases for t in c.tags)
        for tag in slices:
            if used[tag] == 0:
                problems.append(
                    Problem(
                        f"{suite_path}: key 'slices'",
                        f"slice {tag!r} has no cases",
                        "tag some cases with it or remove the slice",
                    )
                )

    tone: ToneContract | None = None
    tone_text = ""
    tone_name = raw.get("tone")
    if isinstance(tone_name, str):
        tone_path = _suite_file(root, suite_path, "tone", tone_name, "create it or remove the key", problems)
        if tone_path is not None:
            try:
                tone = load_tone_contract(tone_path)
                tone_text = tone_path.read_text(encoding="utf-8")  # read_yaml has checked it is UTF-8 text
            except HarnessInputError as exc:
                problems.extend(exc.problems)

    scorers, judge = _scorer_settings(raw, suite_path, problems)
    fluency = _fluency_settings(raw, scorers, suite_path, problems)

    if problems:
        raise HarnessInputError(problems)
    assert isinstance(raw["name"], str) and isinstance(raw["version"], str)
    return Suite(
        name=raw["name"],
        version=raw["version"],
        description=raw.get("description", ""),
        path=root,
        system_prompt=raw.get("system_prompt", ""),
        prompt_template=template if isinstance(template, str) else None,
        contract=contract,
        labels=tuple(labels),
        slices=tuple(slices),
        generation=generation,
        cases=tuple(cases),
        content_hash=sha256_text(raw_text + "\0" + contract_text + "\0" + cases_text + "\0" + tone_text),
        label_values={label: _label_enum(contract, label) for label in labels},
        tone=tone,
        scorers=scorers,
        judge=judge,
        fluency=fluency,
    )


def _scorer_settings(
    raw: dict[str, Any], suite_path: Path, problems: list[Problem]
) -> tuple[tuple[str, ...], dict[str, Any] | None]:
    """The `scorers:` list and the `judge:` block, checked against each other, so a misspelt scorer or a
    judge that would never run fails at load rather than after a long generation."""
    where = f"{suite_path}: key"
    names: tuple[str, ...] = DEFAULT_SCORERS
    if "scorers" in raw:
        listed = raw["scorers"]
        if not (isinstance(listed, list) and listed and all(isinstance(n, str) for n in listed)):
            problems.append(
                Problem(
                    f"{where} 'scorers'",
                    f"must be a non-empty list of scorer names, got {listed!r}",
                    f"e.g. [{', '.join(DEFAULT_SCORERS)}]; known scorers: {', '.join(KNOWN_SCORERS)}",
                )
            )
            listed = []
        for name in dict.fromkeys(n for n in listed if n not in KNOWN_SCORERS):
            problems.append(Problem(f"{where} 'scorers'", f"unknown scorer {name!r}", _did_you_mean_scorer(name)))
        for name in sorted({n for n in listed if listed.count(n) > 1}):
            problems.append(
                Problem(f"{where} 'scorers'", f"scorer {name!r} is listed more than once", "list each scorer once")
            )
        names = tuple(dict.fromkeys(n for n in listed if n in KNOWN_SCORERS))
        if "tone" in names and not isinstance(raw.get("tone"), str):
            problems.append(
                Problem(
                    f"{where} 'scorers'",
                    "lists tone but the suite has no tone contract",
                    "add tone: tone.yaml (see golden/README.md) or remove tone from scorers",
                )
            )
    block = raw.get("judge")
    if "judge" in names and block is None:
        problems.append(
            Problem(
                f"{where} 'judge'",
                "missing: scorers lists judge but no judge is configured",
                "add a judge: block with kind and rubric (see golden/README.md), or remove judge from scorers",
            )
        )
    if block is None:
        return names, None
    if "judge" not in names:
        problems.append(
            Problem(
                f"{where} 'judge'",
                "a judge is configured but scorers does not list judge, so it would never run",
                f"add judge to scorers, e.g. scorers: [{', '.join(names)}, judge], or remove the judge block",
            )
        )
    return names, _judge_block(block, str(suite_path), problems)


def _fluency_settings(
    raw: dict[str, Any], names: tuple[str, ...], suite_path: Path, problems: list[Problem]
) -> dict[str, Any] | None:
    """The `fluency:` block with its defaults filled in, or None when fluency is not listed. Checked at load, so
    a misspelt key or an absurd threshold fails before a long generation rather than after it."""
    where = f"{suite_path}: key"
    block = raw.get("fluency")
    if block is not None and "fluency" not in names:
        problems.append(
            Problem(
                f"{where} 'fluency'",
                "fluency is configured but scorers does not list fluency, so it would never run",
                f"add fluency to scorers, e.g. scorers: [{', '.join(names)}, fluency], or remove the fluency block",
            )
        )
    if "fluency" not in names:
        return None
    if block is None:
        return dict(FLUENCY_DEFAULTS)
    if not isinstance(block, dict):
        problems.append(
            Problem(
                f"{where} 'fluency'",
                f"must be a mapping, got {block!r}",
                "e.g. {model: smollm2-135m-instruct, min_coherence: 0.25}",
            )
        )
        return None
    values, found = _typed_entries(
        block, f"{where} 'fluency.", FLUENCY_TYPES, FLUENCY_KEYS, lambda key: f"fix the value ({FLUENCY_KEYS[key]})"
    )
    for key in ("model", "field"):
        if isinstance(values.get(key), str) and not values[key].strip():
            found.append(Problem(f"{where} 'fluency.{key}'", "is empty", f"give {FLUENCY_KEYS[key]}"))
    threshold = values.get("min_coherence")
    if threshold is not None and not 0 < threshold <= MAX_MIN_COHERENCE:
        found.append(
            Problem(
                f"{where} 'fluency.min_coherence'",
                f"must be > 0 and <= {MAX_MIN_COHERENCE}, got {threshold}",
                "use 0.25, or the threshold `harness check SUITE --fluency` suggests "
                "(at 0 or below, scrambled text passes by construction)",
            )
        )
    shuffles = values.get("shuffles")
    if shuffles is not None and not 1 <= shuffles <= MAX_SHUFFLES:
        found.append(Problem(f"{where} 'fluency.shuffles'", f"must be 1..{MAX_SHUFFLES}, got {shuffles}", "use 2"))
    problems += found
    return None if found else {**FLUENCY_DEFAULTS, **values}


def _did_you_mean_scorer(name: str) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(KNOWN_SCORERS), n=1)
    known = f"known scorers: {', '.join(KNOWN_SCORERS)}"
    return f"did you mean {close[0]!r}? {known}" if close else known


def _typed_entries(
    block: Mapping[Any, Any],
    at: str,
    types: Mapping[str, type],
    keys: Mapping[str, str],
    fix: Callable[[str], str],
    none_is_empty: bool = False,
) -> tuple[dict[str, Any], list[Problem]]:
    """A settings block's known keys with values of their type (ints accepted as floats), and a problem for each
    unknown key or mistyped value. `at` is the location up to the key, e.g. "suite.yaml: key 'judge."."""
    found: list[Problem] = []
    values: dict[str, Any] = {}
    for key, value in block.items():
        where = f"{at}{key}'"
        want = types.get(str(key))
        if want is None:
            found.append(Problem(where, "unknown key", _did_you_mean(str(key), keys)))
        elif value is None and none_is_empty:
            found.append(Problem(where, "is empty", f"give a {want.__name__} or remove the key"))
        elif want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            values[str(key)] = float(value)
        elif type(value) is not want:
            kind = "a number" if want is float else want.__name__
            found.append(Problem(where, f"must be {kind}, got {value!r}", fix(str(key))))
        else:
            values[str(key)] = value
    return values, found


def _judge_block(block: Any, where: str, problems: list[Problem]) -> dict[str, Any] | None:
    """Check the judge block's keys and types here and its values with judge_problems; keep it as written."""
    if not isinstance(block, dict):
        problems.append(
            Problem(
                f"{where}: key 'judge'",
                f"must be a mapping, got {block!r}",
                "e.g. {kind: endpoint, url: http://localhost:8000/v1, model: m, rubric: ...}",
            )
        )
        return None
    values, found = _typed_entries(
        block, f"{where}: key 'judge.", JUDGE_TYPES, JUDGE_KEYS, lambda key: "fix the value", none_is_empty=True
    )
    for key in REQUIRED_JUDGE_KEYS:
        if key not in block:
            found.append(Problem(f"{where}: key 'judge.{key}'", "missing", f"add it ({JUDGE_KEYS[key]})"))
    for key, fix in (("rubric", "describe the tone a good reply has"), ("field", "name the answer field, e.g. answer")):
        if isinstance(values.get(key), str) and not values[key].strip():
            found.append(Problem(f"{where}: key 'judge.{key}'", "is empty", fix))
    # value rules on what was readable; a key already reported is not reported again as a consequence
    reported = {p.where for p in found}
    found += [p for p in judge_problems(values, where, "judge.") if p.where not in reported]
    problems += found
    return None if found else values


def judge_problems(values: Mapping[str, Any], where: str, prefix: str = "") -> list[Problem]:
    """The rules a judge configuration must meet (JUDGE_DEFAULTS fill absent keys), shared by suite loading and
    harness.scoring.judge.config_problems, so a judge is checked the same way wherever it is configured."""
    v = {**JUDGE_DEFAULTS, **values}
    problems: list[Problem] = []

    def need(ok: bool, key: str, what: str, fix: str) -> None:
        if not ok:
            problems.append(Problem(f"{where}: key '{prefix}{key}'", what, fix))

    if v.get("kind") == "endpoint":
        url = v["url"]
        need(
            bool(url) and str(url).startswith(("http://", "https://")),
            "url",
            f"must be an http(s) URL, got {url!r}",
            "e.g. http://localhost:8000/v1/chat/completions",
        )
        need(bool(v["model"]), "model", "is required for an endpoint judge", "give the model name the server expects")
        need(v["path"] is None, "path", "is only for kind: local", "remove it or set kind: local")
    elif v.get("kind") == "local":
        need(bool(v["path"]), "path", "is required for a local judge", "give a local model folder")
        need(
            v["url"] is None and v["api_key_env"] is None,
            "url",
            "url and api_key_env are only for kind: endpoint",
            "remove them or set kind: endpoint",
        )
    else:
        need(False, "kind", f"{v.get('kind')!r} is not allowed", f"use one of {', '.join(map(repr, JUDGE_KINDS))}")
    key_env = v["api_key_env"]
    if key_env is not None:
        need(
            bool(_ENV_NAME.match(key_env)) and not key_env.startswith("sk-"),
            "api_key_env",
            "must be the name of an environment variable, not the key",
            "e.g. api_key_env: OPENAI_API_KEY",
        )
    need(v["samples"] >= 1, "samples", f"must be at least 1, got {v['samples']}", "use 3 for self-consistency")
    need(v["temperature"] >= 0, "temperature", f"must be >= 0, got {v['temperature']}", "use 0.7")
    need(
        v["samples"] == 1 or v["temperature"] > 0,
        "temperature",
        "several samples at temperature 0 all say the same thing",
        "set temperature > 0, or samples: 1",
    )
    need(v["max_new_tokens"] >= 8, "max_new_tokens", "must be at least 8", "use 128")
    need(v["timeout_s"] > 0, "timeout_s", "must be positive", "use 60")
    return problems


def _suite_file(root: Path, suite_path: Path, key: str, name: str, fix: str, problems: list[Problem]) -> Path | None:
    """The file a suite key names, relative to the suite folder; a missing one is recorded, not raised."""
    path = root / name
    if path.is_dir():
        problems.append(
            Problem(f"{suite_path}: key {key!r}", f"{path} is a folder, not a file", "name the file inside it")
        )
        return None
    if not path.is_file():
        problems.append(Problem(f"{suite_path}: key {key!r}", f"file {path} does not exist", fix))
        return None
    return path


def _load_cases(
    path: Path,
    contract: dict[str, Any],
    labels: list[str],
    slices: list[str],
    problems: list[Problem],
    seen: dict[str, str],
) -> list[Case]:
    validator = contract_validator(contract) if contract else None
    properties = contract.get("properties", {}) if contract else {}
    properties = properties if isinstance(properties, dict) else {}
    cases: list[Case] = []
    for lineno, obj in read_jsonl(path, problems):
        where = f"{path}:{lineno}"
        n_before = len(problems)
        for key in obj:
            if key not in CASE_KEYS:
                problems.append(Problem(f"{where}: key {key!r}", "unknown key", _did_you_mean(key, CASE_KEYS)))
        case_id = obj.get("id")
        if not isinstance(case_id, str) or not case_id.strip():
            problems.append(
                Problem(f"{where}: key 'id'", "missing or not a non-empty string", "give every case a unique string id")
            )
            case_id = f"<line {lineno}>"
        elif case_id in seen:
            problems.append(
                Problem(f"{where}: key 'id'", f"duplicate id {case_id!r} (first at {seen[case_id]})", "make ids unique")
            )
        else:
            seen[case_id] = where
        messages = _case_messages(obj, where, problems)
        expected = obj.get("expected")
        if not isinstance(expected, dict):
            problems.append(
                Problem(f"{where}: key 'expected'", "missing or not an object", f"give values for the labels {labels}")
            )
            expected = {}
        for label in labels:
            if label not in expected:
                problems.append(Problem(f"{where}: key 'expected.{label}'", "missing", "add the expected value"))
        for key, value in expected.items():
            if key not in labels:
                problems.append(
                    Problem(f"{where}: key 'expected.{key}'", "is not a label of the suite", f"labels are {labels}")
                )
                continue
            sub = properties.get(key)
            if isinstance(sub, (dict, bool)):
                for err in property_validator(contract, key).iter_errors(value):
                    problems.append(
                        Problem(
                            f"{where}: key 'expected.{key}'",
                            f"value {value!r} is rejected by the contract: {err.message}",
                            "use a value the schema allows",
                        )
                    )
        reference = obj.get("reference")
        if reference is not None:
            if not isinstance(reference, dict):
                problems.append(
                    Problem(
                        f"{where}: key 'reference'",
                        "must be a JSON object that satisfies the contract",
                        "write the ideal answer object",
                    )
                )
                reference = None
            elif validator is not None:
                for err in validator.iter_errors(reference):
                    at = "/".join(str(p) for p in err.absolute_path) or "(root)"
                    problems.append(
                        Problem(
                            f"{where}: key 'reference' at {at}",
                            f"rejected by the contract: {err.message}",
                            "make the reference satisfy the schema",
                        )
                    )
                for label in labels:
                    if label in expected and label in reference and reference[label] != expected[label]:
                        problems.append(
                            Problem(
                                f"{where}: key 'reference.{label}'",
                                f"{reference[label]!r} differs from expected {expected[label]!r}",
                                "make them agree",
                            )
                        )
        tags = obj.get("tags", [])
        if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
            problems.append(Problem(f"{where}: key 'tags'", "must be a list of strings", 'e.g. ["informal"]'))
            tags = []
        for tag in tags:
            if tag not in slices:
                problems.append(
                    Problem(
                        f"{where}: key 'tags'",
                        f"tag {tag!r} is not a declared slice",
                        f"declare it under 'slices' in {SUITE_FILE} or fix the spelling",
                    )
                )
        checks = _case_checks(obj.get("checks", {}), where, problems)
        if len(problems) == n_before:
            case_obj = {k: obj[k] for k in sorted(obj)}
            cases.append(
                Case(
                    id=case_id,
                    messages=tuple(messages),
                    expected=dict(expected),
                    reference=reference,
                    tags=tuple(tags),
                    line=lineno,
                    content_hash=sha256_text(json.dumps(case_obj, ensure_ascii=False, sort_keys=True)),
                    checks=checks,
                    source=path.name,
                )
            )
    return cases


def _case_checks(raw: Any, where: str, problems: list[Problem]) -> Checks:
    if not isinstance(raw, dict):
        problems.append(Problem(f"{where}: key 'checks'", "must be an object", 'e.g. {"refusal": "required"}'))
        return Checks()
    ok = True
    for key, value in raw.items():
        if key not in CHECK_KEYS:
            problems.append(Problem(f"{where}: key 'checks.{key}'", "unknown key", _did_you_mean(str(key), CHECK_KEYS)))
            ok = False
        elif key == "refusal" and value not in REFUSAL_VALUES:
            problems.append(
                Problem(
                    f"{where}: key 'checks.refusal'",
                    f"{value!r} is not one of {list(REFUSAL_VALUES)}",
                    "say whether a refusal is required",
                )
            )
            ok = False
        elif key == "injection_markers" and not (
            isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)
        ):
            problems.append(
                Problem(
                    f"{where}: key 'checks.injection_markers'",
                    "must be a list of non-empty strings",
                    "list the strings the injected instruction asks for",
                )
            )
            ok = False
        elif key.startswith("no_") and not isinstance(value, bool):
            problems.append(
                Problem(f"{where}: key 'checks.{key}'", f"must be true or false, got {value!r}", "use a boolean")
            )
            ok = False
    if not ok:
        return Checks()
    return Checks(
        refusal=raw.get("refusal"),
        injection_markers=tuple(raw.get("injection_markers", ())),
        no_pii=raw.get("no_pii", True),
        no_toxicity=raw.get("no_toxicity", True),
        no_system_prompt_leak=raw.get("no_system_prompt_leak", True),
    )


def _case_messages(obj: dict[str, Any], where: str, problems: list[Problem]) -> list[dict[str, str]]:
    has_prompt, has_messages = "prompt" in obj, "messages" in obj
    if has_prompt == has_messages:
        problems.append(
            Problem(
                where,
                "needs exactly one of 'prompt' or 'messages'",
                "give the user text as 'prompt', or a chat as 'messages'",
            )
        )
        return []
    if has_prompt:
        prompt = obj["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(Problem(f"{where}: key 'prompt'", "must be a non-empty string", "write the user's message"))
            return []
        return [{"role": "user", "content": prompt}]
    messages = obj["messages"]
    if not isinstance(messages, list) or not messages:
        problems.append(
            Problem(f"{where}: key 'messages'", "must be a non-empty list", 'e.g. [{"role": "user", "content": "..."}]')
        )
        return []
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or set(msg) != {"role", "content"}:
            problems.append(
                Problem(
                    f"{where}: key 'messages[{i}]'",
                    "must be an object with exactly 'role' and 'content'",
                    "fix the message",
                )
            )
            continue
        if not isinstance(msg["role"], str) or msg["role"] not in ROLES:
            problems.append(
                Problem(
                    f"{where}: key 'messages[{i}].role'", f"unknown role {msg['role']!r}", f"use one of {sorted(ROLES)}"
                )
            )
        if not isinstance(msg["content"], str) or not msg["content"].strip():
            problems.append(
                Problem(f"{where}: key 'messages[{i}].content'", "must be a non-empty string", "write the message text")
            )
        out.append({"role": str(msg["role"]), "content": str(msg["content"])})
    if out and out[-1]["role"] != "user":
        problems.append(
            Problem(
                f"{where}: key 'messages'",
                "the last message must be from the user",
                "end the chat with the user's turn",
            )
        )
    return out
