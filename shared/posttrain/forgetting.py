"""Lab 01 machinery: fine-tune on a new task and watch every old skill, sample by sample.

A ``Snapshot`` records per-item correctness of the new task, every generation-scored old skill and every
multiple-choice skill at one training step; comparing two snapshots gives the sample-wise forgetting
table of Harmon et al. 2025 (arXiv:2510.17776) via ``posttrain.evaluate.sample_wise``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .data import chat_example
from .evaluate import accuracy, multiple_choice_correct, per_sample_correct, sample_wise
from .models import load_model
from .tasks import ForgettingBenchmark
from .train import TrainConfig, masked_sft_loss, train


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


def take_snapshot(
    model, tokenizer, bench: ForgettingBenchmark, step: int = 0, with_mc: bool = True, max_new_tokens: int = 16
) -> Snapshot:
    """Score ``model`` on every item of ``bench`` (multiple choice only if ``with_mc``)."""
    new = per_sample_correct(model, tokenizer, bench.new_task_eval, max_new_tokens)
    old = {s: per_sample_correct(model, tokenizer, items, max_new_tokens) for s, items in bench.old_skills.items()}
    mc = (
        {s: multiple_choice_correct(model, tokenizer, items) for s, items in bench.multiple_choice.items()}
        if with_mc
        else {}
    )
    return Snapshot(step, new, old, mc)


def finetune_with_snapshots(
    model,
    tokenizer,
    bench: ForgettingBenchmark,
    config: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_sft_loss,
    snapshot_every: int = 0,
    max_new_tokens: int = 16,
) -> list[Snapshot]:
    """Fully fine-tune ``model`` in place on the new task; return snapshots at step 0, every
    ``snapshot_every`` steps (0: none in between) and at the end (the last one with multiple choice)."""
    examples = [chat_example(tokenizer, u, a) for u, a in bench.new_task_train]
    snapshots = [take_snapshot(model, tokenizer, bench, 0, max_new_tokens=max_new_tokens)]

    def watch(step: int, _loss: float) -> None:
        if snapshot_every and step % snapshot_every == 0 and step < config.steps:
            snapshots.append(take_snapshot(model, tokenizer, bench, step, with_mc=False, max_new_tokens=max_new_tokens))
            model.train()

    train(model, examples, config, pad_id=tokenizer.pad_token_id, loss_fn=loss_fn, on_step=watch)
    snapshots.append(take_snapshot(model, tokenizer, bench, config.steps, max_new_tokens=max_new_tokens))
    return snapshots


def sample_wise_table(before: Snapshot, after: Snapshot, k: int) -> dict[str, dict[str, float]]:
    """One row per skill: accuracies before/after, forgetting and backward transfer; multiple-choice
    rows (``mc:<skill>``) also carry the chance-adjusted versions for ``k`` options."""
    keys = ["new", *before.old, *(f"mc:{s}" for s in before.mc if s in after.mc)]
    return {
        key: asdict(sample_wise(before.correct(key), after.correct(key), k=k if key.startswith("mc:") else None))
        for key in keys
    }


def learning_rate_sweep(
    bench: ForgettingBenchmark, learning_rates: Sequence[float], steps: int, batch_size: int, seed: int
) -> dict[str, dict]:
    """Lab 01's sweep as JSON: for each learning rate (key ``str(lr)``), fully fine-tune a fresh tiny-chat on the new
    task and record every skill's accuracy before and after and the sample-wise table (``sample_wise_table``)."""
    runs = {}
    for lr in learning_rates:
        model, tokenizer = load_model("tiny-chat", device="cpu")
        config = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=False)
        snapshots = finetune_with_snapshots(model, tokenizer, bench, config)
        before, after = snapshots[0], snapshots[-1]
        runs[str(lr)] = {
            "accuracy_before": before.accuracies(),
            "accuracy_after": after.accuracies(),
            "table": sample_wise_table(before, after, k=bench.k),
        }
    return runs
