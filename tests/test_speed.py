"""``posttrain.core.speed``, what ``make bench`` measures: the numbers are what they say (counts, FLOPs per step),
not how fast they are (that is the bench's job, ``docs/bench/speed.json``)."""

from __future__ import annotations

import pytest
import torch

from posttrain.core.data import chat_example
from posttrain.core.forgetting import ForgettingBenchmark
from posttrain.core.models import load_model
from posttrain.core.speed import gemm_peak_flops, snapshot_seconds, training_flops
from posttrain.core.train import TrainConfig
from posttrain.world.benchmarks import tiny_forgetting_benchmark


def test_the_gemm_peak_is_a_positive_rate():
    assert gemm_peak_flops(size=64, repeats=2) > 0


def test_a_training_step_counts_six_flops_per_parameter_and_token():
    model, tokenizer = load_model("tiny-chat", device="cpu", dtype=torch.float32)
    examples = [chat_example(tokenizer, "what is 2 times 3 ?", "6"), chat_example(tokenizer, "hi", "hello !")]
    config = TrainConfig(steps=4, lr=1e-4, batch_size=2, grad_accum=2, progress=False)
    step = training_flops(model, examples, config, pad_id=tokenizer.pad_token_id)
    parameters = sum(p.numel() for p in model.parameters())
    tokens = 2 * 2 * (len(examples[0].input_ids) + len(examples[1].input_ids)) / 2
    assert (step["parameters"], step["tokens_per_step"]) == (parameters, tokens)
    assert step["flops_per_s"] == pytest.approx(6 * parameters * tokens / step["step_s"], rel=1e-9)


def test_a_snapshot_counts_its_items_and_distinct_prompts():
    model, tokenizer = load_model("tiny-chat", device="cpu")
    full = tiny_forgetting_benchmark(n_per_skill=5)
    bench = ForgettingBenchmark(
        full.new_task_train, full.new_task_eval[:5], full.old_skills, {"fact": full.multiple_choice["fact"]}
    )
    measured = snapshot_seconds(model, tokenizer, bench, repeats=1)
    generated = 5 + sum(len(items) for items in bench.old_skills.values())
    assert measured["generated_items"] == generated
    distinct = {item.prompt for items in [bench.new_task_eval, *bench.old_skills.values()] for item in items}
    assert measured["distinct_prompts"] == len(distinct) < generated  # the chat probes repeat other skills' prompts
    assert measured["multiple_choice_items"] == 5
    assert measured["snapshot_s"] > 0 and measured["generation_s"] > 0  # their order is timing noise on a busy host
