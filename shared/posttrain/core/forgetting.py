"""Measuring forgetting: a benchmark of a new task and old skills, snapshots of a model on it, and the numbers that
compare two snapshots.

A ``Snapshot`` records per-item correctness of the new task, every generation-scored old skill and every
multiple-choice skill at one training step. Two snapshots give the sample-wise forgetting table of Harmon et al.
2025 (arXiv:2510.17776, via ``evaluate.sample_wise``) and a run's two coordinates on the learning–forgetting plane of
Biderman et al. 2024 (arXiv:2405.09673): new-task accuracy and the old skills' mean drop. Every lab measures
forgetting with these; the data of a ``ForgettingBenchmark`` comes from ``posttrain.world.benchmarks``.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from .evaluate import (
    Item,
    accuracy,
    correct_with_choices,
    sample_wise,
)

K_OPTIONS = 4


@dataclass(frozen=True)
class ForgettingBenchmark:
    """A new task to post-train on and the old skills whose forgetting we measure.

    ``new_task_train`` are (user, assistant) pairs; ``new_task_eval`` and every list in ``old_skills``
    are generation-scored items; ``multiple_choice`` items are scored by option log-likelihood with
    ``k`` options (for chance-adjusted sample-wise metrics).
    """

    new_task_train: list[tuple[str, str]]
    new_task_eval: list[Item]
    old_skills: dict[str, list[Item]]
    multiple_choice: dict[str, list[Item]]
    k: int = K_OPTIONS


@dataclass
class Snapshot:
    """Per-item correctness at one training step (``new``: the new task; ``old``/``mc``: per skill)."""

    step: int
    new: list[bool]
    old: dict[str, list[bool]]
    mc: dict[str, list[bool]] = field(default_factory=dict)

    def correct(self, key: str) -> list[bool]:
        """Per-item correctness under a table key: ``new``, an old skill, or ``mc:<skill>``."""
        if key == "new":
            return self.new
        return self.mc[key[3:]] if key.startswith("mc:") else self.old[key]

    def accuracies(self) -> dict[str, float]:
        """Accuracy of the new task (key ``new``), each old skill and each ``mc:<skill>``."""
        row = {"new": accuracy(self.new)} | {s: accuracy(c) for s, c in self.old.items()}
        return row | {f"mc:{s}": accuracy(c) for s, c in self.mc.items()}


def _flat(skills: dict[str, list[Item]]) -> list[Item]:
    """Every skill's items, one list, in the skills' order."""
    return [item for items in skills.values() for item in items]


def _per_skill(skills: dict[str, list[Item]], correct: list[bool]) -> dict[str, list[bool]]:
    """``correct`` of the ``_flat`` items, split back by skill."""
    answers = iter(correct)
    return {skill: [next(answers) for _ in items] for skill, items in skills.items()}


def take_snapshot(
    model, tokenizer, bench: ForgettingBenchmark, step: int = 0, with_mc: bool = True, max_new_tokens: int = 16
) -> Snapshot:
    """Score ``model`` on every item of ``bench`` (multiple choice only if ``with_mc``): the generated skills and the
    multiple choice in shared passes (``correct_with_choices``; the multiple-choice items ask the generated skills'
    questions, so each prompt runs once)."""
    choice_items = _flat(bench.multiple_choice) if with_mc else []
    (new, *old), chosen = correct_with_choices(
        model, tokenizer, [bench.new_task_eval, *bench.old_skills.values()], choice_items, max_new_tokens
    )
    mc = _per_skill(bench.multiple_choice, chosen) if with_mc else {}
    return Snapshot(step, new, dict(zip(bench.old_skills, old, strict=True)), mc)


def sample_wise_table(before: Snapshot, after: Snapshot, k: int) -> dict[str, dict[str, float]]:
    """One row per skill: accuracies before/after, forgetting and backward transfer; multiple-choice
    rows (``mc:<skill>``) also carry the chance-adjusted versions for ``k`` options."""
    keys = ["new", *before.old, *(f"mc:{s}" for s in before.mc if s in after.mc)]
    return {
        key: asdict(sample_wise(before.correct(key), after.correct(key), k=k if key.startswith("mc:") else None))
        for key in keys
    }


def mean_old_drop(before: Snapshot, after: Snapshot) -> float:
    """Mean over the old skills of accuracy before − accuracy after (the plane's forgetting axis, arXiv:2405.09673)."""
    drops = [sum(before.old[s]) / len(before.old[s]) - sum(after.old[s]) / len(after.old[s]) for s in before.old]
    return statistics.fmean(drops)


def mean_forgetting(before: Snapshot, after: Snapshot) -> float:
    """Mean over the old skills of the sample-wise forgetting F = #{i: right before, wrong after} / n
    (Harmon et al. 2025, arXiv:2510.17776; Lab 01)."""
    return statistics.fmean(sample_wise(before.old[s], after.old[s]).forgetting for s in before.old)


def learning_and_forgetting(before: Snapshot, after: Snapshot) -> dict:
    """A run's two coordinates and what they come from: ``accuracy_after`` (per skill), ``new_accuracy``,
    ``old_drop`` (``mean_old_drop``) and ``forgetting`` (``mean_forgetting``), as keyword arguments of a result."""
    accuracies = after.accuracies()
    return {
        "accuracy_after": accuracies,
        "new_accuracy": accuracies["new"],
        "old_drop": mean_old_drop(before, after),
        "forgetting": mean_forgetting(before, after),
    }
