"""Evaluation: greedy generation, skill scores, per-sample correctness and sample-wise forgetting.

The sample-wise metrics follow Harmon et al., "Mapping Post-Training Forgetting in Language Models at
Scale" (arXiv:2510.17776): forgetting is the share of items answered correctly before post-training and
wrongly after (1→0), backward transfer the share of 0→1 items. For k-option multiple choice a model that
does not know an item guesses and is right with probability 1/k, so some transitions are pure chance; the
chance-adjusted versions subtract their expected share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .data import chat_prompt_ids
from .hub_tasks import HUB_SKILLS, score_hub_item
from .world import REFUSAL, Item, parse_json_answer


@dataclass(frozen=True)
class Generation:
    """A decoded reply. ``stopped`` is True when the model ended its turn with the end-of-sequence token."""

    text: str
    stopped: bool


@torch.no_grad()
def generate(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16, batch_size: int = 64
) -> list[Generation]:
    """Greedy-decode the assistant reply to each user prompt (chat template applied, left padding)."""
    device = next(model.parameters()).device
    model.eval()
    replies = []
    for start in range(0, len(prompts), batch_size):
        chunk = [chat_prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(ids) for ids in chunk)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        out = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in out[:, width:].tolist():
            stopped = tokenizer.eos_token_id in row
            if stopped:
                row = row[: row.index(tokenizer.eos_token_id)]
            replies.append(Generation(tokenizer.decode(row, skip_special_tokens=False).strip(), stopped))
    return replies


def _first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n])


def score_item(item: Item, reply: Generation) -> bool:
    """Whether ``reply`` solves ``item``, by the rule of the item's skill.

    - ``json``: the reply parses as a JSON object whose only key is the relation and value the answer.
    - ``refusal``: the reply is exactly the fixed refusal sentence.
    - ``chat``: the reply is non-empty, ends its turn and opens no new turn (template following).
    - ``verbose_facts``: the answer word appears in the reply (content, whatever the style).
    - hub skills of the colab profile (GSM8K, AdvBench, JSON questions): ``hub_tasks.score_hub_item``.
    - everything else: exact match with the reference answer.
    """
    text = reply.text
    if item.skill in HUB_SKILLS:
        return score_hub_item(item, text)
    if item.skill == "json":
        parsed = parse_json_answer(text)
        return parsed is not None and parsed == parse_json_answer(item.answer)
    if item.skill == "refusal":
        return text == REFUSAL
    if item.skill == "verbose_facts":
        return item.answer in text.split()
    if item.skill == "chat":
        return reply.stopped and bool(text) and "<user>" not in text and "<asst>" not in text
    return text == item.answer


def per_sample_correct(model, tokenizer, items: Sequence[Item], max_new_tokens: int = 16) -> list[bool]:
    """Generate a reply to each item and score it: one boolean per item (the unit of sample-wise metrics)."""
    replies = generate(model, tokenizer, [i.prompt for i in items], max_new_tokens=max_new_tokens)
    return [score_item(i, r) for i, r in zip(items, replies, strict=True)]


def as_chat_items(items: Sequence[Item]) -> list[Item]:
    """Re-label items as template-following probes (scored by ``score_item``'s ``chat`` rule)."""
    return [Item("chat", i.prompt, i.answer, i.choices, i.answer_index) for i in items]


@torch.no_grad()
def choice_logprobs(model, tokenizer, item: Item) -> torch.Tensor:
    """Sum of log-probabilities of each option's tokens as the assistant reply: shape (k,)."""
    device = next(model.parameters()).device
    prompt = chat_prompt_ids(tokenizer, item.prompt)
    rows = [prompt + tokenizer(c, add_special_tokens=False)["input_ids"] for c in item.choices]
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    token_logp = logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)
    answer_mask = torch.zeros_like(token_logp)
    for k, r in enumerate(rows):
        answer_mask[k, len(prompt) - 1 : len(r) - 1] = 1
    return (token_logp * answer_mask).sum(-1)


