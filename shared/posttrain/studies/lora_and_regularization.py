"""Lab 02 study: full fine-tuning, LoRA and regularised fine-tuning on the learning–forgetting plane.

Biderman et al. 2024, "LoRA Learns Less and Forgets Less" (arXiv:2405.09673), compare methods by two numbers
per run: how well the new task was learned and how much of the old skills was lost. A ``Method`` names one run
(full fine-tuning, our LoRA, PEFT's LoRA, L2-SP or EWC at a learning rate and step budget); ``run_method``
trains a fresh copy of the chat model with it and returns a ``RunResult``; ``sweep`` runs a ``Plan``; ``pareto_front``
finds the runs no other run beats on both axes; ``summarize`` turns the runs into Lab 02's ``results/02.json``.
``lora_step_time`` times our LoRA's training step against PEFT's (``make bench``, ``docs/bench/lora.json``).
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..core.budget import QWEN2_5_0_5B, LabBudget, TrainingRun, lora_parameters
from ..core.data import Example, chat_example
from ..core.forgetting import ForgettingBenchmark, Snapshot, learning_and_forgetting, take_snapshot
from ..core.models import load_model
from ..core.profiles import Profile, run_environment, seed_everything
from ..core.train import TrainConfig, train
from ..methods.lora import find_targets, inject_lora, merge_lora
from ..methods.regularize import (
    Penalty,
    anchor,
    diagonal_fisher,
    effective_rank,
    ewc_penalty,
    l2_sp_penalty,
    spectrum,
    weight_deltas,
)
from ..world.hub import GSM8K_LONG_TOKENS, GSM8K_MEAN_TOKENS
from ..world.tiny import World

KINDS = ("full", "lora", "peft-lora", "l2sp", "ewc")
# The attention and MLP projections LoRA adapts (Biderman et al. target all of them): Llama/Qwen2 and GPT-2 names.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj", "c_fc")
RankFn = Callable[[torch.Tensor], int]


@dataclass(frozen=True)
class Method:
    """One point of a sweep: a way to fine-tune (``kind`` in ``KINDS``) at a learning rate and step budget.

    ``rank`` is the LoRA rank r (alpha = 2r, as Biderman et al. recommend); ``strength`` is λ of L2-SP or EWC.
    """

    kind: str
    lr: float
    steps: int
    rank: int = 0
    strength: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown method kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind.endswith("lora") and self.rank < 1:
            raise ValueError(f"a {self.kind} method needs a LoRA rank >= 1, got rank={self.rank}")
        if self.kind in ("l2sp", "ewc") and self.strength <= 0:
            raise ValueError(f"a {self.kind} method needs a positive strength λ, got {self.strength}")

    @property
    def family(self) -> str:
        """The curve a point belongs to on the plane: ``full``, ``LoRA r=4``, ``EWC``, ..."""
        return {"full": "full", "l2sp": "L2-SP", "ewc": "EWC"}.get(self.kind) or f"{self.kind.upper()} r={self.rank}"

    @property
    def label(self) -> str:
        """A short unique name, e.g. ``LORA r=4 lr=0.003 steps=30``."""
        knob = f" λ={self.strength:g}" if self.kind in ("l2sp", "ewc") else ""
        return f"{self.family}{knob} lr={self.lr:g} steps={self.steps}"


@dataclass
class RunResult:
    """What one run did: per-skill accuracy after it, the two coordinates on the plane, and its weight change.

    ``old_drop`` is the mean over old skills of (accuracy before − after); ``forgetting`` is the mean over old skills
    of the sample-wise forgetting F (share of items right before and wrong after, Harmon et al. 2025, Lab 01);
    ``effective_ranks`` maps each adapted weight matrix to the effective rank of its change ΔW, and
    ``energy_curve[k-1]`` is the share of ‖ΔW‖²_F that the top k singular directions hold, averaged over them.
    """

    method: Method
    accuracy_after: dict[str, float]
    new_accuracy: float
    old_drop: float
    forgetting: float
    effective_ranks: dict[str, int]
    energy_curve: list[float]
    seconds: float
    losses: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self) | {"label": self.method.label, "family": self.method.family}


@dataclass(frozen=True)
class Plan:
    """A Lab 02 sweep: full fine-tuning over learning rates × step budgets, LoRA over ranks × learning rates at the
    fixed ``budget``, and L2-SP / EWC strengths at the learning rate where full fine-tuning learned most."""

    budget: int
    full_lrs: tuple[float, ...]
    full_steps: tuple[int, ...]
    lora_ranks: tuple[int, ...]
    lora_lrs: tuple[float, ...]
    l2sp_strengths: tuple[float, ...]
    ewc_strengths: tuple[float, ...]
    batch_size: int = 32
    grad_accum: int = 1
    fisher_examples: int = 256
    fisher_batch_size: int = 8  # mini-batches of EWC's Fisher (``diagonal_fisher``: 1 is exact, B > 1 approximates)
    peft_reference_rank: int = 4  # one PEFT LoRA run, to compare with ours at the same rank (0: none)


PLANS = {
    "tiny": Plan(
        budget=30,
        full_lrs=(3e-4, 1e-3, 3e-3),
        full_steps=(30, 60),
        lora_ranks=(1, 4, 16, 64),
        lora_lrs=(1e-3, 3e-3, 5e-3, 7e-3, 1e-2),
        l2sp_strengths=(0.1, 1.0),
        ewc_strengths=(1.0, 3.0),
    ),
    "colab": Plan(
        budget=150,
        full_lrs=(1e-5, 3e-5),
        full_steps=(150,),
        lora_ranks=(4, 16, 64),
        lora_lrs=(3e-4,),
        l2sp_strengths=(),
        ewc_strengths=(1.0,),
        batch_size=1,  # x 16 accumulated: the micro-batch that fits a T4 with EWC's two extra copies (colab_budget)
        grad_accum=16,
        fisher_examples=64,
        fisher_batch_size=1,
        peft_reference_rank=0,
    ),
}


def mean_energy_curve(deltas: Iterable[torch.Tensor]) -> list[float]:
    """Mean over matrices of the cumulative spectral energy Σ_{i≤k} σ_i² / Σ_i σ_i², k = 1, 2, ... (shorter spectra
    padded with 1): how many directions a weight update needs, the curve behind arXiv:2405.09673's rank analysis."""
    curves = [torch.cumsum(spectrum(d).square(), 0) for d in deltas]
    length = max(len(c) for c in curves)
    padded = torch.stack([torch.cat([c, torch.ones(length - len(c))]) for c in curves])
    return [round(float(v), 4) for v in padded.mean(0)]


