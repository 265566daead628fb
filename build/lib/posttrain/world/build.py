"""Build the tiny world's tokenizer and models: ``tiny-base``, ``tiny-chat`` and ``tiny-base-cpt``.

Pipeline (each stage is the shared ``posttrain.core.train.train`` loop):
1. ``tiny-base``: a Llama-architecture LM pre-trained from scratch on ``World.pretraining_corpus``.
2. ``tiny-chat``: base + chat SFT (loss on answers only) on ``World.chat_sft_examples``.
3. ``tiny-base-cpt``: base + continued pre-training on ``World.cpt_corpus`` (new people), no chat.

Run ``python -m posttrain.world build [--out DIR] [--quick]``; the shipped models were built by it.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..core.data import chat_example, text_example
from ..core.evaluate import accuracy, evaluate_skills, next_word_correct
from ..core.models import SHIPPED_DIR
from ..core.profiles import seed_everything
from ..core.train import TrainConfig, train
from .benchmarks import as_chat_items
from .tiny import World, WorldSpec

SPECIAL_TOKENS = {
    "pad": "<pad>",
    "unk": "<unk>",
    "bos": "<bos>",
    "eos": "<eos>",
    "user": "<user>",
    "assistant": "<asst>",
}
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<user> {{ message['content'] }} "
    "{% elif message['role'] == 'assistant' %}<asst> {{ message['content'] }} {{ eos_token }} "
    "{% else %}{{ raise_exception('the tiny world knows only user and assistant turns') }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<asst> {% endif %}"
)


def make_tokenizer(world: World) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over the world's vocabulary, with special tokens and a chat template."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS.values())}
    for word in world.vocabulary:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        additional_special_tokens=[SPECIAL_TOKENS["user"], SPECIAL_TOKENS["assistant"]],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"  # generation pads on the left; the SFT collator pads itself
    return tokenizer


@dataclass(frozen=True)
class BuildConfig:
    """Sizes and budgets of the build. ``quick`` shrinks every budget (tests only)."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 6  # with 4 layers the fact is recalled at the last token only (docs/world.md)
    num_heads: int = 4
    base_steps: int = 2000
    base_lr: float = 3e-3
    chat_steps: int = 500
    chat_lr: float = 1e-3
    cpt_steps: int = 300
    cpt_lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0

    @classmethod
    def quick(cls) -> BuildConfig:
        return cls(base_steps=200, chat_steps=100, cpt_steps=50)


def model_config(tokenizer: PreTrainedTokenizerFast, build: BuildConfig) -> LlamaConfig:
    """The tiny Llama: untied embeddings (a chat vector then also moves the output layer)."""
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=build.hidden_size,
        intermediate_size=build.intermediate_size,
        num_hidden_layers=build.num_layers,
        num_attention_heads=build.num_heads,
        num_key_value_heads=build.num_heads,
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _stage(
    model, examples, steps: int, lr: float, build: BuildConfig, pad_id: int, desc: str, group_by_length: bool
) -> float:
    start = time.time()
    config = TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=build.batch_size,
        warmup_steps=50,
        seed=build.seed,
        group_by_length=group_by_length,
    )
    losses = train(model, examples, config, pad_id=pad_id)
    print(f"{desc}: {steps} steps in {time.time() - start:.0f} s, final loss {sum(losses[-20:]) / 20:.3f}")
    return time.time() - start


def build_world_models(out_dir: Path, build: BuildConfig, spec: WorldSpec | None = None) -> dict[str, float]:
    """Train and save ``tiny-base``, ``tiny-chat`` and ``tiny-base-cpt`` under ``out_dir``; return stage times."""
    world = World(spec)
    tokenizer = make_tokenizer(world)
    seed_everything(build.seed)
    base = LlamaForCausalLM(model_config(tokenizer, build))
    pad = tokenizer.pad_token_id
    times = {}

    corpus = [text_example(tokenizer, t) for t in world.pretraining_corpus(20000, seed=build.seed)]
    times["base"] = _stage(base, corpus, build.base_steps, build.base_lr, build, pad, "tiny-base", False)
    _save(base, tokenizer, out_dir / "tiny-base", world, build)

    chat = LlamaForCausalLM(base.config)
    chat.load_state_dict(base.state_dict())
    chat_data = [chat_example(tokenizer, u, a) for u, a in world.chat_sft_examples()]
    times["chat"] = _stage(chat, chat_data, build.chat_steps, build.chat_lr, build, pad, "tiny-chat", True)
    _save(chat, tokenizer, out_dir / "tiny-chat", world, build)

    cpt = LlamaForCausalLM(base.config)
    cpt.load_state_dict(base.state_dict())
    rng = random.Random(build.seed)
    # 20 % of the original corpus is mixed in, as continued pre-training recipes do, so CPT adds
    # knowledge without erasing the base's own.
    cpt_text = world.cpt_corpus(4000, seed=build.seed) + rng.sample(world.pretraining_corpus(20000), 1000)
    cpt_data = [text_example(tokenizer, t) for t in cpt_text]
    times["cpt"] = _stage(cpt, cpt_data, build.cpt_steps, build.cpt_lr, build, pad, "tiny-base-cpt", True)
    _save(cpt, tokenizer, out_dir / "tiny-base-cpt", world, build)
    return times


