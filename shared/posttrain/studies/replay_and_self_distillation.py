"""Lab 03 study: which training data keeps old behaviour while the model learns a new task.

Every ``Variant`` fine-tunes a fresh copy of the chat model on the same new task for the same steps; only the data
differs:

- ``plain``: the new task's references as given (the human-written style of a dataset).
- ``replay``: a share ρ of the training slots replaced by old SFT data (experience replay, arXiv:1811.11682).
- ``pseudo-replay``: the same share, but the old examples are the model's own replies, generated before training,
  to old-skill prompts whose references we do not have (pseudo-rehearsal, Robins 1995; arXiv:2403.01244).
- ``paraphrase``: the references rewritten by a fixed, model-independent paraphrase (``paraphrase_targets``;
  arXiv:2402.11192 compares paraphrased and model-written targets).
- ``self-output``: the references rewritten by the model itself, conditioned on them, kept where correct (SDFT,
  arXiv:2402.13669).

``compare`` runs every variant of a ``Plan`` and ``summarize`` writes Lab 03's ``results/03.json`` together with
the theory experiments (``theory_study``, on ``posttrain.methods.theory``'s Gaussian mixture). Each run also records
the mean per-token negative log-likelihood of its new-task targets under the *starting* model: how far the targets
are from what the model would say, the quantity arXiv:2501.14315 ties to forgetting.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from ..core.budget import LabBudget, TrainingRun
from ..core.data import chat_example, collate
from ..core.forgetting import ForgettingBenchmark, Snapshot, learning_and_forgetting, take_snapshot
from ..core.models import load_model
from ..core.profiles import Profile, run_environment, seed_everything
from ..core.train import TrainConfig, masked_sft_loss, train
from ..methods.replay import (
    ReplayMixer,
    Rewrite,
    filter_rewrites,
    pseudo_replay_pairs,
    replay_slots,
    self_output_targets,
)
from ..methods.theory import (
    ReverseKLEstimator,
    bhattacharyya_coefficient,
    log_correlation,
    sampled_reverse_kl,
    train_mixture,
)
from ..world.hub import (
    GSM8K_LONG_TOKENS,
    GSM8K_MEAN_TOKENS,
    Loader,
    load_alpaca,
    paraphrase_gsm8k,
    same_final_answer,
    sdft_prompt,
)
from ..world.tiny import World, restate_prompt, words_from_reference

KINDS = ("plain", "replay", "pseudo-replay", "paraphrase", "self-output")
OLD_SKILLS = ("fact", "json", "restate", "refusal", "howto", "addition")
Pairs = list[tuple[str, str]]


@dataclass(frozen=True)
class Variant:
    """One Lab 03 run: a kind of training data (``KINDS``) and, for the replay kinds, the share ρ of old slots."""

    kind: str
    ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown variant {self.kind!r}; choose one of {', '.join(KINDS)}")
        replays = self.kind.endswith("replay")
        if replays and not 0 < self.ratio <= 1:
            raise ValueError(f"a {self.kind} variant needs a replay ratio in (0, 1], got {self.ratio}")
        if not replays and self.ratio:
            raise ValueError(f"only replay variants take a ratio; {self.kind!r} got {self.ratio}")

    @property
    def label(self) -> str:
        """``plain``, ``replay 5%``, ``self-output``, ..."""
        return f"{self.kind} {self.ratio * 100:g}%" if self.ratio else self.kind


@dataclass(frozen=True)
class Plan:
    """A Lab 03 comparison: one learning rate and step budget for every variant, replay at ``replay_ratios``,
    pseudo-replay at ``pseudo_ratio``, old buffers of up to ``per_skill`` examples of each old skill (on colab:
    Alpaca rows)."""

    steps: int
    lr: float
    replay_ratios: tuple[float, ...]
    pseudo_ratio: float
    per_skill: int
    batch_size: int = 32
    grad_accum: int = 1
    n_train: int = 2000  # colab: GSM8K training pairs to draw (the tiny task has its own 144)

    def variants(self) -> list[Variant]:
        """Plain SFT, replay at each ratio, pseudo-replay, paraphrase and self-output, in the lab's table order."""
        replays = [Variant("replay", r) for r in self.replay_ratios]
        return [
            Variant("plain"),
            *replays,
            Variant("pseudo-replay", self.pseudo_ratio),
            Variant("paraphrase"),
            Variant("self-output"),
        ]


