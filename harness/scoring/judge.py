"""An optional LLM judge for tone. Off by default: a suite turns it on by listing `judge` in its scorers and
configuring it in a `judge:` block of suite.yaml. Only this module's registry entry is imported by default;
the HTTP client and the local-model machinery (torch, transformers) load when a judge is built.

Rule-based tone checks (harness.scoring.tone) are reproducible; a judge is not, so every verdict carries who
judged (endpoint URL or local weights hash), how many samples were drawn and how often they agreed.
A reply that is not the strict JSON verdict is unscored with its reason, never read as a pass or a fail.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.config import build, read_yaml
from harness.errors import HarnessInputError, Problem
from harness.scoring.extract import Extraction
from harness.scoring.score import Score
from harness.scoring.spec import MetricSpec, ScoreFn, ScorerSpec, ScoringContext
from harness.scoring.tone import NO_ANSWER, answer_text
from harness.suite.suite import SUITE_FILE, judge_problems

if TYPE_CHECKING:
    import urllib.error

    from harness.suite.suite import Case, Suite

WEIGHTS_HASH_LIMIT = 1 << 30  # hash local weights only when it takes seconds, not minutes
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
        details = {
            "score": self.score,
            "self_consistency": self.self_consistency,
            "judge": self.judge_identity,
            "samples": list(self.samples),
        }
        return Score("tone:judge", value, self.rationale, details)


def config_problems(config: JudgeConfig, where: str = "judge") -> list[Problem]:
    """Everything wrong with a config, so a bad judge fails before the first case rather than mid-run.

    The rules live with the suite (harness.suite.suite.judge_problems), which checks a suite's judge block at load.
    """
    return judge_problems(asdict(config), where)


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
        raise HarnessInputError(
            problems or [Problem(str(path), "could not be loaded", "see harness/judge.py JudgeConfig")]
        )
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
    user = (
        f"Rubric:\n{rubric}\n\nReference reply (the tone to aim for):\n"
        f"{reference if reference is not None else '(none)'}\n\nReply to judge:\n{answer}"
    )
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
        return JudgeVerdict(
            None,
            score,
            f"unscored: samples split {votes['pass']} pass / {votes['fail']} fail",
            identity,
            top / n,
            samples,
        )
    verdict = "pass" if votes["pass"] > votes["fail"] else "fail"
    reason = next(r for v, r in parsed if v == verdict)
    invalid = n - sum(votes.values())
    note = f", {invalid} unreadable" if invalid else ""
    return JudgeVerdict(
        verdict == "pass", score, f"{top} of {n} samples say {verdict}{note}: {reason}", identity, top / n, samples
    )


def _chat_url(url: str) -> str:
    url = url.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _endpoint(config: JudgeConfig) -> tuple[Completion, dict[str, Any]]:
    import urllib.error
    import urllib.request

    assert config.url is not None
    url = _chat_url(config.url)
    headers = {"Content-Type": "application/json"}
    if config.api_key_env is not None:
        key = os.environ.get(config.api_key_env)
        if not key:
            raise HarnessInputError(
                Problem(
                    "judge: key 'api_key_env'",
                    f"environment variable {config.api_key_env} is not set",
                    f"export {config.api_key_env}=<your key>, or remove api_key_env for a server without keys",
                )
            )
        headers["Authorization"] = f"Bearer {key}"
    identity = {"kind": "endpoint", "url": url, "model": config.model, "weights_sha256": None}

    def complete(messages: list[dict[str, str]], sample: int) -> str:
        body = {
            "model": config.model,
            "messages": messages,
            "temperature": config.temperature,
            "max_tokens": config.max_new_tokens,
        }
        request = urllib.request.Request(url, data=json.dumps(body).encode("utf-8"), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=config.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise HarnessInputError(_http_problem(url, exc, config)) from None
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise HarnessInputError(
                Problem(
                    f"judge endpoint {url}",
                    f"cannot be reached ({reason})",
                    (
                        "start the server or fix judge.url; "
                        "the judge is optional, so leave it off to score tone by rules only"
                    ),
                )
            ) from None
        try:
            content = json.loads(payload)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise HarnessInputError(
                Problem(
                    f"judge endpoint {url}",
                    f"did not answer like an OpenAI-compatible chat completion: {payload[:200]!r}",
                    "point judge.url at a /v1/chat/completions endpoint",
                )
            ) from None
        return content if isinstance(content, str) else ""

    return complete, identity


def _http_problem(url: str, exc: urllib.error.HTTPError, config: JudgeConfig) -> Problem:
    where = f"judge endpoint {url}"
    if exc.code in (401, 403):
        fix = (
            f"check the key in ${config.api_key_env}"
            if config.api_key_env
            else "set api_key_env to the name of the variable that holds the key"
        )
        return Problem(where, f"refused the request (HTTP {exc.code})", fix)
    if exc.code == 404:
        return Problem(
            where,
            "has no such route or model (HTTP 404)",
            f"check judge.url and that the server serves model {config.model!r}",
        )
    detail = exc.read()[:200].decode("utf-8", "replace") if exc.fp is not None else ""
    return Problem(
        where,
        f"answered HTTP {exc.code} {exc.reason}: {detail}",
        "check the server log and the request settings (model, max_new_tokens)",
    )


def _local(config: JudgeConfig) -> tuple[Completion, dict[str, Any]]:
    assert config.path is not None
    folder = Path(config.path).expanduser()
    if not (folder / "config.json").is_file():
        raise HarnessInputError(
            Problem(
                "judge: key 'path'",
                f"{folder} is not a model folder (no config.json)",
                "give a local folder with config.json, *.safetensors and the tokenizer",
            )
        )
    import torch

    from harness.engine.loading import Runtime, load_model, load_tokenizer
    from harness.env import weights_sha256
    from harness.models.embedded import resolve

    try:
        ref = resolve(str(folder))
        tokenizer = load_tokenizer(ref)
        model = load_model(ref, Runtime.pick())
    except (OSError, ValueError) as exc:
        raise HarnessInputError(
            Problem("judge: key 'path'", f"{folder} could not be loaded ({exc})", "give a complete local model folder")
        ) from None
    if not getattr(tokenizer, "chat_template", None):
        raise HarnessInputError(
            Problem("judge: key 'path'", f"{folder} has no chat template", "use an instruct/chat model folder")
        )
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    identity = {
        "kind": "local",
        "path": str(folder.resolve()),
        "model": config.model or folder.name,
        "weights_sha256": weights_sha256(folder) if 0 < size <= WEIGHTS_HASH_LIMIT else None,
    }
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def complete(messages: list[dict[str, str]], sample: int) -> str:
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(model.device)
        options: dict[str, Any] = {
            "max_new_tokens": config.max_new_tokens,
            "pad_token_id": pad,
            "do_sample": config.temperature > 0,
        }
        if config.temperature > 0:
            options["temperature"] = config.temperature
            torch.manual_seed(config.seed + sample)
        with torch.no_grad():
            out = model.generate(**inputs, **options)
        return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    return complete, identity


# --- the registry entry: the judge as a scorer, configured by the suite's judge block ------------------------


def judge_config(settings: Mapping[str, Any], root: Path) -> JudgeConfig:
    """The JudgeConfig of a suite's judge block; a relative local path is relative to the suite folder."""
    known = {f.name for f in fields(JudgeConfig)}
    values = {k: v for k, v in settings.items() if k in known}
    if values.get("path") is not None:
        folder = Path(values["path"]).expanduser()
        values["path"] = str(folder if folder.is_absolute() else root / folder)
    return JudgeConfig(**values)


