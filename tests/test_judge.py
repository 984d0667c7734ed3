"""The optional LLM judge against a tiny in-process OpenAI-compatible server, and on a tiny local model."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessInputError
from harness.scoring.judge import JudgeConfig, config_problems, judge_tone, load_judge_config, make_judge, parse_verdict

RUBRIC = "Polite, acknowledges the problem, gives one clear next action, no shouting."
ANSWER = "Mình rất tiếc vì hàng bị vỡ. Bạn vui lòng gửi ảnh và mã đơn hàng."
PASS = '{"verdict": "pass", "reason": "polite and gives a next action"}'
FAIL = '{"verdict": "fail", "reason": "dismissive"}'
MALFORMED = 'Sure! Here is my verdict: {"verdict": "pass"}'


@dataclass
class FakeServer:
    """Answers each chat completion with the next scripted reply; records what it was sent."""

    url: str
    replies: list[str] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200


@pytest.fixture()
def server() -> Iterator[FakeServer]:
    state = FakeServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            if state.status != 200:
                payload = b'{"error": "nope"}'
            else:
                content = state.replies[(len(state.requests) - 1) % len(state.replies)]
                payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()


def _endpoint(url: str, **kw: Any) -> JudgeConfig:
    return JudgeConfig(kind="endpoint", url=url, model="judge-model", **kw)


def test_majority_verdict_identity_and_self_consistency(server: FakeServer) -> None:
    server.replies = [PASS, PASS, MALFORMED]
    verdict = judge_tone(_endpoint(server.url), ANSWER, "Mình rất tiếc...", RUBRIC)
    assert verdict.passed is True
    assert verdict.score == 1.0  # both readable samples said pass
    assert verdict.self_consistency == pytest.approx(2 / 3)
    assert verdict.judge_identity == {
        "kind": "endpoint",
        "url": server.url + "/v1/chat/completions",
        "model": "judge-model",
        "weights_sha256": None,
    }
    assert verdict.rationale.startswith("2 of 3 samples say pass, 1 unreadable: polite")
    assert verdict.samples[2]["verdict"] is None and "not a JSON object" in verdict.samples[2]["reason"]
    assert [r["path"] for r in server.requests] == ["/v1/chat/completions"] * 3
    sent = server.requests[0]["body"]
    assert sent["model"] == "judge-model" and sent["temperature"] == 0.7
    assert ANSWER in sent["messages"][1]["content"] and RUBRIC in sent["messages"][1]["content"]
    score = verdict.to_score()
    assert (score.scorer, score.value, score.details["self_consistency"]) == ("tone:judge", 1.0, pytest.approx(2 / 3))


def test_fail_majority(server: FakeServer) -> None:
    server.replies = [FAIL, PASS, FAIL, FAIL, PASS]
    verdict = judge_tone(_endpoint(server.url + "/v1/", samples=5), ANSWER, None, RUBRIC)
    assert verdict.passed is False
    assert verdict.score == pytest.approx(2 / 5)
    assert verdict.self_consistency == pytest.approx(3 / 5)
    assert "(none)" in server.requests[0]["body"]["messages"][1]["content"]


def test_all_malformed_is_unscored_with_the_reasons(server: FakeServer) -> None:
    server.replies = [
        MALFORMED,
        '{"verdict": "maybe", "reason": "?"}',
        '{"verdict": "pass", "reason": "ok", "score": 9}',
    ]
    verdict = judge_tone(_endpoint(server.url + "/v1/chat/completions"), ANSWER, None, RUBRIC)
    assert verdict.passed is None and verdict.score is None and verdict.self_consistency is None
    assert verdict.rationale.startswith("unscored: no sample gave a valid verdict")
    assert "'maybe'" in verdict.rationale and "exactly the keys verdict and reason" in verdict.rationale
    assert verdict.to_score().value is None


def test_even_split_is_unscored(server: FakeServer) -> None:
    server.replies = [PASS, FAIL]
    verdict = judge_tone(_endpoint(server.url, samples=2), ANSWER, None, RUBRIC)
    assert verdict.passed is None and verdict.score == 0.5 and verdict.self_consistency == 0.5
    assert "split 1 pass / 1 fail" in verdict.rationale


def test_api_key_is_read_from_the_named_variable(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.replies = [PASS]
    monkeypatch.setenv("TONE_JUDGE_KEY", "secret-123")
    judge_tone(_endpoint(server.url, api_key_env="TONE_JUDGE_KEY", samples=1), ANSWER, None, RUBRIC)
    assert server.requests[0]["auth"] == "Bearer secret-123"
    monkeypatch.delenv("TONE_JUDGE_KEY")
    with pytest.raises(HarnessInputError, match="TONE_JUDGE_KEY is not set"):
        judge_tone(_endpoint(server.url, api_key_env="TONE_JUDGE_KEY", samples=1), ANSWER, None, RUBRIC)


def test_http_errors_say_what_to_fix(server: FakeServer) -> None:
    server.status = 401
    with pytest.raises(HarnessInputError, match=r"HTTP 401.*api_key_env"):
        judge_tone(_endpoint(server.url, samples=1), ANSWER, None, RUBRIC)
    server.status = 500
    with pytest.raises(HarnessInputError, match=r"HTTP 500.*nope"):
        judge_tone(_endpoint(server.url, samples=1), ANSWER, None, RUBRIC)


def test_unreachable_url_names_the_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(HarnessInputError) as err:
        judge_tone(_endpoint(url, timeout_s=5.0), ANSWER, None, RUBRIC)
    message = str(err.value)
    assert f"{url}/v1/chat/completions" in message and "cannot be reached" in message and "start the server" in message


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        (PASS, "pass"),
        ("  " + FAIL + "\n", "fail"),
        (MALFORMED, None),
        ('{"verdict": "PASS", "reason": "x"}', None),
        ('{"verdict": "pass", "reason": 1}', None),
        ('["pass"]', None),
        ("", None),
    ],
)
def test_parse_verdict_is_strict(text: str, verdict: str | None) -> None:
    assert parse_verdict(text)[0] == verdict


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (JudgeConfig(kind="endpoint", model="m"), "must be an http(s) URL"),
        (JudgeConfig(kind="endpoint", url="http://x"), "'model'"),
        (JudgeConfig(kind="endpoint", url="http://x", model="m", api_key_env="sk-abc123"), "not the key"),
        (JudgeConfig(kind="endpoint", url="http://x", model="m", temperature=0.0), "temperature 0"),
        (JudgeConfig(kind="endpoint", url="http://x", model="m", samples=0), "at least 1"),
        (JudgeConfig(kind="local"), "'path'"),
        (JudgeConfig(kind="local", path="/m", url="http://x"), "only for kind: endpoint"),
    ],
)
def test_config_problems(config: JudgeConfig, expected: str) -> None:
    assert any(expected in str(p) for p in config_problems(config)), config_problems(config)
    with pytest.raises(HarnessInputError):
        make_judge(config)


def test_load_judge_config(tmp_path: Path) -> None:
    path = tmp_path / "judge.yaml"
    path.write_text("kind: endpoint\nurl: http://localhost:8000\nmodel: m\nsamples: 5\n", encoding="utf-8")
    assert load_judge_config(path) == JudgeConfig(kind="endpoint", url="http://localhost:8000", model="m", samples=5)
    path.write_text("kind: endpoint\nurl: http://localhost:8000\nmodel: m\napi_key: sk-1\n", encoding="utf-8")
    with pytest.raises(HarnessInputError, match=r"'api_key'.*did you mean 'api_key_env'"):
        load_judge_config(path)


def test_local_missing_folder_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(HarnessInputError, match="no config.json"):
        make_judge(JudgeConfig(kind="local", path=str(tmp_path), samples=1, temperature=0.0))


def test_local_judge_on_a_tiny_model(tiny_model_dir: Path) -> None:
    from harness.env import weights_sha256

    config = JudgeConfig(kind="local", path=str(tiny_model_dir), samples=2, temperature=1.0, max_new_tokens=8)
    judge = make_judge(config)
    verdict = judge(ANSWER, None, RUBRIC)
    assert verdict.judge_identity == {
        "kind": "local",
        "path": str(tiny_model_dir.resolve()),
        "model": tiny_model_dir.name,
        "weights_sha256": weights_sha256(tiny_model_dir),
    }
    assert len(verdict.samples) == 2
    assert judge(ANSWER, None, RUBRIC).samples == verdict.samples  # sample i is seeded with seed + i
    # a random 2-layer model does not write the strict JSON verdict, so the case is unscored, not failed
    assert verdict.passed is None and verdict.score is None
    assert verdict.rationale.startswith("unscored: no sample gave a valid verdict")