def multiple_choice_correct(model, tokenizer, items: Sequence[Item]) -> list[bool]:
    """k-option multiple choice: an item is correct when its answer has the highest log-likelihood."""
    return [int(choice_logprobs(model, tokenizer, i).argmax()) == i.answer_index for i in items]


def skill_scores(
    model, tokenizer, skills: dict[str, Sequence[Item]], max_new_tokens: int = 16
) -> dict[str, list[bool]]:
    """Per-sample correctness of ``model`` on every skill (generation-based), keyed by skill name."""
    return {name: per_sample_correct(model, tokenizer, items, max_new_tokens) for name, items in skills.items()}


def accuracy(correct: Sequence[bool]) -> float:
    """Share of correct items."""
    if len(correct) == 0:
        raise ValueError("accuracy of an empty list is undefined")
    return sum(bool(c) for c in correct) / len(correct)


@dataclass(frozen=True)
class SampleWise:
    """Sample-wise comparison of one skill before and after post-training (all shares of items)."""

    accuracy_before: float
    accuracy_after: float
    forgetting: float
    backward_transfer: float
    forgetting_adjusted: float | None = None
    backward_transfer_adjusted: float | None = None


def chance_transitions(accuracy_before: float, accuracy_after: float, k: int) -> float:
    """Expected share of 1→0 (and equally of 0→1) transitions caused by guessing among k options.

    Under the response model of arXiv:2510.17776 an item is either known or guessed uniformly; an item
    wrong with probability 1 - a is guessed with probability (1 - a) k / (k - 1), and a guessed item
    flips right→wrong with probability (1/k)(k-1)/k. Guessing twice independently gives
    (1 - a_before)(1 - a_after) / (k - 1).
    """
    if k < 2:
        raise ValueError(f"chance adjustment needs k >= 2 options, got k={k}")
    return (1 - accuracy_before) * (1 - accuracy_after) / (k - 1)


def sample_wise(before: Sequence[bool], after: Sequence[bool], k: int | None = None) -> SampleWise:
    """Forgetting (share of 1→0), backward transfer (share of 0→1) and, given k, their chance-adjusted
    versions max(0, F - c) and max(0, BT - c) with c = ``chance_transitions`` (arXiv:2510.17776, sec. 3).

    Note that accuracy_after - accuracy_before = BT - F exactly: the average hides every flip that a
    flip in the other direction cancels.
    """
    if len(before) != len(after):
        raise ValueError(f"before and after must score the same items: got {len(before)} and {len(after)}")
    n = len(before)
    if n == 0:
        raise ValueError("sample-wise metrics of zero items are undefined")
    b, a = [bool(x) for x in before], [bool(x) for x in after]
    forgetting = sum(x and not y for x, y in zip(b, a, strict=False)) / n
    transfer = sum(y and not x for x, y in zip(b, a, strict=False)) / n
    acc_b, acc_a = sum(b) / n, sum(a) / n
    if k is None:
        return SampleWise(acc_b, acc_a, forgetting, transfer)
    chance = chance_transitions(acc_b, acc_a, k)
    return SampleWise(acc_b, acc_a, forgetting, transfer, max(0.0, forgetting - chance), max(0.0, transfer - chance))


def evaluate_skills(model, tokenizer, skills: dict[str, Sequence[Item]], max_new_tokens: int = 16) -> dict[str, float]:
    """Accuracy of ``model`` on each skill (a convenience over ``skill_scores``)."""
    return {name: accuracy(c) for name, c in skill_scores(model, tokenizer, skills, max_new_tokens).items()}


@torch.no_grad()
def next_word_correct(model, tokenizer, pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """Raw-LM knowledge probe: is the greedy next token after each prefix the expected word?

    Used for models without chat training (``tiny-base``, ``tiny-base-cpt``): ``("ada stone lives in",
    "paris")`` is correct when ``paris`` is the arg-max continuation.
    """
    device = next(model.parameters()).device
    correct = []
    for prefix, word in pairs:
        ids = [tokenizer.bos_token_id] + tokenizer(prefix, add_special_tokens=False)["input_ids"]
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, -1]
        target = tokenizer(word, add_special_tokens=False)["input_ids"][0]
        correct.append(int(logits.argmax()) == target)
    return correct