PLANS = {
    "tiny": Plan(steps=120, lr=1e-3, replay_ratios=(0.01, 0.05, 0.2), pseudo_ratio=0.05, per_skill=40, batch_size=16),
    "colab": Plan(
        steps=150,
        lr=2e-5,
        replay_ratios=(0.01, 0.05, 0.2),
        pseudo_ratio=0.05,
        per_skill=200,
        batch_size=2,  # x 8 accumulated: the micro-batch that fits a T4 (colab_budget)
        grad_accum=8,
        n_train=1000,
    ),
}


@dataclass
class VariantResult:
    """What one run did: per-skill accuracy after it, new-task accuracy, mean old-skill drop and sample-wise
    forgetting (as in Lab 02), and the mean target NLL of its new-task data under the starting model."""

    variant: Variant
    accuracy_after: dict[str, float]
    new_accuracy: float
    old_drop: float
    forgetting: float
    target_nll: float
    seconds: float
    losses: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self) | {"label": self.variant.label}


def replay_buffer(profile: Profile, per_skill: int, seed: int, loader: Loader | None = None) -> Pairs:
    """Old (user, reference) pairs to replay: up to ``per_skill`` of each old skill.

    Tiny: a balanced sample of tiny-chat's own SFT data (``World.chat_sft_by_skill``; a uniform sample would be
    almost all fact, JSON and restate questions, 1 080 each against 27 refusals). Colab: Qwen's SFT data is not
    public, so ``per_skill`` rows of Alpaca (``tatsu-lab/alpaca``, general instruction data) stand in for it.
    """
    if profile.name != "tiny":
        return load_alpaca(2 * per_skill, seed, loader)[:per_skill]
    groups = World().chat_sft_by_skill()
    rng = random.Random(seed)
    return [pair for skill in OLD_SKILLS for pair in _at_most(groups[skill], per_skill, rng)]


def pseudo_replay_prompts(profile: Profile, per_skill: int, seed: int, loader: Loader | None = None) -> list[str]:
    """Old-skill prompts without references, for the model to answer itself before training.

    Tiny: prompts chat SFT held out (``World.held_out_prompts``), up to ``per_skill`` per skill, so the replies are
    the model's generalisation, not copies of training answers (tiny-chat reproduces those exactly, which would make
    pseudo-replay identical to replay). Colab: ``per_skill`` Alpaca instructions, the rows drawn after
    ``replay_buffer``'s in the same sample, so the two pools are disjoint.
    """
    if profile.name != "tiny":
        return [user for user, _ in load_alpaca(2 * per_skill, seed, loader)[per_skill:]]
    held_out = World().held_out_prompts()
    rng = random.Random(seed)
    return [prompt for skill in OLD_SKILLS for prompt in _at_most(held_out[skill], per_skill, rng)]


def paraphrase_targets(profile: Profile, bench: ForgettingBenchmark) -> Pairs:
    """The new task with paraphrased references. Tiny: ``World.plain_answer`` ("ada stone lives in paris .") for
    each verbose reference. Colab: ``paraphrase_gsm8k`` (numbered steps, then the answer line)."""
    if profile.name != "tiny":
        return [(user, paraphrase_gsm8k(reply)) for user, reply in bench.new_task_train]
    return [(item.prompt, World.plain_answer(item)) for item in bench.new_task_eval]


