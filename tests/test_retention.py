"""Lab 03 study (``posttrain.studies.replay_and_self_distillation``): variant validation, the buffers and targets
each variant trains on, the forgetting cut, and a whole comparison on the colab code path offline (a tiny random
Qwen2 with a ChatML tokenizer and hub fixtures stand in for Qwen2.5-0.5B-Instruct, GSM8K, AdvBench, MMLU and
Alpaca)."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from posttrain.core.forgetting import take_snapshot
from posttrain.core.models import load_model
from posttrain.core.profiles import PROFILES
from posttrain.studies.replay_and_self_distillation import (
    PLANS,
    Plan,
    Variant,
    VariantResult,
    forgetting_cut,
    paraphrase_targets,
    prepare,
    pseudo_replay_prompts,
    replay_buffer,
    run_variant,
    summarize,
    target_nll,
)
from posttrain.world.benchmarks import forgetting_benchmark, tiny_forgetting_benchmark
from posttrain.world.tiny import World

TINY = PROFILES["tiny"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "distill"}, "unknown variant 'distill'"),
        ({"kind": "replay"}, "needs a replay ratio in \\(0, 1\\]"),
        ({"kind": "pseudo-replay", "ratio": 1.5}, "needs a replay ratio"),
        ({"kind": "self-output", "ratio": 0.05}, "only replay variants take a ratio"),
    ],
)
def test_bad_variants_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Variant(**kwargs)


def test_the_tiny_plan_compares_seven_variants_in_table_order():
    labels = [v.label for v in PLANS["tiny"].variants()]
    assert labels == ["plain", "replay 1%", "replay 5%", "replay 20%", "pseudo-replay 5%", "paraphrase", "self-output"]


def result(label: str, forgetting: float) -> VariantResult:
    kind, _, share = label.partition(" ")
    variant = Variant(kind, float(share.rstrip("%")) / 100 if share else 0.0)
    return VariantResult(variant, {}, 1.0, forgetting, forgetting, 1.0, 0.0)


def test_forgetting_cut_is_the_share_of_plain_forgetting_removed():
    runs = [result("plain", 0.8), result("replay 5%", 0.2), result("self-output", 0.6)]
    assert forgetting_cut(runs, "replay 5%") == pytest.approx(0.75)
    assert forgetting_cut(runs, "self-output") == pytest.approx(0.25)
    with pytest.raises(ValueError, match="need runs 'plain' and 'paraphrase'"):
        forgetting_cut(runs, "paraphrase")


def test_tiny_buffers_are_balanced_and_pseudo_replay_prompts_were_never_trained_on():
    world = World()
    buffer = replay_buffer(TINY, per_skill=40, seed=0)
    groups = world.chat_sft_by_skill()
    skill_of = {pair: skill for skill, pairs in groups.items() for pair in pairs}
    counts = Counter(skill_of[pair] for pair in buffer)
    assert counts == {"fact": 40, "json": 40, "restate": 40, "refusal": 27, "howto": 27, "addition": 40}
    assert buffer != replay_buffer(TINY, per_skill=40, seed=1)
    prompts = pseudo_replay_prompts(TINY, per_skill=40, seed=0)
    assert len(prompts) == 40 * 3 + 9 + 9 + 25
    trained = {user for user, _ in world.chat_sft_examples()}
    assert not trained & set(prompts)


def test_target_styles_are_ordered_by_their_distance_from_tiny_chat():
    bench = tiny_forgetting_benchmark("verbose_facts", n_per_skill=4)
    model, tokenizer = load_model("tiny-chat", device="cpu")
    verbose = bench.new_task_train[:24]
    paraphrased = paraphrase_targets(TINY, bench)[:24]
    own = [(item.prompt, item.answer) for item in bench.new_task_eval[:24]]  # what tiny-chat would say: one word
    assert [u for u, _ in verbose] == [u for u, _ in paraphrased] == [u for u, _ in own]
    assert verbose[0][1].startswith("well , as far as i know")
    nll = [target_nll(model, tokenizer, pairs) for pairs in (verbose, paraphrased, own)]
    assert nll == sorted(nll, reverse=True), nll  # measured about 9.2 > 6.7 > 4


def test_lab03_comparison_runs_on_the_colab_code_path(tiny_qwen2_dir, hub_loader):
    profile = dataclasses.replace(PROFILES["colab"], chat_model=str(tiny_qwen2_dir), max_new_tokens=4)
    bench = forgetting_benchmark(profile, n_per_skill=2, seed=0, n_train=4, loader=hub_loader)
    plan = Plan(steps=2, lr=1e-3, replay_ratios=(0.5,), pseudo_ratio=0.5, per_skill=3, batch_size=2)
    model, tokenizer = load_model(profile.chat_model)
    before = take_snapshot(model, tokenizer, bench, 0, with_mc=False, max_new_tokens=4)
    materials = prepare(profile, bench, plan, 0, model, tokenizer, loader=hub_loader)
    assert len(materials.replay) == 3 and all(reply for _, reply in materials.replay)  # Alpaca rows
    prompts = pseudo_replay_prompts(profile, plan.per_skill, 0, hub_loader)
    assert len(prompts) == 3 and not set(prompts) & {user for user, _ in materials.replay}
    assert all(t.startswith("Let's solve this step by step.") for _, t in materials.targets["paraphrase"])
    assert len(materials.rewrites) == 4 and set(materials.target_nll) == {"plain", "paraphrase", "self-output"}
    # a random model never ends its turn within 4 tokens: pseudo-replay has nothing to replay, and says why
    assert materials.pseudo_replay == []
    with pytest.raises(ValueError, match="ended none of its replies to the old prompts within 4 tokens"):
        run_variant(profile, bench, Variant("pseudo-replay", 0.5), before, materials, plan)
    materials.pseudo_replay = [("Name a colour.", "Blue.")]
    runs = [run_variant(profile, bench, variant, before, materials, plan) for variant in plan.variants()]
    assert [r.variant.label for r in runs] == ["plain", "replay 50%", "pseudo-replay 50%", "paraphrase", "self-output"]
    results = summarize(profile, 0, plan, before, materials, runs, theory={})
    assert set(results["forgetting_cut"]) == {"replay 50%", "pseudo-replay 50%", "paraphrase", "self-output"}
    assert set(before.old) == {"json_open", "refusal_open", "chat"}
    assert results["pseudo_replay_buffer"] == 1 and results["self_output_total"] == 4
