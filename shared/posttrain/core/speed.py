"""How fast this machine does the labs' work, measured (``make bench`` writes it to ``docs/bench/speed.json``).

Three numbers, taken in one process so that they compare: the fp32 matrix-multiply peak (``gemm_peak_flops``), what a
training step achieves against it (``training_flops``: the 6·N·D rule of Kaplan et al. 2020, arXiv:2001.08361,
eq. 2.1 with D the tokens of a step), and what one forgetting snapshot costs, with generation and multiple choice
apart (``snapshot_seconds``).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Sequence

import torch

from .data import Example
from .forgetting import ForgettingBenchmark, take_snapshot
from .train import TrainConfig, train


def gemm_peak_flops(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` ``size``×``size`` fp32 matrix products (2·size³ FLOPs each) on the CPU,
    with torch's current thread count: the peak that the labs' small matrices are compared with."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up: thread pool and kernel selection
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def training_flops(model: torch.nn.Module, examples: Sequence[Example], config: TrainConfig, pad_id: int) -> dict:
    """Train ``model`` in place for ``config.steps`` steps and return the median step's seconds and its FLOP/s, counting
    6·N·D FLOPs per step (forward and backward; N parameters, D = ``config.batch_size`` × the examples' mean length,
    padding not counted). The first step (warm-up) is left out."""
    stamps = [time.perf_counter()]
    train(model, examples, config, pad_id=pad_id, on_step=lambda *_: stamps.append(time.perf_counter()))
    step_seconds = statistics.median(b - a for a, b in itertools.pairwise(stamps[1:]))
    parameters = sum(p.numel() for p in model.parameters())
    tokens = config.batch_size * config.grad_accum * statistics.fmean(len(e.input_ids) for e in examples)
    return {
        "step_s": step_seconds,
        "parameters": parameters,
        "tokens_per_step": tokens,
        "flops_per_s": 6 * parameters * tokens / step_seconds,
    }


def snapshot_seconds(model, tokenizer, bench: ForgettingBenchmark, repeats: int = 3, max_new_tokens: int = 16) -> dict:
    """The median seconds of one ``take_snapshot`` of ``bench``'s items and of its generation alone (``with_mc=False``)
    over ``repeats`` runs, with the item counts. Multiple choice continues the generated prompts' passes, so its cost
    is the difference. An untimed snapshot first encodes the prompts, which later snapshots remember
    (``chat_prompt_ids``), so that neither timing carries the encoding. The difference is noisy on a loaded machine
    and may dip below zero when multiple choice costs little."""
    take_snapshot(model, tokenizer, bench, max_new_tokens=max_new_tokens)
    generation, snapshot = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        take_snapshot(model, tokenizer, bench, with_mc=False, max_new_tokens=max_new_tokens)
        middle = time.perf_counter()
        take_snapshot(model, tokenizer, bench, max_new_tokens=max_new_tokens)
        generation.append(middle - start)
        snapshot.append(time.perf_counter() - middle)
    generated = [bench.new_task_eval, *bench.old_skills.values()]
    return {
        "generated_items": sum(map(len, generated)),
        "distinct_prompts": len({item.prompt for items in generated for item in items}),
        "multiple_choice_items": sum(map(len, bench.multiple_choice.values())),
        "generation_s": round(statistics.median(generation), 3),
        "multiple_choice_s": round(statistics.median(s - g for g, s in zip(generation, snapshot, strict=True)), 3),
        "snapshot_s": round(statistics.median(snapshot), 3),
    }