def _at_most(pool: Sequence, n: int, rng: random.Random) -> list:
    return list(pool) if len(pool) <= n else rng.sample(list(pool), n)


def self_output(
    profile: Profile, model, tokenizer, bench: ForgettingBenchmark, rewrite_filter: Callable[..., list[Rewrite]]
) -> list[Rewrite]:
    """SDFT rewrites of the new task's references by ``model`` (``posttrain.methods.replay.self_output_targets``): the
    tiny world's restate prompt and word check, or on colab the SDFT paper's prompt and the GSM8K final-answer check."""
    if profile.name == "tiny":
        prompt, accept = restate_prompt, words_from_reference
    else:
        prompt, accept = sdft_prompt, same_final_answer
    return self_output_targets(
        model,
        tokenizer,
        bench.new_task_train,
        prompt=prompt,
        accept=accept,
        max_new_tokens=profile.max_new_tokens,
        rewrite_filter=rewrite_filter,
    )


@torch.no_grad()
def target_nll(model, tokenizer, pairs: Sequence[tuple[str, str]]) -> float:
    """Mean over ``pairs`` of the per-token negative log-likelihood of each assistant reply under ``model`` (the SFT
    loss before any update): low for targets the model would write itself, high for a foreign style."""
    device = next(model.parameters()).device
    losses = []
    for user, reply in pairs:
        batch = {
            k: v.to(device) for k, v in collate([chat_example(tokenizer, user, reply)], tokenizer.pad_token_id).items()
        }
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        losses.append(float(masked_sft_loss(logits.float(), batch["labels"])))
    return statistics.fmean(losses)


@dataclass
class Materials:
    """Everything the variants train on, built once from the starting model: the new task's targets per kind of
    target, the replay and pseudo-replay buffers, and the SDFT rewrites (for the lab's kept/dropped count)."""

    targets: dict[str, Pairs]
    replay: Pairs
    pseudo_replay: Pairs
    rewrites: list[Rewrite]
    target_nll: dict[str, float]


def prepare(
    profile: Profile,
    bench: ForgettingBenchmark,
    plan: Plan,
    seed: int,
    model,
    tokenizer,
    *,
    rewrite_filter: Callable[..., list[Rewrite]] = filter_rewrites,
    loader: Loader | None = None,
) -> Materials:
    """Build the ``Materials`` of a comparison with the starting ``model`` (before any training)."""
    rewrites = self_output(profile, model, tokenizer, bench, rewrite_filter)
    targets = {
        "plain": list(bench.new_task_train),
        "paraphrase": paraphrase_targets(profile, bench),
        "self-output": [(r.user, r.target) for r in rewrites],
    }
    prompts = pseudo_replay_prompts(profile, plan.per_skill, seed, loader)
    return Materials(
        targets=targets,
        replay=replay_buffer(profile, plan.per_skill, seed, loader),
        pseudo_replay=pseudo_replay_pairs(model, tokenizer, prompts, max_new_tokens=profile.max_new_tokens),
        rewrites=rewrites,
        target_nll={kind: target_nll(model, tokenizer, pairs) for kind, pairs in targets.items()},
    )


