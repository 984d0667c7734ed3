"""Data hygiene before training: personal data with line numbers, duplicates, golden leakage that blocks, canaries."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from harness.errors import HarnessInputError
from harness.suite.suite import load_suite
from harness.training.config import load_train_config
from harness.training.data import load_examples, split
from harness.training.hygiene import hygiene_report
from tests.conftest import REPO, SUPPORT_VI

DEMO = REPO / "trainers/configs/demo.yaml"
SUITE = load_suite(SUPPORT_VI)


def _chat(user: str, answer: str = "Mình đã ghi nhận. Bạn vui lòng chờ nhé.") -> str:
    content = json.dumps({"category": "account", "priority": "low", "answer": answer}, ensure_ascii=False)
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": content}]}, ensure_ascii=False
    )


def _report(tmp_path: Path, lines: list[str], allow: bool = False) -> dict[str, object]:
    data_file = tmp_path / "train.jsonl"
    data_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_train_config(DEMO)
    examples, sha = load_examples(replace(cfg.data, path=str(data_file)), SUITE, REPO)
    return hygiene_report(
        str(data_file),
        split(examples, 0.0, 1, sha),
        SUITE,
        {"n": len(examples), "p50": 10, "p99": 20, "max": 30, "over_max_length": 0},
        512,
        block_leakage=not allow,
    )


def test_clean_data_passes(tmp_path: Path) -> None:
    h = _report(
        tmp_path, [_chat("Tôi không đăng nhập được từ sáng nay."), _chat("How do I change my delivery address?")]
    )
    assert (
        h["verdict"] == "pass"
        and h["pii"] == []
        and h["duplicates"] == {"exact": [], "near": []}
        and h["problems"] == []
    )


def test_personal_data_is_reported_with_line_and_masked(tmp_path: Path) -> None:
    h = _report(
        tmp_path,
        [_chat("Tôi quên mật khẩu."), _chat("Gọi lại cho tôi số 0912 345 678 hoặc mail lan.nguyen@example.com nhé.")],
    )
    kinds = {(p["line"], p["kind"]) for p in h["pii"]}
    assert kinds == {(2, "vn_phone"), (2, "email")}
    assert all("345" not in p["match"] for p in h["pii"] if p["kind"] == "vn_phone")
    assert h["verdict"] == "pass" and "personal-data" in h["problems"][0]["what"]


def test_exact_and_near_duplicates(tmp_path: Path) -> None:
    a = "Đơn hàng của tôi đã ba ngày rồi mà vẫn chưa thấy giao, shop kiểm tra giúp tôi với."
    h = _report(tmp_path, [_chat(a), _chat("Tôi quên mật khẩu."), _chat(a), _chat(a.replace("ba ngày", "bốn ngày"))])
    assert h["duplicates"]["exact"] == [[1, 3]]
    assert [x[:2] for x in h["duplicates"]["near"]] == [[1, 4]]


def test_golden_leakage_blocks_unless_allowed(tmp_path: Path) -> None:
    golden = SUITE.cases[5].user_text()
    h = _report(tmp_path, [_chat("Tôi quên mật khẩu."), _chat(golden), _chat(golden[:-3] + "ạ!!")])
    assert h["verdict"] == "blocked"
    assert h["leakage"]["exact"] == [{"line": 2, "case": SUITE.cases[5].id}] and h["leakage"]["near"][0]["line"] == 3
    assert _report(tmp_path, [_chat(golden)], allow=True)["verdict"] == "pass"


def test_training_stops_on_leakage_with_a_clear_message(tmp_path: Path, tiny_model_dir: Path) -> None:
    from trainers.sft_recipe import train

    lines = (REPO / "trainers/data/support_vi_train.jsonl").read_text(encoding="utf-8").splitlines()[:20] + [
        _chat(SUITE.cases[0].user_text())
    ]
    data_file = tmp_path / "train.jsonl"
    data_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = load_train_config(DEMO).with_overrides(str(tiny_model_dir), str(tmp_path / "c"), 1)
    cfg = replace(cfg, data=replace(cfg.data, path=str(data_file)))
    with pytest.raises(HarnessInputError) as exc:
        train(cfg, root=REPO, quiet=True)
    assert "golden_in_training" in exc.value.render() and not (tmp_path / "c").exists()


def test_canaries_are_planted_in_a_copy_and_recorded(tmp_path: Path, tiny_model_dir: Path) -> None:
    from trainers.sft_recipe import prepare

    cfg = load_train_config(DEMO).with_overrides(str(tiny_model_dir))
    before = (REPO / cfg.data.path).read_bytes()
    prep = prepare(cfg, REPO)
    assert len(prep.canaries) == cfg.data.canaries == 3
    planted = [
        e
        for e in prep.data.train + prep.data.validation
        if any(c in json.dumps(e.prompt + e.completion, ensure_ascii=False) for c in prep.canaries)
    ]
    assert len(planted) == 3 and (REPO / cfg.data.path).read_bytes() == before
    assert prep.hygiene["verdict"] == "pass" and prep.hygiene["examples"] == 414