def projection_targets(model: nn.Module) -> list[str]:
    """The attention and MLP projection suffixes of ``model`` that LoRA adapts (all of them, as in arXiv:2405.09673)."""
    present = {name.rpartition(".")[2] for name in find_targets(model, list(PROJECTIONS))}
    return [p for p in PROJECTIONS if p in present]


def old_task_examples(profile: Profile, bench: ForgettingBenchmark, n: int, seed: int) -> list[tuple[str, str]]:
    """(user, assistant) pairs of the *old* task, for EWC's Fisher information.

    Tiny profile: a sample of the chat model's own SFT data (``World.chat_sft_examples``), the old task in EWC's
    sense. Colab profile: the chat model's training data is not public, so the old-skill items of ``bench`` stand
    in (their prompts and reference replies); the lab says so.
    """
    if profile.name == "tiny":
        pairs = World().chat_sft_examples()
    else:
        pairs = [(item.prompt, item.answer) for items in bench.old_skills.values() for item in items]
    return random.Random(seed).sample(pairs, min(n, len(pairs)))


def ewc_fisher(
    profile: Profile, old_examples: Sequence[tuple[str, str]], batch_size: int = 8
) -> dict[str, torch.Tensor]:
    """EWC's weights b_j: the diagonal Fisher of the chat model on ``old_examples`` (in mini-batches of ``batch_size``;
    above 1 the approximation ``diagonal_fisher`` documents), normalised to mean 1 so that λ means the same on every
    model."""
    if not old_examples:
        raise ValueError("EWC needs old-task examples for its Fisher information: pass old_examples")
    model, tokenizer = load_model(profile.chat_model, dtype=torch.float32)
    examples = [chat_example(tokenizer, u, a) for u, a in old_examples]
    fisher = diagonal_fisher(model, examples, tokenizer.pad_token_id, batch_size=batch_size)
    mean = sum(f.sum() for f in fisher.values()) / sum(f.numel() for f in fisher.values())
    return {name: f / mean for name, f in fisher.items()}