def judge_scorer(settings: Mapping[str, Any], root: Path) -> ScoreFn:
    """Set the judge up once (a local model loads here), then score each reply's tone as `tone:judge`."""
    judge = make_judge(judge_config(settings, root))
    rubric, field = str(settings["rubric"]), str(settings.get("field", "answer"))

    def score(output: str, ext: Extraction, case: Case, suite: Suite) -> list[Score]:
        answer = answer_text(ext.obj, field)
        if answer is None:
            return [Score("tone:judge", None, NO_ANSWER)]
        reference = case.reference.get(field) if case.reference else None
        return [judge(answer, reference if isinstance(reference, str) else None, rubric).to_score()]

    return score


def _factory(suite: Suite, context: ScoringContext) -> ScoreFn:
    if context.judge is None:
        where = f"{suite.path / SUITE_FILE}: key 'judge'"
        fix = "add a judge: block (see golden/README.md) or remove judge from scorers"
        raise HarnessInputError(Problem(where, "the judge scorer is listed but no judge is configured", fix))
    return judge_scorer(context.judge, suite.path)


SPEC = ScorerSpec(
    name="judge",
    version="1",
    description="optional LLM judge of tone against the suite's rubric: majority of sampled verdicts, with who judged",
    factory=_factory,
    metrics=(
        # a headline column when a suite opts in; not a flip metric: sampled verdicts flip without the model changing
        MetricSpec(
            "tone:judge",
            True,
            "mean",
            "share of judged replies whose majority verdict is pass (split or unreadable: unscored)",
            headline=True,
            flips=False,
        ),
    ),
)
