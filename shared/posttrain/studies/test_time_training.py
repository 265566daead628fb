"""Lab 06's experiments: test-time training, the model learning from its test inputs without their labels.

The vision world (``world.digits``): a CNN trained on clean digits meets corrupted ones.
- ``corruption_table``: at each corruption, the unadapted model, BN-adapt (the test batch's own statistics, no
  gradient), TENT (batch statistics + one entropy step per batch on the norms' affine parameters, arXiv:2006.10726)
  and pretext TTT (a few steps on the rotation task of the test batch, then reset; arXiv:1909.13231).
- ``continual_stream``: a long, class-sorted stream of changing corruptions, adapted on without labels, with no
  reset, a filter of unreliable samples (EATA / SAR) with and without EATA's pull toward the start, a periodic reset
  (RDumb) and a reset on a detected shift (after Dynamic SUTA). Accuracy per round of the stream shows the collapse
  of continual adaptation.

The language world (``world.tiny``): ``nearest_neighbour_study`` asks tiny-chat chat questions about the people
only continued pre-training saw (their statements are in the CPT corpus alone), with no adaptation, with the
retrieved statements in the prompt, and with nearest-neighbour TTT (arXiv:2305.18466) on them.

Every setting was chosen on development seeds 10 and 11, never on the lab's seeds 0-2.
"""

from __future__ import annotations

import copy
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from ..core.evaluate import Item, per_sample_correct
from ..core.evaluate import accuracy as share_correct
from ..core.models import load_model
from ..methods import tta
from ..world.build import BuildConfig
from ..world.digits import CORRUPTIONS, Digits, DigitsCNN, accuracy, corrupt, load_digits, train_digits_cnn
from ..world.tiny import World


@dataclass(frozen=True)
class VisionPlan:
    """Settings of the digits experiments (chosen on development seeds 10 and 11)."""

    epochs: int = 15  # joint training of the digit and rotation heads: clean test accuracy 0.98
    severity: int = 5  # of every corruption, where the unadapted model falls to 0.16-0.48
    batch_size: int = 32
    tent_lr: float = 1e-3  # Adam, one step per batch, one pass (TENT's protocol); more steps or lr only hurt here
    pretext_steps: int = 5
    pretext_lr: float = 1e-2  # SGD on the encoder; 5e-2 destroyed the digit head's features
    stream_rounds: int = 5  # the stream: every corruption in turn, this many times
    stream_batch: int = 16  # small, class-sorted batches: where SAR, NOTE and RDumb report the collapse
    stream_lr: float = 5e-3
    anchor: float = 1.0  # EATA's regulariser with unit weights; 1, 10 and 100 all held the stream at BN-adapt's level
    reset_every: int = 50  # batches; blind to the domains, which last 38 batches
    shift_threshold: float = 4.0  # z-score of the batch's pixel mean or spread (ShiftDetector)
    shift_warmup: int = 5


VISION_PLANS = {"tiny": VisionPlan()}


def digits_model(seed: int, plan: VisionPlan) -> tuple[Digits, DigitsCNN]:
    """The seed's split of the digits and a ``DigitsCNN`` trained on it with the rotation pretext task."""
    digits = load_digits(seed)
    model = train_digits_cnn(
        digits,
        seed=seed,
        epochs=plan.epochs,
        extra_loss=lambda m, images: tta.pretext_loss(m.encoder, m.rotation_head, images),
    )
    return digits, model