def run_variant(
    profile: Profile,
    bench: ForgettingBenchmark,
    variant: Variant,
    before: Snapshot,
    materials: Materials,
    plan: Plan,
    *,
    seed: int = 0,
    slots: Callable[[int, int, float], list[bool]] = replay_slots,
) -> VariantResult:
    """Fine-tune a fresh ``profile.chat_model`` on ``variant``'s data for ``plan.steps`` steps; score it against
    ``before``. ``slots`` is the replay slot rule (the notebook passes the student's)."""
    seed_everything(seed)
    model, tokenizer = load_model(profile.chat_model, dtype=torch.float32)
    kind = variant.kind if variant.kind in materials.targets else "plain"
    examples = [chat_example(tokenizer, u, a) for u, a in materials.targets[kind]]
    mixer = None
    if variant.kind.endswith("replay"):
        old = materials.replay if variant.kind == "replay" else materials.pseudo_replay
        if not old:
            raise ValueError(
                f"{variant.label} has nothing to replay: "
                + (
                    "the replay buffer is empty (check plan.per_skill)"
                    if variant.kind == "replay"
                    else f"the model ended none of its replies to the old prompts within {profile.max_new_tokens} "
                    "tokens (raise the profile's max_new_tokens)"
                )
            )
        mixer = ReplayMixer([chat_example(tokenizer, u, a) for u, a in old], variant.ratio, seed, slots=slots)
    config = TrainConfig(
        steps=plan.steps, lr=plan.lr, batch_size=plan.batch_size, grad_accum=plan.grad_accum, seed=seed, progress=False
    )
    clock = time.perf_counter()
    losses = train(model, examples, config, pad_id=tokenizer.pad_token_id, batch_mixer=mixer)
    seconds = time.perf_counter() - clock
    after = take_snapshot(model, tokenizer, bench, plan.steps, with_mc=False, max_new_tokens=profile.max_new_tokens)
    return VariantResult(
        variant=variant,
        **learning_and_forgetting(before, after),
        target_nll=materials.target_nll[kind],
        seconds=seconds,
        losses=losses,
    )


def compare(
    profile: Profile,
    bench: ForgettingBenchmark,
    plan: Plan,
    seed: int = 0,
    *,
    rewrite_filter: Callable[..., list[Rewrite]] = filter_rewrites,
    slots: Callable[[int, int, float], list[bool]] = replay_slots,
    loader: Loader | None = None,
    progress: Callable[[VariantResult], None] | None = None,
) -> tuple[Snapshot, Materials, list[VariantResult]]:
    """Run every variant of ``plan`` from fresh copies of the chat model; return the snapshot before, the
    materials and the runs. ``rewrite_filter`` and ``slots`` replace the SDFT filter and the replay slot rule."""
    seed_everything(seed)
    model, tokenizer = load_model(profile.chat_model, dtype=torch.float32)
    before = take_snapshot(model, tokenizer, bench, 0, with_mc=False, max_new_tokens=profile.max_new_tokens)
    materials = prepare(profile, bench, plan, seed, model, tokenizer, rewrite_filter=rewrite_filter, loader=loader)
    del model
    results = []
    for variant in plan.variants():
        results.append(run_variant(profile, bench, variant, before, materials, plan, seed=seed, slots=slots))
        if progress is not None:
            progress(results[-1])
    return before, materials, results


def forgetting_cut(results: Sequence[VariantResult], label: str) -> float:
    """The share of plain SFT's mean old-skill forgetting that the run ``label`` removes: 1 − F_label / F_plain
    (0 when plain SFT forgot nothing, so there was nothing to remove)."""
    by_label = {r.variant.label: r for r in results}
    if "plain" not in by_label or label not in by_label:
        raise ValueError(f"need runs 'plain' and {label!r}; have {sorted(by_label)}")
    plain = by_label["plain"].forgetting
    return 1 - by_label[label].forgetting / plain if plain else 0.0


def summarize(
    profile: Profile,
    seed: int,
    plan: Plan,
    before: Snapshot,
    materials: Materials,
    results: Sequence[VariantResult],
    theory: dict,
) -> dict:
    """Lab 03's ``results/03.json``: every run, the share of plain SFT's forgetting each removes, the SDFT filter's
    kept count, the pseudo-replay buffer's size and the theory experiments."""
    plain = next(r for r in results if r.variant.kind == "plain")
    return {
        "profile": profile.name,
        "model": profile.chat_model,
        "seed": seed,
        "plan": asdict(plan),
        "accuracy_before": before.accuracies(),
        "runs": [r.to_json() for r in results],
        "forgetting_cut": {
            r.variant.label: forgetting_cut(results, r.variant.label) for r in results if r is not plain
        },
        "new_accuracy_share": {
            r.variant.label: r.new_accuracy / plain.new_accuracy if plain.new_accuracy else 0.0 for r in results
        },
        "self_output_kept": sum(r.kept for r in materials.rewrites),
        "self_output_total": len(materials.rewrites),
        "replay_buffer": len(materials.replay),
        "pseudo_replay_buffer": len(materials.pseudo_replay),
        "target_nll": materials.target_nll,
        "theory": theory,
        "seconds": sum(r.seconds for r in results),
        "environment": run_environment(),
    }