def adapt(model: nn.Module, method: Method, seed: int) -> nn.Module:
    """Wrap ``model`` for ``method``: our LoRA or PEFT's on every projection; unchanged otherwise."""
    targets = projection_targets(model)
    if method.kind == "lora":
        inject_lora(model, targets, r=method.rank, alpha=2 * method.rank, seed=seed)
    elif method.kind == "peft-lora":
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(seed)  # the same A matrices as inject_lora(seed=seed)
        model = get_peft_model(model, LoraConfig(r=method.rank, lora_alpha=2 * method.rank, target_modules=targets))
    return model


def run_method(
    profile: Profile,
    bench: ForgettingBenchmark,
    method: Method,
    before: Snapshot,
    *,
    seed: int = 0,
    batch_size: int = 32,
    grad_accum: int = 1,
    fisher: dict[str, torch.Tensor] | None = None,
    penalty: Callable[..., Penalty] | None = None,
    rank_fn: RankFn = effective_rank,
    examples: Sequence[Example] | None = None,
) -> RunResult:
    """Fine-tune a fresh ``profile.chat_model`` on ``bench``'s new task with ``method``; score it against ``before``.

    L2-SP and EWC add λ/2 Σ_j b_j (θ_j − θ⁰_j)² to the loss (``posttrain.methods.regularize``); EWC's b_j is ``fisher``
    (``ewc_fisher``). ``penalty`` replaces the penalty builder, called as
    ``penalty(anchor, strength)`` for L2-SP and ``penalty(anchor, strength, fisher)`` for EWC (the notebook passes
    the student's). LoRA is merged before scoring; ``rank_fn`` measures every adapted matrix's ΔW. ``examples`` are the
    new task's training pairs already tokenised (``sweep`` tokenises them once for all its runs).
    """
    seed_everything(seed)
    model, tokenizer = load_model(profile.chat_model, dtype=torch.float32)
    centre = anchor(model)
    start = {n: w for n, w in centre.items() if any(f".{p}." in n for p in PROJECTIONS)}
    extra_loss = None
    if method.kind == "l2sp":
        extra_loss = (penalty or l2_sp_penalty)(centre, method.strength)
    elif method.kind == "ewc":
        if fisher is None:
            raise ValueError("an EWC run needs the Fisher information of the old task: pass fisher=ewc_fisher(...)")
        extra_loss = (
            penalty(centre, method.strength, fisher) if penalty else ewc_penalty(centre, fisher, method.strength)
        )
    model = adapt(model, method, seed)
    config = TrainConfig(
        steps=method.steps, lr=method.lr, batch_size=batch_size, grad_accum=grad_accum, seed=seed, progress=False
    )
    if examples is None:
        examples = [chat_example(tokenizer, u, a) for u, a in bench.new_task_train]
    clock = time.perf_counter()
    losses = train(model, examples, config, pad_id=tokenizer.pad_token_id, extra_loss=extra_loss)
    seconds = time.perf_counter() - clock
    if method.kind == "peft-lora":
        model = model.merge_and_unload()
    elif method.kind == "lora":
        merge_lora(model)
    after = take_snapshot(model, tokenizer, bench, method.steps, with_mc=False, max_new_tokens=profile.max_new_tokens)
    deltas = weight_deltas(start, model)
    ranks = {name: rank_fn(delta) for name, delta in deltas.items()}
    return RunResult(
        method=method,
        **learning_and_forgetting(before, after),
        effective_ranks=ranks,
        energy_curve=mean_energy_curve(deltas.values()),
        seconds=seconds,
        losses=losses,
    )


