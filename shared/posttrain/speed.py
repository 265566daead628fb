"""Training-step timing of our LoRA against PEFT's on the same model and batch (``make bench``).

Both wrap the same projections of the same chat model with the same rank, alpha and initial A (``inject_lora`` draws
A as PEFT does after ``torch.manual_seed``), and take optimizer steps on the same batches; the benchmark reports the
median seconds per step of each and their ratio (ours / PEFT's; the course's goal is at most 1.2).
"""

from __future__ import annotations

import statistics
import time

import torch

from .data import chat_example
from .models import load_model
from .profiles import Profile
from .tasks import ForgettingBenchmark
from .tradeoff import Method, adapt
from .train import TrainConfig, train


def _seconds_per_step(
    profile: Profile, bench: ForgettingBenchmark, implementation: str, rank: int, config: TrainConfig
) -> float:
    model, tokenizer = load_model(profile.chat_model, dtype=torch.float32)
    kind = "lora" if implementation == "ours" else "peft-lora"
    model = adapt(model, Method(kind, config.lr, config.steps, rank=rank), config.seed)
    examples = [chat_example(tokenizer, u, a) for u, a in bench.new_task_train]
    times: list[float] = []
    clock = [time.perf_counter()]

    def lap(_step: int, _loss: float) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - clock[0])
        clock[0] = now

    clock[0] = time.perf_counter()
    train(model, examples, config, pad_id=tokenizer.pad_token_id, on_step=lap)
    return statistics.median(times[2:])  # the first steps warm up allocators and kernels


def lora_step_time(
    profile: Profile,
    bench: ForgettingBenchmark,
    rank: int = 16,
    steps: int = 20,
    repeats: int = 3,
    batch_size: int = 32,
) -> dict:
    """Median seconds per LoRA training step, ours and PEFT's, alternating ``repeats`` times; and ours / PEFT's."""
    config = TrainConfig(steps=steps, lr=1e-3, batch_size=batch_size, progress=False)
    samples: dict[str, list[float]] = {"ours": [], "peft": []}
    for _ in range(repeats):
        for implementation in samples:
            samples[implementation].append(_seconds_per_step(profile, bench, implementation, rank, config))
    ours, peft = statistics.median(samples["ours"]), statistics.median(samples["peft"])
    return {
        "model": profile.chat_model,
        "rank": rank,
        "batch_size": batch_size,
        "steps": steps,
        "repeats": repeats,
        "seconds_per_step": {"ours": round(ours, 5), "peft": round(peft, 5)},
        "ratio_ours_to_peft": round(ours / peft, 3),
    }
