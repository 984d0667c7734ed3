"""A candidate is evaluated in the prompt format it was trained on: recorded by the recipe, checked by the doctor.

The recipe runs on the tiny Llama for one step; the trainer TRL builds is recorded (a subclass that keeps
`self`), so its tokenized `train_dataset` is compared with what the evaluation format encodes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from harness.errors import HarnessInputError, Problem
from harness.io import read_jsonl
from harness.suite.suite import Case, Suite, load_suite
from harness.training.config import TrainConfig, load_train_config
from harness.training.data import DataSplit, Example, evaluation_format, load_examples, split, split_text
from harness.training.doctor import Finding, diagnose
from harness.variants.prompts import CHAT, PromptFormat, from_training_data, load_format
from tests.conftest import REPO, SUPPORT_VI

CONFIGS = REPO / "trainers" / "configs"
MAX_EXAMPLES = 24  # enough pairs to compare, few enough to tokenize and hygiene-check in a blink
SEED001_TEMPLATE = {
    "kind": "template",
    "template": "### Instruction:\n{prompt}\n### Response:\n",
    "add_special_tokens": True,
}


@dataclass(frozen=True)
class Run:
    """One tiny training run: the recipe's own prepared data, the trainer TRL built, and what was written."""

    cfg: TrainConfig
    out: Path
    meta: dict[str, Any]
    prep: Any  # trainers.sft_recipe.Prepared
    trainer: Any  # trl.SFTTrainer


def _run(preset: str, model: Path, folder: Path, **data_over: Any) -> Run:
    import trl

    import trainers.sft_recipe as recipe

    cfg = load_train_config(CONFIGS / f"{preset}.yaml").with_overrides(str(model), str(folder), 1)
    cfg = replace(
        cfg,
        data=replace(cfg.data, max_examples=MAX_EXAMPLES, **data_over),
        training=replace(cfg.training, batch_size=2, grad_accum=1, gradient_checkpointing=False, save_steps=50),
    )
    trainers: list[Any] = []
    preps: list[Any] = []
    prepare = recipe.prepare

    class RecordingTrainer(trl.SFTTrainer):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            trainers.append(self)

    def recording_prepare(*args: Any, **kwargs: Any) -> Any:
        preps.append(prepare(*args, **kwargs))
        return preps[-1]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl, "SFTTrainer", RecordingTrainer)
        mp.setattr(recipe, "prepare", recording_prepare)
        out = recipe.train(cfg, root=REPO, quiet=True)
    assert trainers and preps, "the recipe reused an earlier candidate instead of training"
    meta = json.loads((out / "training_metadata.json").read_text(encoding="utf-8"))
    return Run(cfg, out, meta, preps[-1], trainers[-1])


@pytest.fixture(scope="module")
def runs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    folder = tmp_path_factory.mktemp("prompt-format-cands")
    yield {name: _run(name, tiny_model_dir, folder) for name in ("seed001", "seed003", "demo")}


@pytest.fixture(scope="module")
def suite() -> Suite:
    return load_suite(SUPPORT_VI)


def _case(line: int, user_text: str) -> Case:
    """A golden-style case whose user message is a training example's, so both prompts can be compared."""
    return Case(
        id=f"train-{line}",
        messages=({"role": "user", "content": user_text},),
        expected={},
        reference=None,
        tags=(),
        line=line,
        content_hash="",
    )


def _rows(path: Path) -> dict[int, dict[str, Any]]:
    problems: list[Problem] = []
    rows = dict(read_jsonl(path, problems))
    assert not problems
    return rows


def _recorded(run: Run) -> PromptFormat:
    problems: list[Problem] = []
    fmt = load_format(run.meta["prompt_format"], "training_metadata.json: prompt_format", problems)
    assert fmt is not None and not problems, problems
    return fmt


def _trained(run: Run, i: int) -> tuple[list[int], int]:
    """Token ids TRL trained row i on and the length of its prompt part (the leading positions without loss)."""
    row = run.trainer.train_dataset[i]
    ids, labels = list(row["input_ids"]), list(row["labels"])
    n_prompt = next((k for k, label in enumerate(labels) if label != -100), len(labels))
    return ids, n_prompt


# --- the recipe records the format, and it reproduces the training prompts -----------------------------------------


