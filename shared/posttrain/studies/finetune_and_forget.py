"""Lab 01 study: fine-tune on a new task and watch every old skill, sample by sample.

``finetune_with_snapshots`` fully fine-tunes the chat model and takes ``Snapshot``s along the way
(``posttrain.core.forgetting``); ``learning_rate_sweep`` repeats it at several learning rates and records the
sample-wise forgetting table of Harmon et al. 2025 (arXiv:2510.17776) of each run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from ..core.budget import LabBudget, TrainingRun
from ..core.data import chat_example
from ..core.forgetting import ForgettingBenchmark, Snapshot, sample_wise_table, take_snapshot
from ..core.models import load_model
from ..core.train import TrainConfig, masked_sft_loss, train
from ..world.hub import GSM8K_LONG_TOKENS, GSM8K_MEAN_TOKENS


@dataclass(frozen=True)
class Plan:
    """Lab 01's settings per profile: the main run's steps and learning rate, the sweep's learning rates, how often
    the old skills are measured, and the batch as micro-batch × accumulation (the micro-batch sized to the GPU's
    memory, ``colab_budget``)."""

    steps: int
    lr: float
    sweep_lrs: tuple[float, ...]
    snapshot_every: int
    batch_size: int
    grad_accum: int = 1


PLANS = {
    "tiny": Plan(steps=150, lr=1e-3, sweep_lrs=(1e-4, 3e-4, 1e-3), snapshot_every=25, batch_size=32),
    "colab": Plan(steps=300, lr=1e-5, sweep_lrs=(3e-6, 1e-5, 3e-5), snapshot_every=50, batch_size=2, grad_accum=16),
}


def finetune_with_snapshots(
    model,
    tokenizer,
    bench: ForgettingBenchmark,
    config: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_sft_loss,
    snapshot_every: int = 0,
    max_new_tokens: int = 16,
    before: Snapshot | None = None,
) -> list[Snapshot]:
    """Fully fine-tune ``model`` in place on the new task; return snapshots at step 0, every
    ``snapshot_every`` steps (0: none in between) and at the end (the first and last with multiple choice).
    ``before`` is the step-0 snapshot when one was already taken of the same checkpoint (a sweep's runs all start
    from it), so that it is not measured again."""
    examples = [chat_example(tokenizer, u, a) for u, a in bench.new_task_train]
    snapshots = [before or take_snapshot(model, tokenizer, bench, 0, max_new_tokens=max_new_tokens)]

    def watch(step: int, _loss: float) -> None:
        if snapshot_every and step % snapshot_every == 0 and step < config.steps:
            snapshots.append(take_snapshot(model, tokenizer, bench, step, with_mc=False, max_new_tokens=max_new_tokens))
            model.train()

    train(model, examples, config, pad_id=tokenizer.pad_token_id, loss_fn=loss_fn, on_step=watch)
    snapshots.append(take_snapshot(model, tokenizer, bench, config.steps, max_new_tokens=max_new_tokens))
    return snapshots


def learning_rate_sweep(
    bench: ForgettingBenchmark, learning_rates: Sequence[float], steps: int, batch_size: int, seed: int
) -> dict[str, dict]:
    """Lab 01's sweep as JSON: for each learning rate (key ``str(lr)``), fully fine-tune a fresh tiny-chat on the new
    task and record every skill's accuracy before and after and the sample-wise table (``sample_wise_table``)."""
    runs, before = {}, None
    for lr in learning_rates:
        model, tokenizer = load_model("tiny-chat", device="cpu")
        config = TrainConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, progress=False)
        snapshots = finetune_with_snapshots(model, tokenizer, bench, config, before=before)
        before = snapshots[0]
        before, after = snapshots[0], snapshots[-1]
        runs[str(lr)] = {
            "accuracy_before": before.accuracies(),
            "accuracy_after": after.accuracies(),
            "table": sample_wise_table(before, after, k=bench.k),
        }
    return runs


def colab_budget(plan: Plan = PLANS["colab"], n_eval: int = 100, max_new_tokens: int = 256) -> LabBudget:
    """Lab 01 on a GPU: the main run and the sweep's other runs (one at a time: the notebook frees its model first),
    GSM8K pairs as long as ``GSM8K_LONG_TOKENS``, and every snapshot decoding up to ``max_new_tokens`` for the
    new task and each old skill (about 3 ``n_eval`` items: GSM8K, refusals, JSON questions, chat probes)."""
    run = TrainingRun(
        "full fine-tuning", plan.steps, plan.batch_size, plan.grad_accum, GSM8K_LONG_TOKENS, GSM8K_MEAN_TOKENS
    )
    sweep = replace(run, label="learning-rate sweep (each run)", repeats=len(plan.sweep_lrs) - 1)
    snapshots = len(plan.sweep_lrs) * (plan.steps // plan.snapshot_every) + 1  # the runs share the one at step 0
    return LabBudget("01_finetune_and_forget", (run, sweep), snapshots * 3 * n_eval * max_new_tokens)
