"""What a lab trains on and measures, per profile: one benchmark object, the same fields in both.

``tiny`` draws everything from the tiny world (``posttrain.world``); ``colab`` loads real hub datasets
(``posttrain.hub_tasks``: GSM8K as the narrow new task, JSON-format questions, AdvBench refusals, MMLU).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .evaluate import as_chat_items
from .hub_tasks import Loader, colab_forgetting_benchmark
from .profiles import Profile
from .world import Item, World, WorldSpec

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


def _subsample(items: list[Item], n: int, rng: random.Random) -> list[Item]:
    return items if len(items) <= n else rng.sample(items, n)


def tiny_forgetting_benchmark(new_task: str = "multiplication", n_per_skill: int = 60) -> ForgettingBenchmark:
    """The tiny-profile benchmark: fine-tune tiny-chat on ``new_task`` (default: the times table, a new
    operator in the addition template) and measure fact recall, JSON format, refusal, benign how-to
    answers, addition and chat-template following, plus k = 4 multiple-choice versions of fact, JSON,
    refusal and addition. ``verbose_facts`` trains on long-form references
    (``World.long_form_answer``). The eval subsets are fixed, not drawn by the training seed, so every run
    scores the same items."""
    world = World(WorldSpec())
    rng = random.Random(1234)
    old = {
        name: _subsample(world.skills[name], n_per_skill, rng)
        for name in ("fact", "json", "refusal", "howto", "addition")
    }
    old["chat"] = as_chat_items([i for items in old.values() for i in items[::3]])
    mc = {name: old[name] for name in ("fact", "json", "refusal", "addition")}
    new_items = world.new_task(new_task)
    reference = World.long_form_answer if new_task == "verbose_facts" else (lambda item: item.answer)
    return ForgettingBenchmark(
        new_task_train=[(i.prompt, reference(i)) for i in new_items],
        new_task_eval=new_items,
        old_skills=old,
        multiple_choice=mc,
    )


def forgetting_benchmark(
    profile: Profile,
    n_per_skill: int = 60,
    seed: int = 0,
    n_train: int = 2000,
    loader: Loader | None = None,
    new_task: str = "multiplication",
) -> ForgettingBenchmark:
    """The forgetting benchmark for ``profile``: the tiny world with its ``new_task`` on ``tiny``; on ``colab``
    ``n_train`` GSM8K training pairs and hub evaluation sets drawn with ``seed`` (``loader`` replaces
    ``datasets.load_dataset``, which is how the tests serve local fixtures)."""
    if profile.name == "tiny":
        return tiny_forgetting_benchmark(new_task, n_per_skill=n_per_skill)
    parts = colab_forgetting_benchmark(n_train=n_train, n_eval=n_per_skill, seed=seed, loader=loader)
    old = dict(parts["old_skills"])
    old["chat"] = as_chat_items([i for items in old.values() for i in items[::3]])
    return ForgettingBenchmark(parts["new_task_train"], parts["new_task_eval"], old, parts["multiple_choice"])
