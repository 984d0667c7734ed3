"""An optional LLM judge for tone. Off by default: the default pipeline never imports or needs it.

Rule-based tone checks (harness.tone) are reproducible; a judge is not, so every verdict carries who
judged (endpoint URL or local weights hash), how many samples were drawn and how often they agreed.
A reply that is not the strict JSON verdict is unscored with its reason, never read as a pass or a fail.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from harness.config import build, read_yaml
from harness.errors import HarnessInputError, Problem
from harness.scoring import Score

WEIGHTS_HASH_LIMIT = 1 << 30  # hash local weights only when it takes seconds, not minutes
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SYSTEM_PROMPT = (
    "You judge the tone of a customer-support reply against a rubric. Reply with exactly one JSON object "
    'and nothing else: {"verdict": "pass" or "fail", "reason": "<one short sentence>"}.'
)


@dataclass(frozen=True)
class JudgeConfig:
    """Who judges and how. api_key_env names an environment variable; the key itself never sits in a file."""

    kind: Literal["endpoint", "local"]
    url: str | None = None  # endpoint: server root, .../v1, or the full .../v1/chat/completions
    model: str | None = None  # endpoint: model name sent in the request; local: a label for reports
    api_key_env: str | None = None
    path: str | None = None  # local: a Hugging Face model folder (config.json, *.safetensors, tokenizer)
    samples: int = 3  # self-consistency: independent samples, majority verdict
    temperature: float = 0.7
    max_new_tokens: int = 128
    timeout_s: float = 60.0
    seed: int = 0  # local sampling: sample i uses seed + i


@dataclass(frozen=True)
class JudgeVerdict:
    """The majority verdict over samples. passed None: no valid verdict, or the samples split evenly."""

    passed: bool | None
    score: float | None  # share of valid samples that said pass
    rationale: str
    judge_identity: dict[str, Any]
    self_consistency: float | None  # share of all samples that agree with the majority verdict
    samples: tuple[dict[str, Any], ...] = ()

    def to_score(self) -> Score:
        value = None if self.passed is None else float(self.passed)
        details = {"score": self.score, "self_consistency": self.self_consistency, "judge": self.judge_identity, "samples": list(self.samples)}
        return Score("tone:judge", value, self.rationale, details)


def config_problems(config: JudgeConfig, where: str = "judge") -> list[Problem]:
    """Everything wrong with a config, so a bad judge fails before the first case rather than mid-run."""
    problems: list[Problem] = []

    def need(ok: bool, key: str, what: str, fix: str) -> None:
        if not ok:
            problems.append(Problem(f"{where}: key '{key}'", what, fix))

    if config.kind == "endpoint":
        need(bool(config.url) and str(config.url).startswith(("http://", "https://")), "url", f"must be an http(s) URL, got {config.url!r}", "e.g. http://localhost:8000/v1/chat/completions")
        need(bool(config.model), "model", "is required for an endpoint judge", "give the model name the server expects")
        need(config.path is None, "path", "is only for kind: local", "remove it or set kind: local")
    elif config.kind == "local":
        need(bool(config.path), "path", "is required for a local judge", "give a local model folder")
        need(config.url is None and config.api_key_env is None, "url", "url and api_key_env are only for kind: endpoint", "remove them or set kind: endpoint")
    else:
        need(False, "kind", f"{config.kind!r} is not allowed", "use 'endpoint' or 'local'")
    if config.api_key_env is not None:
        need(bool(_ENV_NAME.match(config.api_key_env)) and not config.api_key_env.startswith("sk-"), "api_key_env", "must be the name of an environment variable, not the key", "e.g. api_key_env: OPENAI_API_KEY")
    need(config.samples >= 1, "samples", f"must be at least 1, got {config.samples}", "use 3 for self-consistency")
    need(config.temperature >= 0, "temperature", f"must be >= 0, got {config.temperature}", "use 0.7")
    need(config.samples == 1 or config.temperature > 0, "temperature", "several samples at temperature 0 all say the same thing", "set temperature > 0, or samples: 1")
    need(config.max_new_tokens >= 8, "max_new_tokens", "must be at least 8", "use 128")
    need(config.timeout_s > 0, "timeout_s", "must be positive", "use 60")
    return problems


def load_judge_config(path: Path) -> JudgeConfig:
    """Load a judge config from YAML; every problem is reported at once."""
    path = Path(path)
    raw = read_yaml(path, "a judge config (kind: endpoint|local, ...)")
    problems: list[Problem] = []
    config = build(JudgeConfig, raw, "", problems)
    problems = [Problem(f"{path}: key '{p.where}'", p.what, p.fix) for p in problems]
    if config is not None:
        problems += config_problems(config, str(path))
    if problems or config is None:
        raise HarnessInputError(problems or [Problem(str(path), "could not be loaded", "see harness/judge.py JudgeConfig")])
    return config


def parse_verdict(text: str) -> tuple[str | None, str]:
    """Read the strict reply {"verdict": "pass"|"fail", "reason": str}; anything else gives (None, why not)."""
    try:
        obj = json.loads(text.strip())
    except json.JSONDecodeError as exc:
        return None, f"reply is not a JSON object ({exc.msg}): {text[:120]!r}"
    if not isinstance(obj, dict) or set(obj) != {"verdict", "reason"}:
        return None, f"reply must be an object with exactly the keys verdict and reason: {text[:120]!r}"
    if obj["verdict"] not in ("pass", "fail"):
        return None, f"verdict must be 'pass' or 'fail', got {obj['verdict']!r}"
    if not isinstance(obj["reason"], str):
        return None, f"reason must be a string, got {obj['reason']!r}"
    return obj["verdict"], obj["reason"]


def judge_messages(answer: str, reference: str | None, rubric: str) -> list[dict[str, str]]:
    user = f"Rubric:\n{rubric}\n\nReference reply (the tone to aim for):\n{reference if reference is not None else '(none)'}\n\nReply to judge:\n{answer}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


Completion = Callable[[list[dict[str, str]], int], str]
JudgeFn = Callable[[str, str | None, str], JudgeVerdict]


def make_judge(config: JudgeConfig) -> JudgeFn:
    """Check the config and set up the backend once (a local model loads here), then judge many replies."""
    problems = config_problems(config)
    if problems:
        raise HarnessInputError(problems)
    complete, identity = _endpoint(config) if config.kind == "endpoint" else _local(config)

    def judge(answer: str, reference: str | None, rubric: str) -> JudgeVerdict:
        messages = judge_messages(answer, reference, rubric)
        return _majority([parse_verdict(complete(messages, i)) for i in range(config.samples)], identity)

    return judge


def judge_tone(config: JudgeConfig, answer: str, reference: str | None, rubric: str) -> JudgeVerdict:
    """Judge one reply. For many replies with a local model, call make_judge once and reuse it."""
    return make_judge(config)(answer, reference, rubric)


def _majority(parsed: list[tuple[str | None, str]], identity: dict[str, Any]) -> JudgeVerdict:
    samples = tuple({"verdict": v, "reason": r} for v, r in parsed)
    votes = Counter(v for v, _ in parsed if v is not None)
    n = len(parsed)
    if not votes:
        why = "; ".join(f"sample {i + 1}: {r}" for i, (_, r) in enumerate(parsed))
        return JudgeVerdict(None, None, f"unscored: no sample gave a valid verdict ({why})", identity, None, samples)
    score = votes["pass"] / sum(votes.values())
    top = max(votes.values())
    if votes["pass"] == votes["fail"]:
        return JudgeVerdict(None, score, f"unscored: samples split {votes['pass']} pass / {votes['fail']} fail", identity, top / n, samples)
    verdict = "pass" if votes["pass"] > votes["fail"] else "fail"
    reason = next(r for v, r in parsed if v == verdict)
    invalid = n - sum(votes.values())
    note = f", {invalid} unreadable" if invalid else ""
    return JudgeVerdict(verdict == "pass", score, f"{top} of {n} samples say {verdict}{note}: {reason}", identity, top / n, samples)


def _chat_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _endpoint(config: JudgeConfig) -> tuple[Completion, dict[str, Any]]:
    assert config.url is not None
    url = _chat_url(config.url)
    headers = {"Content-Type": "application/json"}
    if config.api_key_env is not None:
        key = os.environ.get(config.api_key_env)
        if not key:
            raise HarnessInputError(Problem("judge: key 'api_key_env'", f"environment variable {config.api_key_env} is not set", f"export {config.api_key_env}=<your key>, or remove api_key_env for a server without keys"))
        headers["Authorization"] = f"Bearer {key}"
    identity = {"kind": "endpoint", "url": url, "model": config.model, "weights_sha256": None}

    def complete(messages: list[dict[str, str]], sample: int) -> str:
        body = {"model": config.model, "messages": messages, "temperature": config.temperature, "max_tokens": config.max_new_tokens}
        request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise HarnessInputError(_http_problem(url, exc, config)) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HarnessInputError(Problem(f"judge endpoint {url}", f"cannot be reached ({reason})", "start the server or fix judge.url; the judge is optional, so leave it off to score tone by rules only")) from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise HarnessInputError(Problem(f"judge endpoint {url}", f"did not answer like an OpenAI-compatible chat completion: {payload[:200]!r}", "point judge.url at a /v1/chat/completions endpoint")) from None
        return content if isinstance(content, str) else ""

    return complete, identity


def _http_problem(url: str, exc: urllib.error.HTTPError, config: JudgeConfig) -> Problem:
    where = f"judge endpoint {url}"
    if exc.code in (401, 403):
        fix = f"check the key in ${config.api_key_env}" if config.api_key_env else "set api_key_env to the name of the variable that holds the key"
        return Problem(where, f"refused the request (HTTP {exc.code})", fix)
    if exc.code == 404:
        return Problem(where, "has no such route or model (HTTP 404)", f"check judge.url and that the server serves model {config.model!r}")
    detail = exc.read()[:200].decode("utf-8", "replace") if exc.fp is not None else ""
    return Problem(where, f"answered HTTP {exc.code} {exc.reason}: {detail}", "check the server log and the request settings (model, max_new_tokens)")


def _local(config: JudgeConfig) -> tuple[Completion, dict[str, Any]]:
    assert config.path is not None
    folder = Path(config.path).expanduser()
    if not (folder / "config.json").is_file():
        raise HarnessInputError(Problem("judge: key 'path'", f"{folder} is not a model folder (no config.json)", "give a local folder with config.json, *.safetensors and the tokenizer"))
    import torch

    from harness.env import weights_sha256
    from harness.loading import Runtime, load_model, load_tokenizer
    from harness.models import resolve

    try:
        ref = resolve(str(folder))
        tokenizer = load_tokenizer(ref)
        model = load_model(ref, Runtime.pick())
    except (OSError, ValueError) as exc:
        raise HarnessInputError(Problem("judge: key 'path'", f"{folder} could not be loaded ({exc})", "give a complete local model folder")) from None
    if not getattr(tokenizer, "chat_template", None):
        raise HarnessInputError(Problem("judge: key 'path'", f"{folder} has no chat template", "use an instruct/chat model folder"))
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    identity = {
        "kind": "local",
        "path": str(folder.resolve()),
        "model": config.model or folder.name,
        "weights_sha256": weights_sha256(folder) if 0 < size <= WEIGHTS_HASH_LIMIT else None,
    }
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def complete(messages: list[dict[str, str]], sample: int) -> str:
        inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True).to(model.device)
        options: dict[str, Any] = {"max_new_tokens": config.max_new_tokens, "pad_token_id": pad, "do_sample": config.temperature > 0}
        if config.temperature > 0:
            options["temperature"] = config.temperature
            torch.manual_seed(config.seed + sample)
        with torch.no_grad():
            out = model.generate(**inputs, **options)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return complete, identity