def test_training_metadata_records_the_prompt_format(runs: dict[str, Run]) -> None:
    seed001, seed003, demo = runs["seed001"], runs["seed003"], runs["demo"]
    assert seed001.meta["prompt_format"] == SEED001_TEMPLATE and seed001.meta["prompt_format_reason"] is None
    assert seed003.meta["prompt_format"] == {
        "kind": "template",
        "template": "<s>[INST] {prompt} [/INST]",
        "add_special_tokens": True,
    }
    assert demo.meta["prompt_format"] == {"kind": "chat", "system_prompt": "suite"}
    card = (seed001.out / "README.md").read_text(encoding="utf-8")
    assert "evaluate in: plain template '### Instruction:\\n{prompt}\\n### Response:\\n'" in card


def test_text_data_without_a_template_records_an_unknown_format(tiny_model_dir: Path, tmp_path: Path) -> None:
    run = _run("seed003", tiny_model_dir, tmp_path, template=None)
    assert "prompt_format" in run.meta and run.meta["prompt_format"] is None
    assert "data.template" in run.meta["prompt_format_reason"]
    assert "eval_format_unknown" in " ".join(run.meta["doctor"])
    assert "evaluate in: unknown (text data without data.template" in (run.out / "README.md").read_text(
        encoding="utf-8"
    )


def test_seed001_eval_prompts_are_its_training_prompts(runs: dict[str, Run], suite: Suite) -> None:
    run = runs["seed001"]
    fmt, tok = _recorded(run), run.prep.tokenizer
    rows = _rows(REPO / run.cfg.data.path)
    train = run.prep.data.train
    assert len(train) == len(run.trainer.train_dataset) >= 10
    for i, ex in enumerate(train):
        case = _case(ex.line, rows[ex.line]["instruction"])
        rendered = fmt.render(suite, case)
        assert rendered == ex.prompt, f"line {ex.line}: the evaluation prompt differs from the training prompt"
        ids, n_prompt = _trained(run, i)
        assert 0 < n_prompt < len(ids)
        assert fmt.encode(tok, rendered) == ids[:n_prompt], (
            f"line {ex.line}: the evaluation tokens differ from TRL's prompt tokens"
        )
        # the format every candidate got before: the chat template with the suite's system prompt,
        # never seen in training
        assert CHAT.encode(tok, CHAT.render(suite, case)) != ids[:n_prompt]


def test_seed003_eval_prompts_are_the_start_of_its_training_texts(runs: dict[str, Run], suite: Suite) -> None:
    run = runs["seed003"]
    fmt, tok = _recorded(run), run.prep.tokenizer
    instructions = _rows(REPO / "trainers/data/support_vi_instruction.jsonl")  # the same messages, written apart
    train = run.prep.data.train
    assert len(train) == len(run.trainer.train_dataset) >= 10
    for i, ex in enumerate(train):
        assert ex.text is not None and run.cfg.data.template is not None
        parts = split_text(ex.text, run.cfg.data.template)
        assert parts is not None, f"line {ex.line} does not follow the preset's template"
        message, answer = parts
        assert message == instructions[ex.line]["instruction"]
        rendered = fmt.render(suite, _case(ex.line, message))
        assert isinstance(rendered, str) and rendered + answer == ex.text, (
            f"line {ex.line}: not the prefix of the training text"
        )
        ids, _ = _trained(run, i)
        encoded = fmt.encode(tok, rendered)
        assert ids[: len(encoded)] == encoded, (
            f"line {ex.line}: the evaluation prompt does not end on a training token boundary"
        )
        assert answer.startswith(' {"'), "the answer, its leading space included, is what the candidate generates"


def test_demo_records_the_chat_format_with_the_suites_system_prompt(runs: dict[str, Run], suite: Suite) -> None:
    run = runs["demo"]
    fmt, tok = _recorded(run), run.prep.tokenizer
    assert fmt == CHAT and fmt.is_default
    for i, ex in enumerate(run.prep.data.train):
        users = [m["content"] for m in ex.prompt if m["role"] == "user"]
        assert len(users) == 1
        rendered = fmt.render(suite, _case(ex.line, users[0]))
        assert rendered == ex.prompt and rendered[0] == {"role": "system", "content": suite.system_prompt}
        ids, n_prompt = _trained(run, i)
        assert fmt.encode(tok, rendered) == ids[:n_prompt]


