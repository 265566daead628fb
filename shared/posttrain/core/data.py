"""Chat formatting, loss masking and batching.

Supervised fine-tuning trains only on the assistant's reply: the prompt tokens get the label
``IGNORE_INDEX`` so that cross-entropy skips them (Ouyang et al. 2022, arXiv:2203.02155, sec. 3.5).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass
class Example:
    """A tokenised training sequence; ``labels[i] == IGNORE_INDEX`` where no loss is taken."""

    input_ids: list[int]
    labels: list[int]


def memoized_per_tokenizer(encode: Callable[[object, str], list[int]]) -> Callable[[object, str], list[int]]:
    """Decorator: remember ``encode(tokenizer, text)``'s token ids, per tokenizer.

    A lab's snapshots encode the same few hundred prompts and options at every step, and rendering a chat template
    costs about 0.2 ms a prompt. The memo holds each tokenizer weakly (a discarded tokenizer frees its entries) and
    keys on its vocabulary size and chat template too, so added tokens or a new template encode afresh. Each call
    returns a new list.
    """
    memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @functools.wraps(encode)
    def remembered(tokenizer, text: str) -> list[int]:
        try:
            table = memo.setdefault(tokenizer, {})
        except TypeError:  # a tokenizer that cannot be weakly referenced is encoded every time
            return encode(tokenizer, text)
        key = (len(tokenizer), getattr(tokenizer, "chat_template", None), text)
        if key not in table:
            table[key] = tuple(encode(tokenizer, text))
        return list(table[key])

    return remembered


@memoized_per_tokenizer
def chat_prompt_ids(tokenizer, user: str) -> list[int]:
    """Token ids of a one-turn conversation up to (and including) the assistant's turn marker."""
    return list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True, return_dict=False
        )
    )


def chat_example(tokenizer, user: str, assistant: str) -> Example:
    """Tokenise one exchange with the tokenizer's chat template and mask the prompt out of the loss.

    The prompt is the template rendered with ``add_generation_prompt=True``; the reply is everything the
    full conversation adds after it (the answer and the end-of-turn token).
    """
    prompt = chat_prompt_ids(tokenizer, user)
    full = list(
        tokenizer.apply_chat_template(
            [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
            tokenize=True,
            return_dict=False,
        )
    )
    if full[: len(prompt)] != prompt:
        raise ValueError(
            "the chat template does not render the prompt as a prefix of the full conversation; "
            "loss masking needs that property (check the tokenizer's chat_template)"
        )
    return Example(full, [IGNORE_INDEX] * len(prompt) + full[len(prompt) :])


def text_example(tokenizer, text: str) -> Example:
    """A raw-text (pre-training style) sequence: the loss is on every token after the first."""
    ids = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids += tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return Example(ids, list(ids))


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into ``input_ids``, ``attention_mask`` and ``labels`` of shape (B, T)."""
    length = max(len(e.input_ids) for e in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        input_ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