def best_run(results: Sequence[RunResult], family: str, budget: int | None = None) -> RunResult:
    """The run of ``family`` (at ``budget`` steps, if given) with the highest new-task accuracy: the method at its
    best learning rate, the comparison Biderman et al. make; ties go to the lower drop."""
    runs = [r for r in results if r.method.family == family and (budget is None or r.method.steps == budget)]
    if not runs:
        raise ValueError(f"no run of {family!r} at budget {budget} among {sorted({r.method.family for r in results})}")
    return max(runs, key=lambda r: (r.new_accuracy, -r.old_drop))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points (new-task accuracy, old-skill drop) that no other point dominates.

    A point dominates another when it learns at least as much and forgets at most as much, and is better in one
    of the two; the front is the learning–forgetting trade-off curve of arXiv:2405.09673 (fig. 5). Sorted by accuracy.
    """
    front = [
        i
        for i, (acc, drop) in enumerate(points)
        if not any(a >= acc and d <= drop and (a > acc or d < drop) for a, d in points)
    ]
    return sorted(front, key=lambda i: points[i][0])


def sweep(
    profile: Profile,
    bench: ForgettingBenchmark,
    plan: Plan,
    seed: int = 0,
    *,
    penalty_builders: dict[str, Callable[..., Penalty]] | None = None,
    rank_fn: RankFn = effective_rank,
    progress: Callable[[RunResult], None] | None = None,
) -> tuple[Snapshot, list[RunResult]]:
    """Run every method of ``plan`` from fresh copies of the chat model; return the snapshot before and the runs.

    Regularised runs use the learning rate at which full fine-tuning learned most at ``plan.budget`` steps.
    ``penalty_builders`` may replace the ``l2sp`` / ``ewc`` penalty builders (see ``run_method``).
    """
    model, tokenizer = load_model(profile.chat_model, dtype=torch.float32)
    before = take_snapshot(model, tokenizer, bench, 0, with_mc=False, max_new_tokens=profile.max_new_tokens)
    del model
    examples = [chat_example(tokenizer, u, a) for u, a in bench.new_task_train]
    builders = penalty_builders or {}
    fisher = (
        ewc_fisher(profile, old_task_examples(profile, bench, plan.fisher_examples, seed), plan.fisher_batch_size)
        if plan.ewc_strengths
        else None
    )
    common = {
        "seed": seed,
        "batch_size": plan.batch_size,
        "grad_accum": plan.grad_accum,
        "rank_fn": rank_fn,
        "examples": examples,
    }
    results: list[RunResult] = []

    def run(method: Method) -> None:
        penalty = builders.get(method.kind)
        results.append(run_method(profile, bench, method, before, fisher=fisher, penalty=penalty, **common))
        if progress is not None:
            progress(results[-1])

    for steps in plan.full_steps:
        for lr in plan.full_lrs:
            run(Method("full", lr, steps))
    for rank in plan.lora_ranks:
        for lr in plan.lora_lrs:
            run(Method("lora", lr, plan.budget, rank=rank))
    if plan.peft_reference_rank:
        ours = best_run(results, Method("lora", 1.0, 1, rank=plan.peft_reference_rank).family, plan.budget)
        run(Method("peft-lora", ours.method.lr, plan.budget, rank=plan.peft_reference_rank))
    full_lr = best_run(results, "full", plan.budget).method.lr
    for strength in plan.l2sp_strengths:
        run(Method("l2sp", full_lr, plan.budget, strength=strength))
    for strength in plan.ewc_strengths:
        run(Method("ewc", full_lr, plan.budget, strength=strength))
    return before, results


def matched_ewc(
    results: Sequence[RunResult], budget: int, tolerance: float = 0.05, share: float = 0.8
) -> RunResult | None:
    """The EWC run (at ``budget``) that forgets least among those learning as much as full fine-tuning: new-task
    accuracy within ``tolerance`` of full fine-tuning's best and at least ``share`` of it. None if no EWC run does."""
    full = best_run(results, "full", budget).new_accuracy
    matched = [
        r
        for r in results
        if r.method.kind == "ewc"
        and r.method.steps == budget
        and abs(r.new_accuracy - full) <= tolerance
        and r.new_accuracy >= share * full
    ]
    return min(matched, key=lambda r: r.old_drop) if matched else None