@torch.no_grad()
def _predict(model: torch.nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([model(batch) for batch in batches])


def tent_adapter(model: DigitsCNN, lr: float, loss=tta.entropy_loss, anchor: float = 0.0) -> tta.Adapter:
    """TENT on a copy of ``model``: batch statistics, Adam on the norms' affine parameters (``Adapter``)."""
    adapted = tta.use_batch_statistics(copy.deepcopy(model))
    return tta.Adapter(adapted, tta.norm_affine_parameters(adapted), loss, lr=lr, anchor=anchor)


def pretext_predictions(model: DigitsCNN, batches: Sequence[torch.Tensor], steps: int, lr: float) -> torch.Tensor:
    """Episodic pretext TTT: for each batch, ``steps`` rotation-task steps on the encoder of a copy of ``model``,
    predict, restore."""
    adapted = copy.deepcopy(model)
    predictions = []
    for batch in batches:
        with tta.restored(adapted):
            tta.pretext_ttt(adapted.encoder, adapted.rotation_head, batch, steps=steps, lr=lr)
            predictions.append(_predict(adapted, [batch]))
    return torch.cat(predictions)


def corruption_table(digits: Digits, model: DigitsCNN, plan: VisionPlan, seed: int) -> dict[str, dict[str, float]]:
    """Accuracy on the test split under each corruption (at ``plan.severity``, shuffled into batches) of the
    unadapted model, BN-adapt, TENT and pretext TTT; and their mean over the corruptions (``mean``)."""
    table = {}
    order = torch.randperm(len(digits.test_labels), generator=torch.Generator().manual_seed(seed))
    labels = digits.test_labels[order]
    for corruption in CORRUPTIONS:
        images = corrupt(digits.test_images, corruption, plan.severity, seed=seed)[order]
        batches = list(images.split(plan.batch_size))
        tent = tent_adapter(model, plan.tent_lr)
        table[corruption] = {
            "unadapted": accuracy(_predict(model, batches), labels),
            "bn_adapt": accuracy(_predict(tta.use_batch_statistics(copy.deepcopy(model)), batches), labels),
            "tent": accuracy(torch.cat(tta.adapt_stream(tent, batches)), labels),
            "pretext": accuracy(pretext_predictions(model, batches, plan.pretext_steps, plan.pretext_lr), labels),
        }
    methods = table[CORRUPTIONS[0]]
    table["mean"] = {m: statistics.fmean(table[c][m] for c in CORRUPTIONS) for m in methods}
    return table


def corrupted_stream(digits: Digits, plan: VisionPlan, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The long stream: each round runs through every corruption (at ``plan.severity``, fresh noise per round), and
    each corruption's test images come sorted by class in batches of ``plan.stream_batch``. Returns (batches,
    labels)."""
    order = torch.argsort(digits.test_labels, stable=True)
    batches, labels = [], []
    for round_ in range(plan.stream_rounds):
        for corruption in CORRUPTIONS:
            images = corrupt(digits.test_images[order], corruption, plan.severity, seed=1000 * seed + round_)
            batches += list(images.split(plan.stream_batch))
            labels += list(digits.test_labels[order].split(plan.stream_batch))
    return batches, labels


STREAM_METHODS = (
    "unadapted",
    "bn_adapt",
    "episodic",
    "continual",
    "continual_filtered",
    "eata",
    "periodic_reset",
    "shift_reset",
)


def continual_stream(digits: Digits, model: DigitsCNN, plan: VisionPlan, seed: int) -> dict[str, list[float]]:
    """Accuracy per round of the stream (``corrupted_stream``) for each of ``STREAM_METHODS``: no adaptation,
    BN-adapt, TENT reset before every batch (episodic), TENT never reset (continual), continual with EATA's filter
    and weights (``reliable_sample_weights``), that filter with EATA's pull toward the start (``anchor_penalty``),
    continual reset every ``plan.reset_every`` batches, and continual reset
    when ``ShiftDetector`` flags the batch's pixel statistics."""
    batches, labels = corrupted_stream(digits, plan, seed)
    batch_normalised = tta.use_batch_statistics(copy.deepcopy(model))  # BN-adapt keeps no state between batches

    def filtered(logits: torch.Tensor) -> torch.Tensor:
        return tta.entropy_loss(logits, tta.reliable_sample_weights(logits))

    runs = {
        "unadapted": lambda: [_predict(model, [b]) for b in batches],
        "bn_adapt": lambda: [_predict(batch_normalised, [b]) for b in batches],
        "episodic": lambda: tta.adapt_stream(tent_adapter(model, plan.stream_lr), batches, "episodic"),
        "continual": lambda: tta.adapt_stream(tent_adapter(model, plan.stream_lr), batches),
        "continual_filtered": lambda: tta.adapt_stream(tent_adapter(model, plan.stream_lr, filtered), batches),
        "eata": lambda: tta.adapt_stream(tent_adapter(model, plan.stream_lr, filtered, plan.anchor), batches),
        "periodic_reset": lambda: tta.adapt_stream(
            tent_adapter(model, plan.stream_lr), batches, "periodic", every=plan.reset_every
        ),
        "shift_reset": lambda: tta.adapt_stream(
            tent_adapter(model, plan.stream_lr),
            batches,
            "on_shift",
            detector=tta.ShiftDetector(plan.shift_threshold, plan.shift_warmup),
        ),
    }
    per_round = len(batches) // plan.stream_rounds
    curves = {}
    for method, run_method in runs.items():
        correct = [(p.argmax(-1) == y).float() for p, y in zip(run_method(), labels, strict=True)]
        curves[method] = [
            float(torch.cat(correct[r * per_round : (r + 1) * per_round]).mean()) for r in range(plan.stream_rounds)
        ]
    return curves


def run_vision(seed: int, plan: VisionPlan = VISION_PLANS["tiny"]) -> dict:
    """The vision experiments of one seed: the clean accuracy, ``corruption_table`` and ``continual_stream``."""
    digits, model = digits_model(seed, plan)
    return {
        "seed": seed,
        "plan": asdict(plan),
        "clean_accuracy": accuracy(_predict(model, [digits.test_images]), digits.test_labels),
        "corruptions": corruption_table(digits, model, plan, seed),
        "stream": continual_stream(digits, model, plan, seed),
    }


@dataclass(frozen=True)
class LanguagePlan:
    """Settings of nearest-neighbour TTT on tiny-chat (chosen on development seeds 10 and 11)."""

    neighbours: int = 6  # 2-8 tried; more steps wear off the chat format (8 at lr 1e-3: 0.02 answered)
    lr: float = 5e-4  # Adam, one step per neighbour; 2e-3 answered nothing (the replies lose the chat format)
    in_context: tuple[int, ...] = (1, 3)  # statements in the prompt; 6 (~110 tokens) overflow the 128-token window
    pretraining_lines: int = 20000  # the corpora the shipped models were trained on (world.build)
    cpt_lines: int = 4000


LANGUAGE_PLANS = {"tiny": LanguagePlan()}


def retrieval_index(world: World, plan: LanguagePlan) -> tta.TfidfIndex:
    """A TF-IDF index over the training texts: tiny-base's pre-training corpus and tiny-base-cpt's CPT corpus, as
    ``world.build`` drew them (distinct lines). Only the CPT corpus states the CPT-only people's facts."""
    seed = BuildConfig().seed
    texts = world.pretraining_corpus(plan.pretraining_lines, seed=seed) + world.cpt_corpus(plan.cpt_lines, seed=seed)
    return tta.TfidfIndex(list(dict.fromkeys(texts)))


def in_context(item: Item, statements: Sequence[str]) -> Item:
    """``item`` with the retrieved ``statements`` written before its question (retrieval in context, no training)."""
    return Item(
        item.skill,
        f"{' '.join(statements)} {item.prompt}",
        item.answer,
        item.choices,
        item.answer_index,
        item.subject,
        item.relation,
        item.scorer,
    )


def nearest_neighbour_study(seed: int, plan: LanguagePlan = LANGUAGE_PLANS["tiny"]) -> dict:
    """Share of chat questions about the CPT-only people (every person and relation; ``seed`` draws the question
    templates) that tiny-chat answers: without adaptation, with the nearest statements in the prompt (as many as each
    of ``plan.in_context``), and after nearest-neighbour TTT on the ``neighbours`` nearest (each question starts from
    the shipped weights)."""
    world = World()
    model, tokenizer = load_model("tiny-chat", device="cpu", dtype=torch.float32)
    items = world.fact_items(world.cpt_people, rng=random.Random(seed))
    index = retrieval_index(world, plan)
    nearest = [index.nearest(item.prompt, plan.neighbours) for item in items]

    def answers(questions: Sequence[Item]) -> float:
        return share_correct(per_sample_correct(model, tokenizer, questions))

    tuned = [
        tta.nearest_neighbour_ttt(
            model, tokenizer, texts, lambda m, item=item: per_sample_correct(m, tokenizer, [item])[0], lr=plan.lr
        )
        for item, texts in tqdm(
            zip(items, nearest, strict=True), total=len(items), desc="nearest-neighbour TTT", leave=False
        )
    ]
    return {
        "seed": seed,
        "plan": asdict(plan),
        "questions": len(items),
        "retrieved_about_the_person": share_correct(
            [item.subject in texts[0] for item, texts in zip(items, nearest, strict=True)]
        ),
        "no_adaptation": answers(items),
        "in_context": {
            str(n): answers([in_context(i, t[:n]) for i, t in zip(items, nearest, strict=True)])
            for n in plan.in_context
        },
        "nearest_neighbour_ttt": share_correct(tuned),
    }
