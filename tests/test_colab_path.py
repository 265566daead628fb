"""Lab 01's colab code path, offline: a tiny random Qwen2 with a ChatML tokenizer stands in for
Qwen2.5-0.5B-Instruct and local fixtures in the real schemas stand in for GSM8K, AdvBench and MMLU.
Everything else (loading, chat template, masking, training, generation, scoring, multiple choice and the
sample-wise table) is the code the notebook runs on a Colab GPU."""

from __future__ import annotations

import torch

from posttrain.core.forgetting import sample_wise_table
from posttrain.core.models import load_model
from posttrain.core.profiles import PROFILES
from posttrain.core.train import TrainConfig
from posttrain.studies.finetune_and_forget import finetune_with_snapshots
from posttrain.world.benchmarks import forgetting_benchmark


def test_lab01_machinery_runs_on_the_colab_code_path(tiny_qwen2_dir, hub_loader):
    model, tokenizer = load_model(str(tiny_qwen2_dir), device="cpu", dtype=torch.float32)

    bench = forgetting_benchmark(PROFILES["colab"], n_per_skill=3, seed=0, n_train=4, loader=hub_loader)
    assert set(bench.old_skills) == {"json_open", "refusal_open", "chat"}
    assert set(bench.multiple_choice) == {"mmlu"} and bench.k == 4
    assert all(item.skill == "gsm8k" for item in bench.new_task_eval)

    before = [p.detach().clone() for p in model.parameters()]
    train_config = TrainConfig(steps=2, lr=1e-3, batch_size=2, grad_accum=2, warmup_steps=1, progress=False)
    snapshots = finetune_with_snapshots(model, tokenizer, bench, train_config, max_new_tokens=8)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), "no weight moved"

    table = sample_wise_table(snapshots[0], snapshots[-1], k=bench.k)
    assert set(table) == {"new", "json_open", "refusal_open", "chat", "mc:mmlu"}
    for row in table.values():
        assert 0.0 <= row["forgetting"] <= 1.0 and 0.0 <= row["backward_transfer"] <= 1.0
    assert table["mc:mmlu"]["forgetting_adjusted"] is not None