def _save(model, tokenizer, path: Path, world: World, build: BuildConfig) -> None:
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    # Stored in float16 (half the repo size; the skill table is unchanged), trained and loaded in float32.
    model.save_pretrained(path, state_dict={k: v.to(torch.float16) for k, v in model.state_dict().items()})
    tokenizer.save_pretrained(path)
    (path / "world.json").write_text(json.dumps({"spec": asdict(world.spec), "build": asdict(build)}, indent=1))


def skill_table(models_dir: Path, spec: WorldSpec | None = None) -> dict[str, dict[str, float]]:
    """Accuracy of each shipped model on each skill of the world (the table in docs/world.md).

    Chat skills are scored on greedy chat replies; ``chat`` is template following (the reply ends its
    turn and opens no new one) over every skill's prompts; ``fact_held_out`` is fact recall on the people
    left out of chat SFT (knowledge extraction); ``cpt_facts_chat`` asks chat questions about the people
    only CPT taught; ``restate_new_people`` answers questions about unseen people given a long-form hint
    (what self-distillation needs: the model rewrites references it could not know); ``base_knowledge`` /
    ``cpt_knowledge`` probe the raw LM ("<name> lives in" → city).
    The last row checks that the world supports the chat vector (Huang et al. 2024, arXiv:2310.04799):
    tiny-base-cpt + (tiny-chat − tiny-base).
    """
    world = World(spec)
    held_out = {p.name for i, p in enumerate(world.people) if world.held_out_of_chat(i)}
    skills = {
        **world.skills,
        "chat": as_chat_items([i for items in world.skills.values() for i in items[::4]]),
        "fact_held_out": [item for item in world.skills["fact"] if item.subject in held_out],
        "cpt_facts_chat": world.fact_items(world.cpt_people),
        "restate_new_people": world.fact_items(world.new_people, "restate"),
    }
    probes = {
        "base_knowledge": world.knowledge_probes(world.people),
        "cpt_knowledge": world.knowledge_probes(world.cpt_people),
    }
    tokenizer = PreTrainedTokenizerFast.from_pretrained(models_dir / "tiny-chat")
    models = {
        name: LlamaForCausalLM.from_pretrained(models_dir / name, dtype=torch.float32).eval()
        for name in ("tiny-base", "tiny-chat", "tiny-base-cpt")
    }
    merged = copy.deepcopy(models["tiny-base-cpt"])
    base, chat = models["tiny-base"].state_dict(), models["tiny-chat"].state_dict()
    merged.load_state_dict({k: v + chat[k] - base[k] for k, v in merged.state_dict().items()})
    models["tiny-base-cpt + chat vector"] = merged
    table = {}
    for name, model in models.items():
        table[name] = evaluate_skills(model, tokenizer, skills)
        table[name] |= {key: accuracy(next_word_correct(model, tokenizer, pairs)) for key, pairs in probes.items()}
    return table


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    """The skill table as Markdown: one row per skill, one column per model."""
    models = list(table)
    lines = ["| skill | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for skill in table[models[0]]:
        lines.append(f"| {skill} | " + " | ".join(f"{table[m][skill]:.2f}" for m in models) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m posttrain.world build [--out DIR] [--quick]`` or ``report [--out DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m posttrain.world", description=__doc__)
    parser.add_argument("command", choices=["build", "report"])
    parser.add_argument("--out", type=Path, default=SHIPPED_DIR, help="where to write the three model folders")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, for tests of the pipeline only")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "report":
        print(markdown_table(skill_table(args.out)))
        return
    build = replace(BuildConfig.quick() if args.quick else BuildConfig(), seed=args.seed)
    times = build_world_models(args.out, build)
    print(json.dumps(times))
