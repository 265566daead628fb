"""One small supervised fine-tuning loop, shared by every lab and by the world build.

AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101) with linear warm-up and cosine decay, gradient
clipping and accumulation. Hooks make the lab variants one-liners: ``extra_loss`` adds a regulariser
(L2-SP, EWC, KL), ``trainable`` picks the parameters to update (LoRA, last layers), ``batch_mixer``
rewrites each batch (replay), ``on_step`` watches the run (forgetting curves).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import IGNORE_INDEX, Example, collate
from .profiles import autocast_dtype


def masked_sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the positions whose label is not ``IGNORE_INDEX``.

    logits: (B, T, V) for inputs x_1..x_T; labels: (B, T). Position t predicts label t + 1, so the last
    logit and the first label are dropped: L = -1/|M| sum_{t in M} log p(y_{t+1} | x_<=t).
    """
    shifted_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).float()
    shifted_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted_logits, shifted_labels, ignore_index=IGNORE_INDEX)


@dataclass
class TrainConfig:
    """Hyper-parameters of one run. ``steps`` counts optimizer updates, not micro-batches."""

    steps: int = 200
    lr: float = 1e-3
    batch_size: int = 32
    grad_accum: int = 1
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    progress: bool = True
    group_by_length: bool = False  # batches of similar length: less padding, same examples per epoch


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to ``config.lr`` then cosine decay to 10 % of it."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def length_grouped(order: list[int], examples: Sequence[Example], batch_size: int, rng: random.Random) -> list[int]:
    """Reorder a shuffled epoch so that each batch holds examples of similar length.

    Chunks of 16 batches are sorted by length and cut into batches, whose order is then shuffled (the
    "megabatch" scheme of HF's ``LengthGroupedSampler``): every example is still seen once per epoch, but
    far fewer padding tokens are computed when lengths vary.
    """
    chunk = 16 * batch_size
    batches = []
    for start in range(0, len(order), chunk):
        ranked = sorted(order[start : start + chunk], key=lambda i: len(examples[i].input_ids))
        batches += [ranked[i : i + batch_size] for i in range(0, len(ranked), batch_size)]
    rng.shuffle(batches)
    return [i for batch in batches for i in batch]


def train(
    model: torch.nn.Module,
    examples: Sequence[Example],
    config: TrainConfig,
    pad_id: int,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = masked_sft_loss,
    extra_loss: Callable[[torch.nn.Module], torch.Tensor] | None = None,
    trainable: Callable[[str, torch.nn.Parameter], bool] | None = None,
    batch_mixer: Callable[[list[Example], random.Random], list[Example]] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``examples``; return the loss of every optimizer step.

    Batches are drawn by a seeded shuffler (epochs without replacement), so a run is repeatable on CPU.
    ``trainable(name, param)`` selects the parameters to update (default: those with requires_grad).
    """
    if not examples:
        raise ValueError("train() got no examples; build them with posttrain.core.data.chat_example")
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    params = [p for n, p in model.named_parameters() if p.requires_grad and (trainable is None or trainable(n, p))]
    if not params:
        raise ValueError("no trainable parameters: check the `trainable` filter and requires_grad flags")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    device = next(model.parameters()).device
    # On a GPU: mixed precision over float32 master weights, bf16 where it is native, else fp16 with loss scaling
    # (a T4); on a CPU: plain float32 (``autocast_dtype``).
    amp_dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    order: list[int] = []
    losses = []
    model.train()
    for step in tqdm(range(config.steps), disable=not config.progress, desc="train", leave=False):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, config)
        step_loss = 0.0
        for _ in range(config.grad_accum):
            if len(order) < config.batch_size:
                fresh = list(range(len(examples)))
                rng.shuffle(fresh)
                if config.group_by_length:
                    fresh = length_grouped(fresh, examples, config.batch_size, rng)
                order += fresh
            batch = [examples[i] for i in order[: config.batch_size]]
            del order[: config.batch_size]
            if batch_mixer is not None:
                batch = batch_mixer(batch, rng)
            tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
            with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext():
                logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
                loss = loss_fn(logits, tensors["labels"])
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            scaler.scale(loss / config.grad_accum).backward()
            step_loss += loss.item() / config.grad_accum
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if on_step is not None:
            on_step(step + 1, step_loss)
    model.eval()
    return losses