def theory_study(
    separation: float = 4.0,
    drift_separations: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0),
    steps: int = 2000,
    forward_replay: float = 0.1,
    reverse_replay: float = 0.2,
    bhattacharyya: Callable[[float], float] = bhattacharyya_coefficient,
    estimator: ReverseKLEstimator = sampled_reverse_kl,
    seed: int = 0,
) -> dict:
    """Lab 03's theory experiments, as a JSON-ready dict.

    - ``mass``: forward- and reverse-KL trajectories at ``separation`` (old-mode mass over training).
    - ``drift``: the old mean's largest drift under exact reverse KL at each of ``drift_separations``, the
      Bhattacharyya coefficient of each (``bhattacharyya``) and the correlation of log-drift with log-BC.
    - ``replay``: forward KL with a share ``forward_replay`` of old data (Adam, which reaches the new optimum
      w = ρ within the budget) and the finite-batch reverse-KL estimator (``estimator``, batch 256) with a share
      ``reverse_replay`` of the proposal from the old mode, each against its run without replay (the two shares
      under ``replay_ratio``).
    """
    mass = {objective: train_mixture(objective, separation, steps, seed=seed) for objective in ("forward", "reverse")}
    drifts = [train_mixture("reverse", d, steps, seed=seed).drift for d in drift_separations]
    coefficients = [bhattacharyya(d) for d in drift_separations]
    replay = {
        "forward": train_mixture("forward", separation, steps, lr=0.01, optimizer="adam", seed=seed),
        "forward_replay": train_mixture(
            "forward", separation, steps, lr=0.01, optimizer="adam", replay=forward_replay, seed=seed
        ),
        "reverse_sampled": train_mixture("reverse", separation, steps, batch_size=256, seed=seed, estimator=estimator),
        "reverse_sampled_replay": train_mixture(
            "reverse", separation, steps, batch_size=256, replay=reverse_replay, seed=seed, estimator=estimator
        ),
    }
    return {
        "separation": separation,
        "steps": steps,
        "mass": {name: asdict(t) for name, t in mass.items()},
        "drift": {
            "separations": list(drift_separations),
            "drift": drifts,
            "bhattacharyya": coefficients,
            "log_correlation": log_correlation(drifts, coefficients),
        },
        "replay": {name: asdict(t) for name, t in replay.items()},
        "replay_ratio": {"forward": forward_replay, "reverse": reverse_replay},
    }


def colab_budget(plan: Plan = PLANS["colab"], n_eval: int = 40, max_new_tokens: int = 256) -> LabBudget:
    """Lab 03 on a GPU (the notebook frees its model after ``prepare``): one run per variant, GSM8K pairs as long as
    ``GSM8K_LONG_TOKENS``; decoding the SDFT rewrites of every training pair, the pseudo-replay answers and a
    snapshot before and after each run."""
    variants = len(plan.variants())
    run = TrainingRun(
        "fine-tuning (each variant)",
        plan.steps,
        plan.batch_size,
        plan.grad_accum,
        GSM8K_LONG_TOKENS,
        GSM8K_MEAN_TOKENS,
        repeats=variants,
    )
    decoded = (plan.n_train + plan.per_skill + (1 + variants) * 3 * n_eval) * max_new_tokens
    return LabBudget("03_replay_and_self_distillation", (run,), decoded)
