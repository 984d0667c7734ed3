"""Tone contract: strict loading, every rule passing and failing in Vietnamese and English, and the
shipped support_vi contract accepting every reference answer of its suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import HarnessInputError
from harness.scoring.extract import extract_json
from harness.scoring.registry import Score
from harness.scoring.tone import NO_ANSWER, answer_text, find_phrase, tone_case_scorer, tone_scorer
from harness.suite.tone_contract import ToneContract, load_tone_contract
from tests.conftest import SUPPORT_VI

VI = load_tone_contract(SUPPORT_VI / "tone.yaml")
VI_REF = (
    "Mình rất tiếc vì hàng bị vỡ. Bạn vui lòng gửi ảnh sản phẩm, bao bì và mã đơn hàng để bộ phận khiếu nại xử lý ngay."
)
VI_GOOD = (
    "Mình rất tiếc vì sản phẩm bị vỡ. Bạn vui lòng gửi ảnh sản phẩm và mã đơn hàng để bộ phận khiếu nại xử lý sớm."
)

EN_YAML = """\
language: en
markers:
  apology: ["sorry", "apologise", "apologize"]
  next_action: ["please", "could you"]
forbidden: ["shut up", "not my problem"]
length_words: {min: 5, max: 30}
shouting: {max_caps_ratio: 0.2, max_exclamation_run: 1}
reference_similarity: {metric: chrf, min: 30}
"""
EN_REF = "Sorry your parcel arrived broken. Please send a photo of the box and your order number so we can replace it."
EN_GOOD = (
    "Sorry the parcel arrived broken. Please send us a photo of the box and the order number so we can replace it."
)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tone.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def en(tmp_path: Path) -> ToneContract:
    return load_tone_contract(_write(tmp_path, EN_YAML))


def _scores(contract: ToneContract, answer: str | None, reference: str | None) -> dict[str, Score]:
    return {s.scorer: s for s in tone_scorer(contract)(answer, reference)}


def test_every_support_vi_reference_passes_every_rule() -> None:
    score = tone_scorer(VI)
    lines = (SUPPORT_VI / "cases.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 108
    for line in lines:
        case = json.loads(line)
        reference = case["reference"]["answer"]
        results = score(reference, reference)
        assert [s.scorer for s in results] == VI.rule_names()
        failed = [f"{s.scorer}: {s.explanation}" for s in results if s.value != 1.0]
        assert not failed, f"{case['id']}: {failed}"
        chrf = next(s for s in results if s.scorer == "tone:chrf")
        assert chrf.details["chrf"] == pytest.approx(100.0)


def test_support_vi_contract_values() -> None:
    assert VI.language == "vi" and VI.field == "answer"
    assert [g.name for g in VI.markers] == ["acknowledgement", "next_action"]
    assert (VI.length_words.min, VI.length_words.max) == (8, 80)
    assert VI.reference_similarity.metric == "chrf"
    assert {"không phải việc của tôi", "tự đi mà", "đồ ngu", "shut up"} <= set(VI.forbidden)
    assert VI.source.endswith("tone.yaml")


def test_vietnamese_paraphrase_passes_everything() -> None:
    scores = _scores(VI, VI_GOOD, VI_REF)
    assert all(s.value == 1.0 for s in scores.values()), [s.explanation for s in scores.values()]
    assert scores["tone:markers:acknowledgement"].details == {"matched": "rất tiếc", "found": "rất tiếc"}
    assert scores["tone"].explanation == "tone: all 6 scored rules passed"


@pytest.mark.parametrize(
    ("text", "phrase", "found"),
    [
        ("Ban vui long gui ma don hang.", "vui lòng", "vui long"),
        ("VUI LÒNG chờ trong giây lát", "vui lòng", "VUI LÒNG"),
        ("Bạn vui lòng gửi mã.", "vui long", "vui lòng"),
        ("ban hãy gửi mã", "bạn hãy", "ban hãy"),
        ("Đồ ngu!", "đồ ngu", "Đồ ngu"),
        ("do ngu", "đồ ngu", "do ngu"),
        ("Bạn kiểm tra đồ ngủ trong hộp nhé", "đồ ngu", None),  # ngủ (sleep) is another word than ngu
        ("Mình rất tiếc", "tiếc vì", None),
        ("hãyy gửi", "hãy", None),  # whole words only
    ],
)
def test_vietnamese_matching_ignores_case_and_missing_diacritics(text: str, phrase: str, found: str | None) -> None:
    assert find_phrase(text, phrase, "vi") == found


def test_english_matching_is_case_insensitive_but_not_diacritic_blind() -> None:
    assert find_phrase("PLEASE wait", "please", "en") == "PLEASE"
    assert find_phrase("café", "cafe", "en") is None


def test_vietnamese_missing_marker_names_the_phrases() -> None:
    scores = _scores(VI, "Mình rất tiếc vì sản phẩm bị vỡ khi giao đến tay bạn.", VI_REF)
    miss = scores["tone:markers:next_action"]
    assert miss.value == 0.0
    assert miss.explanation.startswith('next_action: none of ["vui lòng", "bạn hãy", ') and miss.explanation.endswith(
        "] found"
    )
    assert scores["tone:markers:acknowledgement"].value == 1.0
    overall = scores["tone"]
    assert overall.value == 0.0 and "tone:markers:next_action" in overall.explanation
    assert overall.details["failed"] == ["tone:markers:next_action"]


def test_vietnamese_forbidden_phrase_fails_and_is_quoted() -> None:
    text = "Mình rất tiếc nhưng không phải việc của tôi, bạn vui lòng tự đi mà hỏi bên vận chuyển."
    s = _scores(VI, text, VI_REF)["tone:forbidden"]
    assert s.value == 0.0
    assert [f["phrase"] for f in s.details["found"]] == ["không phải việc của tôi", "tự đi mà"]
    assert "'tự đi mà'" in s.explanation
    informal = _scores(VI, "minh rat tiec, ban vui long gui ma don di, do ngu", VI_REF)["tone:forbidden"]
    assert informal.value == 0.0 and informal.details["found"] == [{"phrase": "đồ ngu", "text": "do ngu"}]


def test_vietnamese_length_bounds() -> None:
    short = _scores(VI, "Rất tiếc, vui lòng chờ.", VI_REF)["tone:length"]
    assert short.value == 0.0 and short.explanation == "length: 5 words, below the minimum of 8"
    long_text = " ".join([VI_GOOD] * 4)
    long = _scores(VI, long_text, VI_REF)["tone:length"]
    assert long.value == 0.0 and "above the maximum of 80" in long.explanation
    assert _scores(VI, VI_GOOD, VI_REF)["tone:length"].details["words"] == 27


def test_shouting_vietnamese_fails() -> None:
    s = _scores(VI, "VUI LÒNG CHỜ!!!", VI_REF)["tone:shouting"]
    assert s.value == 0.0
    assert s.details["caps_words"] == ["VUI", "LÒNG", "CHỜ"] and s.details["exclamation_run"] == 3
    assert "ALL-CAPS" in s.explanation and "run of 3 '!'" in s.explanation
    exclaim = _scores(VI, VI_GOOD.replace("sớm.", "sớm!!"), VI_REF)["tone:shouting"]
    assert exclaim.value == 0.0 and exclaim.details["caps_ratio"] == 0.0
    acronym = _scores(VI, "Mình rất tiếc. Bạn vui lòng nhập mã OTP vừa gửi qua SMS để xác minh tài khoản!", VI_REF)[
        "tone:shouting"
    ]
    assert acronym.value == 1.0


def test_chrf_floor_vietnamese() -> None:
    good = _scores(VI, VI_GOOD, VI_REF)["tone:chrf"]
    assert good.value == 1.0 and good.details["chrf"] > VI.reference_similarity.min
    english = _scores(VI, "Sorry about that, please send us your order code and we will check.", VI_REF)["tone:chrf"]
    assert english.value == 0.0 and "below the minimum" in english.explanation
    assert english.details["chrf"] < VI.reference_similarity.min


def test_english_contract_rules_pass_and_fail(en: ToneContract) -> None:
    good = _scores(en, EN_GOOD, EN_REF)
    assert all(s.value == 1.0 for s in good.values()), [s.explanation for s in good.values()]
    assert good["tone:markers:apology"].details["found"] == "Sorry"

    bad = _scores(en, "Not my problem. SHUT UP and WAIT for the COURIER!!!", EN_REF)
    assert bad["tone:markers:apology"].explanation == 'apology: none of ["sorry", "apologise", "apologize"] found'
    assert bad["tone:markers:next_action"].value == 0.0
    assert [f["phrase"] for f in bad["tone:forbidden"].details["found"]] == ["shut up", "not my problem"]
    assert bad["tone:shouting"].value == 0.0
    assert bad["tone:chrf"].value == 0.0
    assert bad["tone:length"].value == 1.0
    assert bad["tone"].value == 0.0 and bad["tone"].details["failed"] == [
        "tone:markers:apology",
        "tone:markers:next_action",
        "tone:forbidden",
        "tone:shouting",
        "tone:chrf",
    ]
    assert _scores(en, "Sorry, please wait.", EN_REF)["tone:length"].value == 0.0
    assert find_phrase("Ban vui long", "vui lòng", en.language) is None


def test_no_answer_is_unscored_everywhere() -> None:
    scores = tone_scorer(VI)(None, VI_REF)
    assert [s.scorer for s in scores] == VI.rule_names()
    assert all(s.value is None and s.passed is None and s.explanation == NO_ANSWER for s in scores)
    assert NO_ANSWER == "no answer field to judge: output had no valid JSON object"


def test_no_reference_leaves_only_chrf_unscored(en: ToneContract) -> None:
    scores = _scores(en, EN_GOOD, None)
    assert scores["tone:chrf"].value is None
    assert scores["tone"].value == 1.0 and scores["tone"].details["unscored"] == ["tone:chrf"]
    assert "unscored: tone:chrf" in scores["tone"].explanation


def test_case_scorer_reads_the_answer_field() -> None:
    from harness.suite.suite import load_suite

    suite = load_suite(SUPPORT_VI)
    case = suite.cases[0]
    score = tone_case_scorer(VI)
    text = json.dumps(case.reference, ensure_ascii=False)
    assert all(s.value == 1.0 for s in score(text, extract_json(text), case, suite))
    assert all(s.value is None for s in score("no json", extract_json("no json"), case, suite))
    missing = score('{"category": "billing"}', extract_json('{"category": "billing"}'), case, suite)
    assert next(s for s in missing if s.scorer == "tone:length").value == 0.0
    assert answer_text(None, "answer") is None and answer_text({"answer": 3}, "answer") == ""


def test_unknown_key_is_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(HarnessInputError) as err:
        load_tone_contract(_write(tmp_path, EN_YAML.replace("forbidden:", "forbiden:")))
    message = str(err.value)
    assert "tone.yaml" in message and "'forbiden'" in message and "did you mean 'forbidden'" in message


def test_nested_unknown_key_and_bad_values_are_all_reported(tmp_path: Path) -> None:
    text = (
        EN_YAML.replace("language: en", "language: fr")
        .replace("{min: 5, max: 30}", "{min: 40, max: 30}")
        .replace("max_caps_ratio: 0.2", "max_caps_ratio: 0.2, max_caps: 1")
        .replace("metric: chrf, min: 30", "metric: bleu, min: 30")
    )
    with pytest.raises(HarnessInputError) as err:
        load_tone_contract(_write(tmp_path, text))
    message = str(err.value)
    for expected in (
        "'fr' is not allowed",
        "shouting.max_caps",
        "did you mean 'max_caps_ratio'",
        "'bleu' is not allowed",
    ):
        assert expected in message, message
    with pytest.raises(HarnessInputError, match="min <= max"):
        load_tone_contract(_write(tmp_path, EN_YAML.replace("{min: 5, max: 30}", "{min: 40, max: 30}")))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('  apology: ["sorry", "apologise", "apologize"]\n', '  Apology: ["sorry"]\n', "lower_snake_case"),
        ('["please", "could you"]', "please", "non-empty list"),
        ('["please", "could you"]', '["please", 3]', "strings containing a word"),
        ('forbidden: ["shut up", "not my problem"]\n', "", "key 'forbidden': missing"),
        ("max_exclamation_run: 1", "max_exclamation_run: 0", "at least 1"),
        ("min: 30}", "min: 130}", "0..100"),
        ("language: en\n", "language: en\nsource: x\n", "set by the loader"),
    ],
)
def test_bad_contract_values_are_rejected(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in EN_YAML
    with pytest.raises(HarnessInputError, match=expected):
        load_tone_contract(_write(tmp_path, EN_YAML.replace(old, new)))


def test_markers_key_is_required(tmp_path: Path) -> None:
    text = "\n".join(line for line in EN_YAML.splitlines() if not line.startswith(("markers", "  ")))
    with pytest.raises(HarnessInputError, match="'markers': missing"):
        load_tone_contract(_write(tmp_path, text))
