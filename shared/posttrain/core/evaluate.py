"""Evaluation: greedy generation, skill scores, per-sample correctness and sample-wise forgetting.

The sample-wise metrics follow Harmon et al., "Mapping Post-Training Forgetting in Language Models at
Scale" (arXiv:2510.17776): forgetting is the share of items answered correctly before post-training and
wrongly after (1→0), backward transfer the share of 0→1 items. For k-option multiple choice a model that
does not know an item guesses and is right with probability 1/k, so some transitions are pure chance; the
chance-adjusted versions subtract their expected share.

Scoring knows no skill by name: every ``Item`` names its *scorer*, and the module that makes a skill's items
registers that scorer (``register_scorer``); this module defines only ``exact`` (the reply equals the reference).
The tiny world (``posttrain.world.tiny``, ``posttrain.world.benchmarks``) and the hub data (``posttrain.world.hub``)
register theirs, and a new lab's data plugs in its own (a word error rate, a multi-answer reward) the same way.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from .data import chat_prompt_ids, memoized_per_tokenizer


@dataclass(frozen=True)
class Item:
    """One evaluation or training example of a skill.

    ``prompt`` is the user message, ``answer`` the reference assistant reply, ``choices`` the k multiple-choice
    options (``choices[answer_index] == answer``) for chance-adjusted metrics, and ``subject``/``relation`` say which
    fact the item is about (empty for non-fact skills). ``scorer`` names the registered rule that judges a generated
    reply (``register_scorer``; default ``exact``); None marks an item scored only by multiple choice.
    """

    skill: str
    prompt: str
    answer: str
    choices: tuple[str, ...]
    answer_index: int
    subject: str = ""
    relation: str = ""
    scorer: str | None = "exact"


@dataclass(frozen=True)
class Generation:
    """A decoded reply. ``stopped`` is True when the model ended its turn with the end-of-sequence token."""

    text: str
    stopped: bool


Scorer = Callable[[Item, Generation], bool]
_SCORERS: dict[str, Scorer] = {}


def register_scorer(name: str) -> Callable[[Scorer], Scorer]:
    """Decorator: register a scorer (``scorer(item, reply) -> bool``) under ``name``, the value of ``Item.scorer``.

    The module that makes a skill's items registers its scorer at import, so whoever holds such an item has it.
    Registering the same function again (a reloaded module) is allowed; another function under a taken name is not.
    """

    def register(scorer: Scorer) -> Scorer:
        known = _SCORERS.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (scorer.__module__, scorer.__qualname__):
            raise ValueError(
                f"the scorer name {name!r} is taken by {known.__module__}.{known.__qualname__}; "
                f"register {scorer.__module__}.{scorer.__qualname__} under another name"
            )
        _SCORERS[name] = scorer
        return scorer

    return register


@register_scorer("exact")
def exact_match(item: Item, reply: Generation) -> bool:
    """The reply is exactly the reference answer."""
    return reply.text == item.answer


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a reply: the tokenizer's end-of-sequence token, then each ``eos_token_id`` of the
    model's generation config (Qwen2.5's instruct models stop at ``<|im_end|>`` and at ``<|endoftext|>``)."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    configured = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return [i for i in dict.fromkeys([tokenizer.eos_token_id, *configured]) if i is not None]


def greedy_config(model, tokenizer, max_new_tokens: int) -> GenerationConfig:
    """Pure greedy decoding: the model's generation config with sampling off and every sampling field cleared
    (a checkpoint's temperature, top-p and top-k would only be ignored, with a warning per call), no repetition
    penalty (Qwen's 1.05-1.1 would penalise the repeated numbers of worked arithmetic), one beam, and every stop id
    (``stop_token_ids``)."""
    stops = stop_token_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = copy.deepcopy(model.generation_config)
    config.update(
        do_sample=False,
        num_beams=1,
        temperature=None,
        top_p=None,
        top_k=None,
        min_p=None,
        typical_p=None,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad,
    )
    return config


# Prompts decoded together by ``generate``: on 2 CPU cores 128 is the fastest of 32-512 for a tiny-world snapshot, and
# the colab budget (``core.budget.LabBudget``) counts the decoding steps of a T4 with it.
GENERATION_BATCH = 128


@torch.no_grad()
def generate_with_choices(
    model,
    tokenizer,
    prompts: Sequence[str],
    choice_items: Sequence[Item] = (),
    max_new_tokens: int = 16,
    batch_size: int = GENERATION_BATCH,
) -> tuple[list[Generation], list[torch.Tensor]]:
    """Greedy-decode the assistant reply to each user prompt (chat template applied, left padding, ``greedy_config``),
    and score ``choice_items`` (``choice_logprobs``) in the same passes.

    A reply ends at the first of the model's stop ids (``stop_token_ids``); ``stopped`` says whether one came within
    ``max_new_tokens``. A multiple-choice item whose prompt is among ``prompts`` continues its batch's KV cache,
    cropped back to the prompts (``_option_logprobs``): a snapshot's multiple choice asks the generated skills'
    questions, so their prompts are run once. Items with other prompts get passes of their own.
    """
    device = next(model.parameters()).device
    model.eval()
    config = greedy_config(model, tokenizer, max_new_tokens)
    config.return_dict_in_generate = True  # with the KV cache
    stops, pad = set(config.eos_token_id), config.pad_token_id
    wanted: dict[str, list[int]] = {}
    for index, item in enumerate(choice_items):
        wanted.setdefault(item.prompt, []).append(index)
    scores: list[torch.Tensor] = [torch.empty(0)] * len(choice_items)
    replies = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        chunk = [chat_prompt_ids(tokenizer, p) for p in batch]
        width = max(len(ids) for ids in chunk)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in chunk], device=device)
        asked = [(row, index) for row, p in enumerate(batch) for index in wanted.pop(p, [])]
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        for row in out.sequences[:, width:].tolist():
            end = next((k for k, token in enumerate(row) if token in stops), None)
            text = tokenizer.decode(row if end is None else row[:end], skip_special_tokens=False).strip()
            replies.append(Generation(text, stopped=end is not None))
        if asked:
            cache = None
            if width > 1:  # keep the prompts but their last token, which leads each item's options
                cache = out["cache"] if "cache" in out else out["past_key_values"]  # renamed in transformers 5
                cache.crop(width - 1 - cache.get_seq_length())  # a negative crop removes tokens, in every version
            rows = [row for row, _ in asked]
            options = [_option_ids(tokenizer, choice_items[index]) for _, index in asked]
            leads = [[chunk[row][-1]] for row in rows]
            chosen = _choices_from_cache(model, cache, mask[:, :-1], rows, leads, options, pad)
            for (_, index), s in zip(asked, chosen, strict=True):
                scores[index] = s
    rest = [index for indices in wanted.values() for index in indices]
    for index, s in zip(rest, choice_logprobs(model, tokenizer, [choice_items[i] for i in rest]), strict=True):
        scores[index] = s
    return replies, scores


def generate(
    model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16, batch_size: int = GENERATION_BATCH
) -> list[Generation]:
    """Greedy-decode the assistant reply to each user prompt: ``generate_with_choices`` without multiple choice."""
    return generate_with_choices(model, tokenizer, prompts, (), max_new_tokens, batch_size)[0]


def score_item(item: Item, reply: Generation) -> bool:
    """Whether ``reply`` solves ``item``, by the scorer the item names (``Item.scorer``, see ``register_scorer``)."""
    if item.scorer is None:
        raise ValueError(
            f"items of skill {item.skill!r} are multiple choice only: score them by option log-likelihood "
            "(multiple_choice_correct), not from a generated reply"
        )
    scorer = _SCORERS.get(item.scorer)
    if scorer is None:
        raise ValueError(
            f"no scorer named {item.scorer!r} is registered (known: {', '.join(sorted(_SCORERS))}); import the module "
            f"that makes the {item.skill!r} items, which registers it with posttrain.core.evaluate.register_scorer"
        )
    return scorer(item, reply)


def per_sample_correct(model, tokenizer, items: Sequence[Item], max_new_tokens: int = 16) -> list[bool]:
    """Generate a reply to each item and score it: one boolean per item (the unit of sample-wise metrics)."""
    return per_group_correct(model, tokenizer, [items], max_new_tokens)[0]


def per_group_correct(model, tokenizer, groups: Sequence[Sequence[Item]], max_new_tokens: int = 16) -> list[list[bool]]:
    """``per_sample_correct`` of several groups of items (skills) at once (``correct_with_choices``)."""
    return correct_with_choices(model, tokenizer, groups, (), max_new_tokens)[0]


def correct_with_choices(
    model, tokenizer, groups: Sequence[Sequence[Item]], choice_items: Sequence[Item] = (), max_new_tokens: int = 16
) -> tuple[list[list[bool]], list[bool]]:
    """Per-item correctness of several groups of generated items (skills) and of multiple-choice items, at once.

    Every distinct prompt is decoded once, in batches of ``generate_with_choices``, and each item scores that reply by
    its own scorer (a benchmark's ``chat`` probes reuse the prompts of the other skills); the multiple-choice items
    continue the decoded prompts' passes. Greedy decoding is deterministic, so a reply does not depend on which group
    asked for it; ``tests/test_batched_evaluation.py`` checks that every item's correctness equals one ``generate``
    per group, and one forward pass per multiple-choice item, on the shipped models.
    """
    prompts = list(dict.fromkeys(item.prompt for items in groups for item in items))
    replies, choices = generate_with_choices(model, tokenizer, prompts, choice_items, max_new_tokens)
    by_prompt = dict(zip(prompts, replies, strict=True))
    generated = [[score_item(item, by_prompt[item.prompt]) for item in items] for items in groups]
    return generated, [int(s.argmax()) == item.answer_index for item, s in zip(choice_items, choices, strict=True)]


# Multiple choice holds at most this many logits at once (256 MiB in float32): a batch of Qwen2.5 items (a vocabulary
# of 151 936) then fits a T4 beside the model, and the tiny world's (300) is never cut.
MC_LOGIT_BUDGET = 2**26


@memoized_per_tokenizer
def reply_ids(tokenizer, text: str) -> list[int]:
    """The token ids of ``text`` as (part of) an assistant reply: no special tokens."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _option_ids(tokenizer, item: Item) -> list[list[int]]:
    """The token ids of each of an item's options (``reply_ids``)."""
    return [reply_ids(tokenizer, c) for c in item.choices]


def _forward_with_cache(
    model, input_ids: torch.Tensor, cache=None, attention_mask: torch.Tensor | None = None, cache_only: bool = False
) -> tuple[torch.Tensor, object]:
    """Logits of one forward pass continuing ``cache`` (None: a fresh one) and the grown KV cache.

    ``attention_mask`` covers what the cache holds and the new tokens (0 at padding); the positions are counted from
    it, as ``generate`` counts them, so a left-padded row's first real token is at position 0. ``cache_only`` keeps
    just the last position's logits where the model can (``logits_to_keep``): a pass that only fills the cache should
    not hold a 151 936-word vocabulary's logits for every token. Transformers 5 renamed the cache argument and output
    from ``past_key_values`` to ``cache``; this takes whichever the model has.
    """
    parameters = inspect.signature(model.forward).parameters
    name = "cache" if "cache" in parameters else "past_key_values"
    kwargs = {name: cache} if cache is not None else {}
    if cache_only and "logits_to_keep" in parameters:
        kwargs["logits_to_keep"] = 1
    if attention_mask is not None:
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        kwargs |= {"attention_mask": attention_mask, "position_ids": positions[:, -input_ids.shape[1] :]}
    out = model(input_ids=input_ids, use_cache=True, **kwargs)
    return out.logits, out[name]


def shared_prefix_length(options: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every option has in common (all of the shortest option's, when it begins the others)."""
    shortest = min(map(len, options), default=0)
    return next((t for t in range(shortest) if len({option[t] for option in options}) > 1), shortest)


def _option_logprobs(
    model, cache, mask: torch.Tensor, leads: Sequence[Sequence[int]], options, pad: int
) -> torch.Tensor:
    """(n, k) log-likelihoods of each row's k options continuing what ``cache`` holds for the row.

    ``mask`` is the cache's attention mask (n, cached), 0 at left padding; ``leads[i]`` are row i's tokens still to
    feed before its options (at least the prompt's last token, whose logits score the first option token). A first
    pass feeds each lead followed by the tokens all of the row's options share (``shared_prefix_length``), so they are
    scored once; a second pass, from the cache repeated once per option, feeds every option's own tokens. Both are
    right-padded: a pad is masked, and after the last real token of a row only pads follow.
    """
    n, k = len(options), len(options[0])
    shared = [shared_prefix_length(o) for o in options]
    contexts = [[*lead, *o[0][:s]] for lead, o, s in zip(leads, options, shared, strict=True)]
    ids, real = right_padded(contexts, pad, mask.device)
    mask = torch.cat([mask, real], dim=1)
    logits, cache = _forward_with_cache(model, ids, cache, mask)
    logp = torch.log_softmax(logits.float(), dim=-1)  # position t predicts the token after context token t
    totals = torch.zeros(n, k, device=mask.device)
    for row, (lead, o, s) in enumerate(zip(leads, options, shared, strict=True)):
        if s:
            targets = torch.tensor(o[0][:s], device=mask.device)
            totals[row] += logp[row, len(lead) - 1 : len(lead) - 1 + s].gather(-1, targets[:, None]).sum()
    after_context = logp[torch.arange(n), torch.tensor([len(c) - 1 for c in contexts])]  # (n, vocab)
    tails = [option[s:] for o, s in zip(options, shared, strict=True) for option in o]  # row = item * k + option
    if max(map(len, tails)) == 0:
        return totals
    ids, real = right_padded(tails, pad, mask.device)
    tail_logp = after_context.repeat_interleave(k, dim=0)[:, None]
    if ids.shape[1] > 1:
        cache.batch_repeat_interleave(k)
        fed = torch.ones(n * k, ids.shape[1] - 1, dtype=mask.dtype, device=mask.device)
        rest, _ = _forward_with_cache(model, ids[:, :-1], cache, torch.cat([mask.repeat_interleave(k, 0), fed], 1))
        tail_logp = torch.cat([tail_logp, torch.log_softmax(rest.float(), dim=-1)], dim=1)
    token_logp = tail_logp.gather(-1, ids[:, :, None]).squeeze(-1)
    return totals + (token_logp * real).sum(-1).view(n, k)


def _rows_per_pass(model, leads, options) -> int:
    """How many items' options fit one pass within ``MC_LOGIT_BUDGET``: the widest of an item's two passes."""
    widest = max(
        max(len(lead) + shared_prefix_length(o), len(o) * max(map(len, o)))
        for lead, o in zip(leads, options, strict=True)
    )
    return max(1, MC_LOGIT_BUDGET // (widest * model.config.vocab_size))


def _choices_from_cache(
    model, cache, mask: torch.Tensor, rows: Sequence[int], leads, options: Sequence[Sequence[list[int]]], pad: int
) -> list[torch.Tensor]:
    """``_option_logprobs`` of the items in the given ``rows`` of a batch's cache (None: nothing cached) and its
    attention ``mask``. Items whose passes have the same shapes (option count, context length, longest own option)
    share them, so neither pass pads, and a pass is split to the logit budget. Every pass but the last continues a copy
    of the cache's selected rows; the last uses up the cache itself."""
    shapes: dict[tuple[int, int, int], list[int]] = {}
    for index, (lead, choices) in enumerate(zip(leads, options, strict=True)):
        shared = shared_prefix_length(choices)
        shape = (len(choices), len(lead) + shared, max(len(choice) - shared for choice in choices))
        shapes.setdefault(shape, []).append(index)
    passes = []
    for members in shapes.values():
        size = _rows_per_pass(model, [leads[i] for i in members], [options[i] for i in members])
        passes += [members[start : start + size] for start in range(0, len(members), size)]
    scores: list[torch.Tensor] = [torch.empty(0)] * len(options)
    for number, chunk in enumerate(passes):
        selected = torch.tensor([rows[i] for i in chunk], device=mask.device)
        part = cache if cache is None or number == len(passes) - 1 else copy.deepcopy(cache)
        if part is not None:
            part.batch_select_indices(selected)
        totals = _option_logprobs(
            model, part, mask[selected], [leads[i] for i in chunk], [options[i] for i in chunk], pad
        )
        for row, index in enumerate(chunk):
            scores[index] = totals[row].cpu()
    return scores


@torch.no_grad()
def choice_logprobs(model, tokenizer, items: Sequence[Item]) -> list[torch.Tensor]:
    """Sum of log-probabilities of each option's tokens as the assistant reply to each item: one (k,) tensor per item.

    Items whose prompts have the same length are batched: one forward pass over their prompts but the last token (no
    padding) fills a KV cache, which ``_option_logprobs`` continues: the last prompt token and the tokens all of an
    item's options share (the ``{ " job " : "`` of a JSON reply) in one pass, every option's own tokens in one more,
    from the cache repeated once per option. A pass holds at most ``MC_LOGIT_BUDGET`` logits.
    """
    device = next(model.parameters()).device
    model.eval()
    prompts = [chat_prompt_ids(tokenizer, item.prompt) for item in items]
    options = [_option_ids(tokenizer, item) for item in items]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    buckets: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        buckets.setdefault(len(prompt), []).append(index)
    scores: list[torch.Tensor] = [torch.empty(0)] * len(items)
    for length, members in buckets.items():
        size = _rows_per_pass(model, [prompts[i][-1:] for i in members], [options[i] for i in members])
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            cache = None
            if length > 1:
                prefixes = torch.tensor([prompts[i][:-1] for i in chunk], device=device)
                _, cache = _forward_with_cache(model, prefixes, cache_only=True)
            mask = torch.ones(len(chunk), length - 1, dtype=torch.long, device=device)
            leads = [prompts[i][-1:] for i in chunk]
            chosen = _choices_from_cache(model, cache, mask, range(len(chunk)), leads, [options[i] for i in chunk], pad)
            for index, s in zip(chunk, chosen, strict=True):
                scores[index] = s
    return scores


def multiple_choice_correct(model, tokenizer, items: Sequence[Item]) -> list[bool]:
    """k-option multiple choice: an item is correct when its answer has the highest log-likelihood."""
    return [
        int(s.argmax()) == i.answer_index for i, s in zip(items, choice_logprobs(model, tokenizer, items), strict=True)
    ]


def skill_scores(
    model, tokenizer, skills: dict[str, Sequence[Item]], max_new_tokens: int = 16
) -> dict[str, list[bool]]:
    """Per-sample correctness of ``model`` on every skill (generation-based), keyed by skill name."""
    return dict(zip(skills, per_group_correct(model, tokenizer, list(skills.values()), max_new_tokens), strict=True))


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


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of a raw-text prompt: the beginning-of-sequence token (when the tokenizer has one), then the text."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ([tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []) + ids


def pad_id(tokenizer) -> int:
    """The id right-padded raw-text batches pad with (masked out, so any id will do where there is none)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def right_padded(sequences: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) of token sequences padded on the right to the longest, on ``device``."""
    width = max(len(s) for s in sequences)
    ids = torch.tensor([list(s) + [pad] * (width - len(s)) for s in sequences], device=device)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
    return ids, mask


@torch.no_grad()
def next_token_ids(model, tokenizer, prompts: Sequence[str]) -> list[int]:
    """The arg-max next token after each raw-text prompt (``encode``d), in one right-padded batch."""
    if not prompts:
        return []
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, p) for p in prompts]
    ids, mask = right_padded(encoded, pad_id(tokenizer), device)
    logits = model(input_ids=ids, attention_mask=mask).logits
    last = torch.tensor([len(e) - 1 for e in encoded], device=device)
    return logits[torch.arange(len(prompts), device=device), last].argmax(-1).tolist()


def next_word_correct(model, tokenizer, pairs: Sequence[tuple[str, str]]) -> list[bool]:
    """Raw-LM knowledge probe: is the greedy next token after each prefix the expected word's first token?

    Used for models without chat training (``tiny-base``, ``tiny-base-cpt``): ``("ada stone lives in",
    "paris")`` is correct when ``paris`` is the arg-max continuation.
    """
    predicted = next_token_ids(model, tokenizer, [prefix for prefix, _ in pairs])
    expected = [tokenizer(word, add_special_tokens=False)["input_ids"][0] for _, word in pairs]
    return [p == e for p, e in zip(predicted, expected, strict=True)]
