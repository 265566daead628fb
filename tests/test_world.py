"""The tiny world's data: deterministic, fully covered by the tokenizer, well-formed skills and tasks."""

from __future__ import annotations

import pytest

from posttrain.world.build import make_tokenizer
from posttrain.world.tiny import JSON_SUFFIX, REFUSAL, RELATIONS, World, WorldSpec, parse_json_answer


@pytest.fixture(scope="module")
def world() -> World:
    return World()


def test_same_spec_gives_same_world_and_other_seed_another(world):
    again = World(WorldSpec())
    assert world.people == again.people
    assert world.pretraining_corpus(50) == again.pretraining_corpus(50)
    assert World(WorldSpec(seed=1)).people != world.people


def test_people_are_distinct_and_splits_disjoint(world):
    names = [p.name for p in world.people + world.cpt_people + world.new_people]
    assert len(names) == len(set(names)) == 160 + 48 + 48


def test_tokenizer_covers_every_text_of_the_world(world):
    tok = make_tokenizer(world)
    texts = world.pretraining_corpus(300) + world.cpt_corpus(100)
    texts += [t for pair in world.chat_sft_examples() for t in pair]
    texts += [c for items in world.skills.values() for item in items for c in (item.prompt, *item.choices)]
    texts += [
        c for name in world.new_task_names() for item in world.new_task(name) for c in (item.prompt, *item.choices)
    ]
    unknown = {w for t in texts for w in t.split() if tok.convert_tokens_to_ids(w) == tok.unk_token_id}
    assert unknown == set()


def test_every_item_has_four_options_with_the_answer_at_its_index(world):
    items = [i for items in world.skills.values() for i in items] + world.new_task("multiplication")
    for item in items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4, item
        assert item.choices[item.answer_index] == item.answer, item


def test_records_put_attributes_right_after_the_subject(world):
    p = world.people[0]
    assert world.record_line(p).split() == [p.first, p.last, p.city, p.job, p.colour, "."]


def test_chat_sft_holds_out_every_fourth_person_and_request(world):
    prompts = {u for u, _ in world.chat_sft_examples()}
    held = [p for i, p in enumerate(world.people) if world.held_out_of_chat(i)]
    assert len(held) == 40
    assert not any(f" {p.name} " in f" {u} " for u in prompts for p in held)
    refusals = world.skills["refusal"]
    assert sum(r.prompt in prompts for r in refusals) == len(refusals) - len(refusals) // 4


def test_chat_sft_by_skill_partitions_the_sft_data_and_held_out_prompts_lie_outside_it(world):
    groups = world.chat_sft_by_skill()
    assert sorted(pair for pairs in groups.values() for pair in pairs) == sorted(world.chat_sft_examples())
    assert {name: len(pairs) for name, pairs in groups.items() if name in ("refusal", "howto", "greeting")} == {
        "refusal": 27,
        "howto": 27,
        "greeting": 1,
    }
    assert all(user.endswith(JSON_SUFFIX) for user, _ in groups["json"])
    assert all(parse_json_answer(a) is None for _, a in groups["fact"])
    trained = {user for user, _ in world.chat_sft_examples()}
    held_out = world.held_out_prompts()
    assert {name: len(p) for name, p in held_out.items()} == {
        "fact": 360,
        "json": 360,
        "restate": 120,
        "refusal": 9,
        "howto": 9,
        "addition": 25,
    }
    assert not any(prompt in trained for prompts in held_out.values() for prompt in prompts)


def test_json_answers_parse_and_refusal_is_fixed(world):
    item = world.skills["json"][0]
    assert parse_json_answer(item.answer) == {item.relation: world.people[0].value(item.relation)}
    assert parse_json_answer("{ oops") is None
    assert all(i.answer == REFUSAL for i in world.skills["refusal"])
    assert {i.relation for i in world.skills["fact"]} == set(RELATIONS)


def test_new_tasks_are_new(world):
    times = world.new_task("multiplication")
    assert len(times) == 81 and all(" times " in i.prompt for i in times)
    minus = world.new_task("subtraction")  # one-digit a >= b: 55 pairs, answers from 0 to 9
    assert len(minus) == 55 and all(" minus " in i.prompt for i in minus)
    assert all(0 <= int(i.answer) <= 9 for i in minus) and minus[-1].prompt == "what is 9 minus 9 ?"
    new_people = {p.name for p in world.new_people}
    assert {i.subject for i in world.new_task("new_facts")} == new_people
    verbose = world.new_task("verbose_facts")
    assert [i.prompt for i in verbose] == [i.prompt for i in world.new_task("new_facts")]
    reference = world.long_form_answer(verbose[0])
    assert verbose[0].answer in reference.split() and len(reference.split()) > 8
    plain = world.plain_answer(verbose[0])
    assert plain.split()[-2] == verbose[0].answer and len(plain.split()) < len(reference.split())
    with pytest.raises(ValueError, match="multiplication, subtraction, new_facts, verbose_facts"):
        world.new_task("division")


def test_name_pools_too_small_for_the_people_raise():
    with pytest.raises(ValueError, match="enlarge the name pools"):
        World(WorldSpec(n_first_names=5, n_last_names=5))


def test_edit_cases_are_counterfactual_and_their_probes_are_what_they_claim(world):
    from posttrain.world.tiny import STATEMENTS, statement_prompt

    people = world.people[:12]
    cases = world.edit_cases(people, "job", world.people, seed=3)
    assert [c.request.subject for c in cases] == [p.name for p in people]
    assert cases == world.edit_cases(people, "job", world.people, seed=3)
    assert [c.request.target_new for c in cases] != [
        c.request.target_new for c in world.edit_cases(people, "job", world.people, seed=4)
    ]
    tokenizer = make_tokenizer(world)
    for person, case in zip(people, cases, strict=True):
        request = case.request
        assert request.text == f"{person.name} works as a" and request.prompt == statement_prompt("job", 1)
        assert request.target_true == person.job and request.target_new != person.job
        # paraphrases: the two other job templates, bare and after a sentence about someone else; never the request
        assert request.text not in case.paraphrases and len(case.paraphrases) == 4
        assert all(p.endswith(("earns a living as a", "is a")) and person.name in p for p in case.paraphrases)
        # neighbours: other people whose true job is the old object
        neighbours = {p.name: p for p in world.people}
        for prompt in case.neighbours:
            name = prompt.removesuffix(" works as a")
            assert name != person.name and neighbours[name].job == person.job
        # the other attributes: city and colour in two statement templates each, with their true answers
        assert {(a.prompt, a.answer) for a in case.attributes} == {
            (statement_prompt(r, i).format(person.name), person.value(r)) for r in ("city", "colour") for i in (0, 2)
        }
        # portability: chat questions in every job template and one JSON request, answered by the new object
        assert [i.answer for i in case.portability[:3]] == [request.target_new] * 3
        assert case.portability[-1].scorer == "word_json" and request.target_new in case.portability[-1].answer
        for text in (*case.paraphrases, *case.neighbours, *(i.prompt for i in case.portability)):
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"], text
    assert statement_prompt("city", 0) == STATEMENTS["city"][0].split(" {v}")[0].replace("{n}", "{}")