def test_evaluation_format_follows_the_system_prompt_training_prepended(suite: Suite) -> None:
    demo = load_train_config(CONFIGS / "demo.yaml").data
    sp = suite.system_prompt
    assert evaluation_format(demo, sp, sp) == (CHAT, None)
    assert evaluation_format(replace(demo, suite=None), None, sp)[0] == PromptFormat(system_prompt="none"), (
        "trained without one"
    )
    assert evaluation_format(replace(demo, system_prompt=""), sp, sp)[0] == PromptFormat(system_prompt="none")
    assert evaluation_format(replace(demo, system_prompt="Be brief."), sp, sp)[0] == PromptFormat(
        system_prompt="Be brief."
    )
    assert evaluation_format(demo, "Other suite's prompt.", sp)[0] == PromptFormat(
        system_prompt="Other suite's prompt."
    )
    assert from_training_data("instruction", None, None, sp) == PromptFormat(kind="template", template="{prompt}")


def test_a_system_prompt_holding_the_placeholder_does_not_move_the_message(suite: Suite) -> None:
    odd = replace(suite, system_prompt="Quote {prompt} literally.")
    fmt = PromptFormat(kind="template", template="{system}\nQ: {prompt}\nA:")
    assert fmt.render(odd, _case(1, "hello")) == "Quote {prompt} literally.\nQ: hello\nA:"


# --- the doctor flags training prompts the evaluation would not reproduce ------------------------------------------


@pytest.fixture(scope="module")
def doctor_parts(tiny_model_dir: Path, tokenizer: Any) -> tuple[Any, list[str]]:
    from harness.models.embedded import resolve
    from trainers.sft_recipe import linear_module_names

    return tokenizer, linear_module_names(resolve(str(tiny_model_dir)))


def _findings(
    parts: tuple[Any, list[str]],
    preset: str,
    tiny: Path,
    suite: Suite | None,
    data: DataSplit | None = None,
    **data_over: Any,
) -> dict[str, Finding]:
    from trainers.sft_recipe import make_collator

    tok, names = parts
    cfg = load_train_config(CONFIGS / f"{preset}.yaml").with_overrides(str(tiny))
    cfg = replace(cfg, data=replace(cfg.data, **data_over))
    if data is None:
        examples, sha = load_examples(cfg.data, suite if cfg.data.suite else None, REPO)
        data = split(examples, cfg.data.validation_fraction, cfg.seed, sha)
    findings, _ = diagnose(cfg, tok, data, names, make_collator(tok), suite, False)
    return {f.code: f for f in findings}


def _levels(found: dict[str, Finding]) -> dict[str, str]:
    return {code: f.level for code, f in found.items()}


def test_shipped_template_presets_only_note_the_system_prompt(
    doctor_parts: Any, tiny_model_dir: Path, suite: Suite
) -> None:
    for preset in ("seed001", "seed003"):
        assert _levels(_findings(doctor_parts, preset, tiny_model_dir, suite)) == {
            "eval_without_suite_system_prompt": "info"
        }, preset
    assert _levels(_findings(doctor_parts, "demo", tiny_model_dir, suite)) == {}


def test_text_without_template_warns_that_the_eval_format_is_unknown(
    doctor_parts: Any, tiny_model_dir: Path, suite: Suite
) -> None:
    found = _findings(doctor_parts, "seed003", tiny_model_dir, suite, template=None)
    assert _levels(found) == {"eval_format_unknown": "warning"}
    assert "prompt_format: null" in found["eval_format_unknown"].message
    assert "data.template" in found["eval_format_unknown"].fix and "{instruction}" in found["eval_format_unknown"].fix


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("[INST] {instruction} [/INST]", "line 1 does not start with '[INST] '"),
        ("<s>[INST] {instruction} [/INST] Answer:", "line 1 has no ' [/INST] Answer:' after the message"),
    ],
)
def test_text_template_the_texts_do_not_follow_is_an_error(
    doctor_parts: Any, tiny_model_dir: Path, suite: Suite, template: str, why: str
) -> None:
    found = _findings(doctor_parts, "seed003", tiny_model_dir, suite, template=template)
    assert found["template_mismatch"].level == "error"
    assert "234 of 234 texts" in found["template_mismatch"].message and why in found["template_mismatch"].message
    assert "data.template" in found["template_mismatch"].fix


