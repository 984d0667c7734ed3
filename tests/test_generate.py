from __future__ import annotations

import pytest

from harness.engine.generate import JsonObjectTracker, _common_prefix_len, generate, plan_batches
from harness.suite.suite import GenerationSettings, load_suite
from tests.conftest import SUPPORT_VI


def _tracker_closes(text: str) -> int | None:
    tracker = JsonObjectTracker({}, lambda ids: "")
    tracker._piece_of.update({i: ch for i, ch in enumerate(text)})
    for i in range(len(text)):
        if tracker.feed(i):
            return i
    return None


def test_tracker_stops_at_top_level_close_only() -> None:
    text = 'ok {"a": {"b": "}"}, "c": "\\"}"} trailing'
    assert _tracker_closes(text) == text.index("} trailing")
    assert _tracker_closes('{"a": 1') is None
    assert _tracker_closes("} stray { ") is None


def test_plan_batches_groups_by_length() -> None:
    assert plan_batches([5, 1, 9, 3], 2) == [[2, 0], [3, 1]]
    assert sorted(i for b in plan_batches(list(range(7)), 3) for i in b) == list(range(7))


def test_common_prefix_keeps_a_token_per_prompt() -> None:
    assert _common_prefix_len([[1, 2, 3], [1, 2, 3]]) == 2
    assert _common_prefix_len([[1, 2, 3, 4], [1, 2, 5]]) == 2
    assert _common_prefix_len([[9, 2], [1, 2]]) == 0


@pytest.mark.parametrize("share_prefix", [True, False])
def test_batched_outputs_equal_one_at_a_time(tiny_model, tokenizer, share_prefix: bool) -> None:  # noqa: ANN001
    suite = load_suite(SUPPORT_VI)
    chats = [suite.chat(c) for c in suite.cases[:10]]
    settings = GenerationSettings(max_new_tokens=24, stop_at_json_end=True)
    batched = generate(tiny_model, tokenizer, chats, settings, batch_size=4, progress=False, share_prefix=share_prefix)
    single = [generate(tiny_model, tokenizer, [c], settings, batch_size=1, progress=False)[0] for c in chats]
    assert [g.token_ids for g in batched] == [g.token_ids for g in single]
    assert all(len(g.token_ids) <= 24 for g in batched)
    assert {g.stop_reason for g in batched} <= {"eos", "json_end", "max_new_tokens"}


def test_matches_plain_transformers_generate(tiny_model, tokenizer) -> None:  # noqa: ANN001
    """The engine's greedy tokens equal an unbatched transformers generate call (the seed's reference loop)."""
    import torch

    suite = load_suite(SUPPORT_VI)
    chats = [suite.chat(c) for c in suite.cases[:4]]
    settings = GenerationSettings(max_new_tokens=16, stop_at_json_end=False)
    ours = generate(tiny_model, tokenizer, chats, settings, batch_size=4, progress=False)
    for chat, gen in zip(chats, ours):
        enc = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            out = tiny_model.generate(**enc, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        ref = [t for t in out[0, enc["input_ids"].shape[1] :].tolist()]
        if tokenizer.eos_token_id in ref:
            ref = ref[: ref.index(tokenizer.eos_token_id)]
        assert list(gen.token_ids) == ref


def test_replay_proves_identical_outputs_and_catches_a_different_model(tiny_model, tokenizer) -> None:  # noqa: ANN001
    """The merged model is checked by replaying the adapter's tokens: same model -> every case proven;
    another -> caught."""
    import copy

    import torch

    from harness.engine.generate import replay_greedy

    suite = load_suite(SUPPORT_VI)
    chats = [suite.chat(c) for c in suite.cases[:6]]
    settings = GenerationSettings(max_new_tokens=10, stop_at_json_end=True)
    known = generate(tiny_model, tokenizer, chats, settings, batch_size=3, progress=False, keep_logits=4)
    same = replay_greedy(tiny_model, tokenizer, chats, known, batch_size=4, keep_logits=4)
    assert all(g is not None and g.token_ids == k.token_ids for g, k in zip(same, known))
    for g, k in zip(same, known):
        torch.testing.assert_close(g.logits, k.logits, rtol=1e-4, atol=1e-4)
    other = copy.deepcopy(tiny_model)
    with torch.no_grad():
        torch.manual_seed(3)
        other.model.layers[-1].mlp.down_proj.weight.normal_(0, 2.0)  # a badly merged layer
        other.model.norm.weight.mul_(5)
    own = generate(other, tokenizer, chats, settings, batch_size=3, progress=False)
    verdicts = [g is not None for g in replay_greedy(other, tokenizer, chats, known, batch_size=4)]
    assert verdicts == [o.token_ids == k.token_ids for o, k in zip(own, known)] and not all(verdicts)
