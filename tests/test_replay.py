"""Lab 03 machinery (``posttrain.methods.replay``): the replay mixer's exact share over a stream, and the SDFT
rewrite-and-filter step on fixtures and on tiny-chat."""

from __future__ import annotations

import math

import pytest

from posttrain.core.data import Example
from posttrain.core.evaluate import Generation
from posttrain.core.models import load_model
from posttrain.methods.replay import (
    ReplayMixer,
    filter_rewrites,
    pseudo_replay_pairs,
    replay_slots,
    self_output_targets,
)
from posttrain.world.tiny import World, restate_prompt, words_from_reference

OLD = [Example([1, i], [1, i]) for i in range(7)]


def new_batch(start: int, size: int) -> list[Example]:
    return [Example([2, start + i], [2, start + i]) for i in range(size)]


@pytest.mark.parametrize("ratio", [0.0, 0.01, 0.05, 0.2, 1 / 3, 1.0])
@pytest.mark.parametrize("batch_size", [1, 8, 32])
def test_replay_share_is_exact_over_any_prefix_of_the_stream(ratio, batch_size):
    mixer = ReplayMixer(OLD, ratio, seed=0)
    replayed = 0
    for step in range(40):
        batch = mixer(new_batch(step * batch_size, batch_size))
        assert len(batch) == batch_size
        replayed += sum(example.input_ids[0] == 1 for example in batch)
        slots = (step + 1) * batch_size
        assert replayed == math.floor(slots * ratio + 1e-9) == mixer.replayed


def test_replay_cycles_through_every_old_example_in_a_seeded_order():
    first = [e.input_ids[1] for e in ReplayMixer(OLD, 1.0, seed=3)(new_batch(0, 14))]
    again = [e.input_ids[1] for e in ReplayMixer(OLD, 1.0, seed=3)(new_batch(0, 14))]
    assert first == again
    assert sorted(first[:7]) == sorted(first[7:]) == list(range(7))
    assert first != [e.input_ids[1] for e in ReplayMixer(OLD, 1.0, seed=4)(new_batch(0, 14))]


@pytest.mark.parametrize(("ratio", "old", "message"), [(1.5, OLD, "in \\[0, 1\\]"), (0.05, [], "needs old examples")])
def test_bad_replay_settings_are_refused(ratio, old, message):
    with pytest.raises(ValueError, match=message):
        ReplayMixer(old, ratio)


def test_sdft_filter_keeps_correct_rewrites_and_falls_back_otherwise():
    reference = "well , as far as i know , ada stone lives in the city of paris these days"
    pairs = [("where does ada stone live ?", reference)] * 4
    replies = [
        Generation("paris", True),  # the model's own short answer: kept
        Generation("london", True),  # wrong content: the reference is the target
        Generation("paris", False),  # never ended its turn: dropped
        Generation("", True),  # empty: dropped
    ]
    rewrites = filter_rewrites(pairs, replies, words_from_reference)
    assert [r.kept for r in rewrites] == [True, False, False, False]
    assert [r.target for r in rewrites] == ["paris", reference, reference, reference]
    with pytest.raises(ValueError, match=r"2 \(user, reference\) pairs but 1 replies"):
        filter_rewrites(pairs[:2], replies[:1], words_from_reference)


def test_tiny_chat_rewrites_verbose_references_of_unseen_people_in_its_own_words():
    model, tokenizer = load_model("tiny-chat", device="cpu")
    world = World()
    items = world.new_task("verbose_facts")
    pairs = [(item.prompt, World.long_form_answer(item)) for item in items]
    rewrites = self_output_targets(model, tokenizer, pairs, restate_prompt, words_from_reference)
    kept = [r for r in rewrites if r.kept]
    assert restate_prompt("q ?", "ref") == "q ? hint : ref ."
    assert len(kept) >= 0.9 * len(rewrites), f"only {len(kept)} of {len(rewrites)} rewrites passed the check"
    assert all(r.rewrite == item.answer for r, item in zip(rewrites, items, strict=True) if r.kept)


def test_pseudo_replay_answers_old_prompts_as_the_model_does():
    model, tokenizer = load_model("tiny-chat", device="cpu")
    world = World()
    old = [item for name in ("refusal", "addition") for item in world.skills[name][:20]]
    pairs = pseudo_replay_pairs(model, tokenizer, [item.prompt for item in old])
    assert len(pairs) >= 38 and all(reply for _, reply in pairs)
    answers = {item.prompt: item.answer for item in old}
    assert sum(reply == answers[prompt] for prompt, reply in pairs) >= 0.9 * len(pairs)  # the model knew these


def test_replay_slots_use_an_exact_fraction():
    assert sum(replay_slots(0, 100, 0.29)) == 29  # 0.29 * 100 == 28.999999999999996 in floating point
    assert replay_slots(0, 8, 0.25) == [False, False, False, True] * 2
    assert replay_slots(3, 2, 0.25) == [True, False]  # slots 4 and 5


def test_a_slot_rule_of_the_wrong_length_is_refused():
    mixer = ReplayMixer(OLD, 0.5, slots=lambda first, size, ratio: [True])
    with pytest.raises(ValueError, match="1 flags for a batch of 4"):
        mixer(new_batch(0, 4))
