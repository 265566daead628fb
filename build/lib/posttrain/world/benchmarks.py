"""What a lab trains on and measures, per profile: one ``ForgettingBenchmark``, the same fields in both.

``tiny`` draws everything from the tiny world (``posttrain.world.tiny``); ``colab`` loads real hub datasets
(``posttrain.world.hub``: GSM8K as the narrow new task, JSON-format questions, AdvBench refusals, MMLU). Both add
the template-following probes of skill ``chat`` (``as_chat_items``), whose scorer this module registers.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..core.evaluate import Generation, Item, register_scorer
from ..core.forgetting import ForgettingBenchmark
from ..core.profiles import Profile
from .hub import Loader, colab_forgetting_benchmark
from .tiny import World, WorldSpec


@register_scorer("chat_turn")
def follows_chat_template(item: Item, reply: Generation) -> bool:
    """Template following: the reply is non-empty, ends its turn and opens no new turn (no turn marker in it)."""
    return reply.stopped and bool(reply.text) and "<user>" not in reply.text and "<asst>" not in reply.text


def as_chat_items(items: Sequence[Item]) -> list[Item]:
    """Re-label items as template-following probes of skill ``chat`` (scored by ``follows_chat_template``)."""
    return [Item("chat", i.prompt, i.answer, i.choices, i.answer_index, scorer="chat_turn") for i in items]


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
