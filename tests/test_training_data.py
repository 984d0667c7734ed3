"""The training data for the demo candidate: valid, labelled, and disjoint from the golden suite."""

from __future__ import annotations

import difflib
import json
from collections import Counter

from harness.suite.suite import load_suite
from tests.conftest import REPO, SUPPORT_VI

TRAIN = REPO / "trainers" / "data" / "support_vi_train.jsonl"


def _rows() -> list[dict]:
    return [json.loads(line) for line in TRAIN.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_training_data_is_valid_chat_json() -> None:
    suite = load_suite(SUPPORT_VI)
    validator = suite.validator()
    rows = _rows()
    assert len(rows) >= 200
    cells = Counter()
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert "user" in roles and "assistant" in roles
        answer = json.loads(row["messages"][-1]["content"])
        assert not list(validator.iter_errors(answer))
        cells[(answer["category"], answer["priority"])] += 1
    assert len(cells) == 9


def test_no_golden_case_in_training_data() -> None:
    golden = [c.messages[-1]["content"].lower() for c in load_suite(SUPPORT_VI).cases]
    train = [m["content"].lower() for row in _rows() for m in row["messages"] if m["role"] == "user"]
    assert not set(golden) & set(train), "a golden prompt appears verbatim in the training data"
    worst = max(difflib.SequenceMatcher(None, g, t).ratio() for g in golden for t in train)
    assert worst < 0.75, f"a training prompt nearly duplicates a golden prompt (similarity {worst:.2f})"
