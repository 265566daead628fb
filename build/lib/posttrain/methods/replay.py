"""Replay and self-distillation (Lab 03): keep showing the model old behaviour while it learns the new task.

- ``ReplayMixer`` mixes a fixed share of old examples into the training stream (experience replay; Rolnick et al.
  2019, "Experience Replay for Continual Learning", arXiv:1811.11682), exactly and deterministically
  (``replay_slots``).
- ``pseudo_replay_pairs`` replays the model's *own* answers to old prompts, generated before training, when the old
  reference answers are gone (pseudo-rehearsal; Robins 1995, "Catastrophic forgetting, rehearsal and
  pseudorehearsal"; for LLMs, self-synthesized rehearsal, Huang et al. 2024, arXiv:2403.01244).
- ``self_output_targets`` builds self-distillation fine-tuning (SDFT) targets (Yang et al. 2024, "Self-Distillation
  Bridges Distribution Gap in Language Model Fine-Tuning", arXiv:2402.13669, sec. 3): the model rewrites each
  reference answer in its own words, conditioned on the reference; a rewrite that fails a correctness check falls
  back to the reference (``filter_rewrites``). The rewrite prompt and the correctness check are the data's: the
  tiny world's ``restate_prompt`` / ``words_from_reference``, the hub's ``sdft_prompt`` / ``same_final_answer``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from itertools import pairwise

from ..core.data import Example
from ..core.evaluate import Generation, generate


def replay_slots(first_slot: int, batch_size: int, ratio: float) -> list[bool]:
    """Which slots of a batch hold an old example, for slots ``first_slot`` + 1 … ``first_slot`` + ``batch_size``
    of the training stream: slot i (counted from 1) does exactly when ⌊i·ρ⌋ > ⌊(i−1)·ρ⌋.

    After any n slots, ⌊n·ρ⌋ of them were replayed, whatever the batch size. ρ is made an exact fraction first
    (0.29 · 100 is 28.999999999999996 in floating point, one replayed example short).
    """
    rho = Fraction(ratio).limit_denominator(10_000)
    replayed = [(slot * rho.numerator) // rho.denominator for slot in range(first_slot, first_slot + batch_size + 1)]
    return [after > before for before, after in pairwise(replayed)]


class ReplayMixer:
    """A ``train(..., batch_mixer=...)`` hook that turns a share ``ratio`` of all training slots into old examples
    (experience replay at a fixed ratio, arXiv:1811.11682).

    ``slots(first_slot, batch_size, ratio)`` picks the replayed slots (``replay_slots``: exact over any prefix of
    the stream). A replayed slot's new example is dropped, so the batch keeps its size (a fixed compute budget).
    Old examples come in a shuffled order drawn from ``seed`` and cycle when exhausted; ``train``'s ``rng`` is
    not used.
    """

    def __init__(
        self,
        old: Sequence[Example],
        ratio: float,
        seed: int = 0,
        slots: Callable[[int, int, float], list[bool]] = replay_slots,
    ) -> None:
        if not 0 <= ratio <= 1:
            raise ValueError(f"the replay ratio is a share of the training stream in [0, 1], got {ratio}")
        if ratio > 0 and not old:
            raise ValueError("replay needs old examples: pass a non-empty list of old-task Examples")
        self.old = list(old)
        self.ratio = ratio
        self.slots = slots
        self.seen = 0  # training slots seen so far
        self.replayed = 0  # of which held an old example
        self._order: list[int] = []
        self._rng = random.Random(seed)

    def _next_old(self) -> Example:
        if not self._order:
            self._order = list(range(len(self.old)))
            self._rng.shuffle(self._order)
        return self.old[self._order.pop()]

    def __call__(self, batch: list[Example], rng: random.Random | None = None) -> list[Example]:
        mask = self.slots(self.seen, len(batch), self.ratio)
        if len(mask) != len(batch):
            raise ValueError(f"the slot rule returned {len(mask)} flags for a batch of {len(batch)}")
        self.seen += len(batch)
        self.replayed += sum(mask)
        return [self._next_old() if old else example for example, old in zip(batch, mask, strict=True)]


@dataclass(frozen=True)
class Rewrite:
    """One SDFT target: the model's ``rewrite`` of ``reference`` and whether it passed the check (``kept``)."""

    user: str
    reference: str
    rewrite: str
    kept: bool

    @property
    def target(self) -> str:
        """What to train on: the rewrite when it passed the check, else the reference (SDFT's fallback)."""
        return self.rewrite if self.kept else self.reference


def filter_rewrites(
    pairs: Sequence[tuple[str, str]], replies: Sequence[Generation], accept: Callable[[str, str], bool]
) -> list[Rewrite]:
    """Pair each (user, reference) with the model's reply; keep the reply when it ended its turn and
    ``accept(reference, reply_text)`` holds, else mark it dropped (its target falls back to the reference)."""
    if len(pairs) != len(replies):
        raise ValueError(f"{len(pairs)} (user, reference) pairs but {len(replies)} replies")
    return [
        Rewrite(user, reference, reply.text, reply.stopped and accept(reference, reply.text))
        for (user, reference), reply in zip(pairs, replies, strict=True)
    ]


def self_output_targets(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    prompt: Callable[[str, str], str],
    accept: Callable[[str, str], bool],
    max_new_tokens: int = 16,
    rewrite_filter: Callable[..., list[Rewrite]] = filter_rewrites,
) -> list[Rewrite]:
    """SDFT targets for (user, reference) pairs: greedy-decode the model's reply to ``prompt(user, reference)`` and
    keep it where ``accept(reference, reply)`` holds (arXiv:2402.13669, eq. 4 and its fallback to the reference).
    ``rewrite_filter(pairs, replies, accept)`` does the keeping (the notebook passes the student's)."""
    replies = generate(model, tokenizer, [prompt(u, r) for u, r in pairs], max_new_tokens=max_new_tokens)
    return rewrite_filter(pairs, replies, accept)


def pseudo_replay_pairs(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 16) -> list[tuple[str, str]]:
    """(prompt, reply) pairs of the model's greedy replies to old-task ``prompts``, for replay without old answers.

    Call it *before* training: the replies are the old model's behaviour, which ``ReplayMixer`` then mixes back in.
    Replies that never end their turn (or are empty) are dropped. In the tiny world the prompts come from the old
    skills' prompt pool: tiny-chat was never trained on user turns, so it cannot invent prompts itself (sampled
    after its user marker, it writes pre-training records such as "hugo fenn minsk baker black").
    """
    replies = generate(model, tokenizer, list(prompts), max_new_tokens=max_new_tokens)
    return [
        (prompt, reply.text) for prompt, reply in zip(prompts, replies, strict=True) if reply.stopped and reply.text
    ]
