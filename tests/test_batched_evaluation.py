"""Batched evaluation gives the per-item path's answers, item by item, on the shipped models.

Multiple choice used to run one forward pass per item (its k options right-padded to one width). Now
``evaluate.choice_logprobs`` scores the prompts of many items in one pass and continues the options from a KV cache:
the tokens all options share once, then every option's own tokens from the cache repeated once per option. A
snapshot (``take_snapshot``) goes further: its multiple-choice items ask the generated skills' questions, so they
continue the left-padded caches of generation itself (``generate_with_choices``). What can differ is floating-point
rounding (other matrix shapes, the cache path, padding that is masked): the tests bound that difference and check it
is far below the smallest gap between an item's two best options, so no argmax can flip, and that every item's
correctness is the same.

Generation left-pads; ``take_snapshot`` decodes every distinct prompt once, across skills, in batches of 128 rather
than one ``generate`` call per skill in batches of 64. Left padding changes which other prompts share a batch, which
could move a near-tie between two next tokens; the tests show every reply is byte-identical.
"""

from __future__ import annotations

import pytest
import torch

from posttrain.core import evaluate
from posttrain.core.data import chat_prompt_ids
from posttrain.core.evaluate import (
    Item,
    choice_logprobs,
    generate,
    generate_with_choices,
    multiple_choice_correct,
    score_item,
)
from posttrain.core.forgetting import take_snapshot
from posttrain.core.models import load_model
from posttrain.world.benchmarks import tiny_forgetting_benchmark

SHIPPED = ("tiny-chat", "tiny-base-cpt", "tiny-base")


@torch.no_grad()
def per_item_choice_logprobs(model, tokenizer, item: Item) -> torch.Tensor:
    """The former path, kept as the oracle: one forward pass over the item's k options, right-padded."""
    prompt = chat_prompt_ids(tokenizer, item.prompt)
    rows = [prompt + tokenizer(c, add_special_tokens=False)["input_ids"] for c in item.choices]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    token_logp = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    answer = torch.zeros_like(token_logp)
    for k, row in enumerate(rows):
        answer[k, len(prompt) - 1 : len(row) - 1] = 1
    return (token_logp * answer).sum(-1)


def top_two_gap(scores: torch.Tensor) -> float:
    """How far the best option's log-likelihood lies above the second best."""
    best = scores.sort(descending=True).values
    return float(best[0] - best[1])


@pytest.fixture(scope="module")
def bench():
    return tiny_forgetting_benchmark(n_per_skill=100)


@pytest.mark.parametrize("name", SHIPPED)
def test_batched_multiple_choice_matches_one_pass_per_item_on_every_skill(name, bench):
    model, tokenizer = load_model(name, device="cpu")
    model.eval()
    items = [item for skill_items in bench.multiple_choice.values() for item in skill_items]
    prompts = list(
        dict.fromkeys(i.prompt for group in [bench.new_task_eval, *bench.old_skills.values()] for i in group)
    )
    assert {item.prompt for item in items} <= set(prompts)  # so the snapshot path continues generation's caches
    paths = {
        "own passes": choice_logprobs(model, tokenizer, items),
        "generation's passes": generate_with_choices(model, tokenizer, prompts, items)[1],
    }
    start = 0
    for skill, skill_items in bench.multiple_choice.items():
        oracle = [per_item_choice_logprobs(model, tokenizer, item) for item in skill_items]
        smallest_gap = min(top_two_gap(o) for o in oracle)
        for path, scores in paths.items():
            batched = scores[start : start + len(skill_items)]
            rounding = max(float((b - o).abs().max()) for b, o in zip(batched, oracle, strict=True))
            assert rounding < 1e-4, f"{name}/{skill}, {path}: log-likelihoods differ by {rounding}"
            assert 2 * rounding < smallest_gap, f"{name}/{skill}, {path}: a tie ({smallest_gap}) within {rounding}"
        start += len(skill_items)
        expected = [int(o.argmax()) == item.answer_index for item, o in zip(skill_items, oracle, strict=True)]
        assert multiple_choice_correct(model, tokenizer, skill_items) == expected
    snapshot = take_snapshot(model, tokenizer, bench)
    assert snapshot.mc == {
        skill: multiple_choice_correct(model, tokenizer, i) for skill, i in bench.multiple_choice.items()
    }


@pytest.mark.parametrize("name", SHIPPED)
def test_one_decode_per_distinct_prompt_matches_one_generate_per_skill(name, bench):
    model, tokenizer = load_model(name, device="cpu")
    groups = [bench.new_task_eval, *bench.old_skills.values()]
    per_skill = [generate(model, tokenizer, [item.prompt for item in items], batch_size=64) for items in groups]
    oracle = [
        [score_item(item, reply) for item, reply in zip(items, replies, strict=True)]
        for items, replies in zip(groups, per_skill, strict=True)
    ]
    snapshot = take_snapshot(model, tokenizer, bench, with_mc=False)
    assert [snapshot.new, *snapshot.old.values()] == oracle
    distinct = list(dict.fromkeys(item.prompt for items in groups for item in items))
    assert len(distinct) < sum(map(len, groups))  # the chat probes repeat the other skills' prompts
    replies = dict(zip(distinct, generate(model, tokenizer, distinct), strict=True))
    assert [[replies[item.prompt] for item in items] for items in groups] == per_skill  # byte-identical replies


MIXED = [
    Item("s", "hi there", "hello", ("hello", "hi !", "how are you today ?"), 0),
    Item("s", "how are you today ?", "hi", ("hi", "there"), 0),
    Item("s", "hi", "there ,", ("there ,", "", "you"), 0),
    Item("s", "hello !", "today", ("today", "you are", "hi there", "!"), 0),
    Item("s", "hi there", "you are", ("you are", "you are here", "you"), 0),  # a shared prefix, one option all of it
    Item("s", "are you there ?", "hi", ("hi !", "hi there"), 0),
]


@pytest.mark.parametrize("logit_budget", [evaluate.MC_LOGIT_BUDGET, 1], ids=["batched", "one_item_per_pass"])
def test_batched_multiple_choice_handles_mixed_lengths_option_counts_and_a_qwen2_model(
    tiny_qwen2_dir, logit_budget, monkeypatch
):
    monkeypatch.setattr(evaluate, "MC_LOGIT_BUDGET", logit_budget)  # what a 151 936-word vocabulary does to a batch
    model, tokenizer = load_model(str(tiny_qwen2_dir), device="cpu")
    oracle = [per_item_choice_logprobs(model, tokenizer, item) for item in MIXED]
    prompts = ["hello !", "hi", "a longer prompt that pads the others on the left", "hi there", "how are you today ?"]
    plain = generate(model, tokenizer, prompts, batch_size=3)
    replies, continued = generate_with_choices(model, tokenizer, prompts, MIXED, batch_size=3)
    assert replies == plain  # scoring the options leaves the replies as they were
    for scores in (choice_logprobs(model, tokenizer, MIXED), continued):  # the last item's prompt is not decoded
        for item, got, expected in zip(MIXED, scores, oracle, strict=True):
            assert got.shape == (len(item.choices),)
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
        assert scores[2][1] == 0.0  # an empty option has no tokens to score