def summarize(profile: Profile, seed: int, plan: Plan, before: Snapshot, results: Sequence[RunResult]) -> dict:
    """Lab 02's ``results/02.json``: every run, the best run per method family at the budget, the Pareto front, the
    full fine-tuning update's effective ranks and the EWC-vs-full comparison at matched accuracy."""
    families = list(dict.fromkeys(r.method.family for r in results))
    best = {f: best_run(results, f, plan.budget) for f in families}
    front = pareto_front([(r.new_accuracy, r.old_drop) for r in results])
    full = best["full"]
    ewc = matched_ewc(results, plan.budget)
    return {
        "profile": profile.name,
        "model": profile.chat_model,
        "seed": seed,
        "budget": plan.budget,
        "accuracy_before": before.accuracies(),
        "runs": [r.to_json() for r in results],
        "best_at_budget": {
            f: {"label": r.method.label, "new": r.new_accuracy, "old_drop": r.old_drop, "forgetting": r.forgetting}
            for f, r in best.items()
        },
        "pareto_front": [results[i].method.label for i in front],
        "full_effective_rank": {
            "label": full.method.label,
            "median": statistics.median(full.effective_ranks.values()),
            "max": max(full.effective_ranks.values()),
            "matrices": len(full.effective_ranks),
        },
        "ewc_matched": None
        if ewc is None
        else {
            "label": ewc.method.label,
            "new": ewc.new_accuracy,
            "old_drop": ewc.old_drop,
            "full_label": full.method.label,
            "full_new": full.new_accuracy,
            "full_old_drop": full.old_drop,
        },
        "seconds": sum(r.seconds for r in results),
        "environment": run_environment(),
    }


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


def colab_budget(plan: Plan = PLANS["colab"], n_eval: int = 40, max_new_tokens: int = 256) -> LabBudget:
    """Lab 02 on a GPU (the notebook frees its own model before the sweep): EWC's Fisher pass in float32, then every
    run with two extra float32 copies alive, its anchor θ⁰ and the Fisher the sweep keeps for its EWC runs; GSM8K
    pairs as long as ``GSM8K_LONG_TOKENS``; a snapshot before and one after each run."""
    copies = 1 + bool(plan.ewc_strengths)
    lengths = {"seq_len": GSM8K_LONG_TOKENS, "mean_tokens": GSM8K_MEAN_TOKENS}
    common = {"micro_batch": plan.batch_size, "grad_accum": plan.grad_accum} | lengths
    runs = [
        TrainingRun(
            "EWC's Fisher (float32, gradients only)",
            plan.fisher_examples // plan.fisher_batch_size,
            plan.fisher_batch_size,
            1,
            **lengths,
            extra_copies=1,
            autocast=False,
            optimizer=False,
        )
    ]
    runs += [
        TrainingRun(
            f"full fine-tuning, {steps} steps", steps, extra_copies=copies, repeats=len(plan.full_lrs), **common
        )
        for steps in plan.full_steps
    ]
    runs += [
        TrainingRun(
            f"LoRA r={rank}",
            plan.budget,
            trainable=lora_parameters(QWEN2_5_0_5B, rank),
            extra_copies=copies,
            repeats=len(plan.lora_lrs),
            **common,
        )
        for rank in plan.lora_ranks
    ]
    regularised = len(plan.l2sp_strengths) + len(plan.ewc_strengths)
    if regularised:
        runs.append(TrainingRun("L2-SP / EWC", plan.budget, extra_copies=copies, repeats=regularised, **common))
    snapshots = 1 + sum(run.repeats for run in runs[1:])
    return LabBudget("02_lora_and_regularization", tuple(runs), snapshots * 3 * n_eval * max_new_tokens)
