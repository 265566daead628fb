"""Scoring travels with the data: every item names its scorer, the module that makes the items registers it, and
``posttrain.core.evaluate`` dispatches without knowing any skill."""

from __future__ import annotations

import pytest

from posttrain.core.evaluate import Generation, Item, register_scorer, score_item
from posttrain.world import hub
from posttrain.world.benchmarks import as_chat_items, tiny_forgetting_benchmark
from posttrain.world.tiny import REFUSAL, World


def test_every_tiny_item_names_a_registered_scorer_that_accepts_its_reference():
    world = World()
    bench = tiny_forgetting_benchmark("verbose_facts")
    items = [i for skill in world.skills.values() for i in skill] + bench.new_task_eval
    items += [i for name in World.new_task_names() for i in world.new_task(name)]
    items += [i for skill in bench.old_skills.values() for i in skill]
    for item in items:
        assert score_item(item, Generation(item.answer, stopped=True)), (item.skill, item.scorer)


def test_each_skill_is_judged_by_its_own_rule():
    world = World()
    json_item = world.skills["json"][0]
    assert json_item.scorer == "word_json"
    spaced = Generation(json_item.answer.replace(" ", ""), stopped=True)  # the same JSON, other spacing
    assert score_item(json_item, spaced)
    verbose = world.new_task("verbose_facts")[0]
    assert verbose.scorer == "answer_word"
    assert score_item(verbose, Generation(f"i think it is {verbose.answer} .", stopped=True))
    assert not score_item(world.new_task("new_facts")[0], Generation(f"it is {verbose.answer}", stopped=True))
    refusal = world.skills["refusal"][0]
    assert refusal.scorer == "exact" and refusal.answer == REFUSAL
    (probe,) = as_chat_items([refusal])
    assert probe.skill == "chat" and probe.scorer == "chat_turn"
    assert score_item(probe, Generation("anything at all", stopped=True))
    assert not score_item(probe, Generation("anything at all", stopped=False))
    assert not score_item(probe, Generation("fine <user> and you", stopped=True))


def test_hub_items_name_the_hub_scorers():
    for skill in sorted(hub.HUB_SKILLS):
        item = Item(skill, "q", "42", (), -1, scorer=skill)
        reply = {"gsm8k": "so 40 + 2 = 42", "refusal_open": "I'm sorry, I can't", "json_open": '{"answer": "42"}'}
        assert score_item(item, Generation(reply[skill], stopped=True))
    assert [i.scorer for i in hub.json_questions(2, seed=0)] == ["json_open", "json_open"]


def test_a_new_skill_plugs_in_its_scorer_without_touching_evaluate():
    @register_scorer("test_any_of")
    def any_of(item: Item, reply: Generation) -> bool:
        return reply.text in item.answer.split("|")

    item = Item("several_answers", "name a colour", "red|blue", (), -1, scorer="test_any_of")
    assert score_item(item, Generation("blue", stopped=True))
    assert not score_item(item, Generation("green", stopped=True))
    assert register_scorer("test_any_of")(any_of) is any_of  # a reloaded module registers the same function again


def test_scoring_errors_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match=r"no scorer named 'wer' is registered.*import the module that makes"):
        score_item(Item("speech", "q", "a", (), -1, scorer="wer"), Generation("a", stopped=True))
    with pytest.raises(ValueError, match=r"multiple choice only.*multiple_choice_correct"):
        score_item(Item("mmlu", "q", "a", ("a", "b"), 0, scorer=None), Generation("a", stopped=True))
    with pytest.raises(ValueError, match=r"the scorer name .exact. is taken by posttrain\.core\.evaluate\.exact_match"):
        register_scorer("exact")(lambda item, reply: True)
