"""Lab 01 study: fine-tune on a new task and watch every old skill, sample by sample.

``finetune_with_snapshots`` fully fine-tunes the chat model and takes ``Snapshot``s along the way
(``posttrain.core.forgetting``); ``learning_rate_sweep`` repeats it at several learning rates and records the
sample-wise forgetting table of Harmon et al. 2025 (arXiv:2510.17776) of each run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core.data import chat_example
from ..core.forgetting import ForgettingBenchmark, Snapshot, sample_wise_table, take_snapshot
from ..core.models import load_model
from ..core.train import TrainConfig, masked_sft_loss, train


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