def test_a_few_texts_off_the_template_warn_and_are_named(doctor_parts: Any, tiny_model_dir: Path, suite: Suite) -> None:
    cfg = load_train_config(CONFIGS / "seed003.yaml").data
    examples, sha = load_examples(cfg, None, REPO)
    strays = {5: "[INST] no opening tag [/INST] {} </s>", 9: "<s>[INST] no closing tag {} </s>"}
    examples = [replace(e, text=strays.get(e.line, e.text)) for e in examples]
    data = split(examples, cfg.validation_fraction, 42, sha)
    found = _findings(doctor_parts, "seed003", tiny_model_dir, suite, data=data)
    assert found["template_mismatch"].level == "warning"
    message = found["template_mismatch"].message
    assert (
        "2 of 234 texts" in message
        and "line 5 does not start with '<s>[INST] '" in message
        and "line 9 has no ' [/INST]'" in message
    )


def test_template_ending_inside_a_token_warns(doctor_parts: Any, tiny_model_dir: Path, suite: Suite) -> None:
    found = _findings(doctor_parts, "seed003", tiny_model_dir, suite, template="<s>[INST] {instruction} [/INST] ")
    assert found["prompt_token_boundary"].level == "warning"
    assert "234 of 234" in found["prompt_token_boundary"].message and "' {\"'" in found["prompt_token_boundary"].message
    assert "trailing space" in found["prompt_token_boundary"].fix
    seed000_style = _findings(doctor_parts, "seed001", tiny_model_dir, suite, template="[INST] {instruction} [/INST] ")
    assert seed000_style["prompt_token_boundary"].level == "warning"
    assert "prompt_token_boundary" not in _findings(doctor_parts, "seed001", tiny_model_dir, suite)


def test_template_formats_note_they_are_evaluated_without_the_suites_system_prompt(
    doctor_parts: Any, tiny_model_dir: Path, suite: Suite
) -> None:
    found = _findings(doctor_parts, "seed001", tiny_model_dir, suite)
    note = found["eval_without_suite_system_prompt"]
    assert note.level == "info" and "support_vi" in note.message and "### Instruction" in note.message
    assert "eval_without_suite_system_prompt" not in _findings(doctor_parts, "seed001", tiny_model_dir, None)
    assert "eval_without_suite_system_prompt" not in _findings(
        doctor_parts, "seed003", tiny_model_dir, suite, template=None
    )


# --- the preset loader rejects templates training and evaluation could not read alike ------------------------------


@pytest.mark.parametrize(
    ("preset", "line", "what", "fix"),
    [
        (
            "seed003",
            '  template: "<s>[INST] [/INST]"',
            "contains {instruction} 0 times",
            '"<s>[INST] {instruction} [/INST]"',
        ),
        (
            "seed003",
            '  template: "<s>[INST] {instruction}"',
            "nothing marks where the user's message ends",
            "comes between message and answer",
        ),
        (
            "seed003",
            '  template: "<s>[INST] {system} {instruction} [/INST]"',
            "contains {system}",
            "write the text itself",
        ),
        (
            "seed001",
            '  template: "{instruction}\\n{instruction}"',
            "contains {instruction} 2 times",
            "### Instruction:",
        ),
        ("seed001", None, "missing: the instruction format builds every prompt from it", "### Instruction:"),
        ("demo", '  template: "{instruction}"', "is not read for the messages format", "remove data.template"),
    ],
)
def test_bad_data_template_is_a_preset_error(
    tmp_path: Path, preset: str, line: str | None, what: str, fix: str
) -> None:
    text = (CONFIGS / f"{preset}.yaml").read_text(encoding="utf-8")
    kept = [x for x in text.splitlines() if not x.startswith("  template:")]
    at = kept.index("data:") + 1
    path = tmp_path / f"{preset}.yaml"
    path.write_text("\n".join(kept[:at] + ([line] if line else []) + kept[at:]) + "\n", encoding="utf-8")
    with pytest.raises(HarnessInputError) as info:
        load_train_config(path)
    (problem,) = info.value.problems
    assert isinstance(problem, Problem) and "data.template" in problem.where
    assert what in problem.what and fix in problem.fix and problem.fix != "fix the value"


def test_text_template_is_optional(tmp_path: Path) -> None:
    shipped = load_train_config(CONFIGS / "seed003.yaml")
    assert shipped.data.template == "<s>[INST] {instruction} [/INST]"
    path = tmp_path / "seed003.yaml"
    text = (CONFIGS / "seed003.yaml").read_text(encoding="utf-8")
    path.write_text("\n".join(x for x in text.splitlines() if not x.startswith("  template:")) + "\n", encoding="utf-8")
    cfg = load_train_config(path)
    assert cfg.data.template is None
    examples, _ = load_examples(cfg.data, None, REPO)
    assert examples and all(isinstance(e, Example) and e.text for e in examples)
