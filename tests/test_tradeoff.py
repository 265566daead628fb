"""Lab 02 study (``posttrain.studies.lora_and_regularization``): method validation, the plane's two coordinates,
the Pareto front, the matched-accuracy EWC comparison, and a whole sweep on the colab code path offline (a tiny
random Qwen2 with a ChatML tokenizer and local fixtures in the hub datasets' schemas stand in for
Qwen2.5-0.5B-Instruct, GSM8K, AdvBench, MMLU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from posttrain.core.forgetting import Snapshot, mean_forgetting, mean_old_drop
from posttrain.core.profiles import PROFILES
from posttrain.studies.lora_and_regularization import (
    Method,
    Plan,
    RunResult,
    best_run,
    matched_ewc,
    mean_energy_curve,
    pareto_front,
    summarize,
    sweep,
)
from posttrain.world.benchmarks import forgetting_benchmark


def run(kind: str, new: float, drop: float, lr: float = 1e-3, steps: int = 30, **knobs) -> RunResult:
    return RunResult(Method(kind, lr, steps, **knobs), {}, new, drop, drop, {"w": 1}, [1.0], 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "qlora", "lr": 1e-3, "steps": 1}, "unknown method kind 'qlora'"),
        ({"kind": "lora", "lr": 1e-3, "steps": 1}, "needs a LoRA rank"),
        ({"kind": "ewc", "lr": 1e-3, "steps": 1}, "needs a positive strength"),
    ],
)
def test_bad_methods_are_refused_with_the_fix(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Method(**kwargs)


def test_method_labels_name_family_and_knobs():
    assert Method("lora", 0.01, 30, rank=4).label == "LORA r=4 lr=0.01 steps=30"
    assert Method("ewc", 0.003, 30, strength=1.0).label == "EWC λ=1 lr=0.003 steps=30"
    assert Method("peft-lora", 0.01, 30, rank=4).family == "PEFT-LORA r=4"


def test_plane_coordinates_average_over_old_skills():
    before = Snapshot(0, [False] * 4, {"a": [True, True, False, False], "b": [True, True, True, True]})
    after = Snapshot(9, [True] * 4, {"a": [False, True, True, False], "b": [True, True, False, False]})
    # a: 0.5 -> 0.5 (one item forgotten, one learned); b: 1.0 -> 0.5
    assert mean_old_drop(before, after) == pytest.approx((0.0 + 0.5) / 2)
    assert mean_forgetting(before, after) == pytest.approx((0.25 + 0.5) / 2)


def test_pareto_front_keeps_only_undominated_points():
    points = [(0.5, 0.1), (0.9, 0.5), (0.4, 0.3), (0.9, 0.6), (0.2, 0.0), (0.5, 0.1)]
    assert pareto_front(points) == [4, 0, 5, 1]  # duplicates do not dominate each other
    assert pareto_front([]) == []


def test_best_run_picks_the_best_learning_rate_at_the_budget():
    runs = [run("full", 0.9, 0.6), run("full", 0.95, 0.7, lr=3e-3), run("full", 1.0, 0.8, steps=60)]
    assert best_run(runs, "full", budget=30).method.lr == 3e-3
    assert best_run(runs, "full").method.steps == 60
    with pytest.raises(ValueError, match="no run of 'EWC'"):
        best_run(runs, "EWC", 30)


def test_matched_ewc_needs_comparable_learning():
    full = run("full", 0.95, 0.7)
    too_little = run("ewc", 0.85, 0.0, strength=10.0)  # 10 points below full fine-tuning
    matched = [run("ewc", 0.93, 0.2, strength=1.0), run("ewc", 0.91, 0.1, strength=3.0)]
    assert matched_ewc([full, too_little], 30) is None
    assert matched_ewc([full, too_little, *matched], 30).method.strength == 3.0


def test_energy_curve_of_a_rank_one_update_is_flat_at_one():
    delta = torch.outer(torch.randn(6), torch.randn(4))
    curve = mean_energy_curve([delta, 2 * delta])
    assert len(curve) == 4 and curve[0] == pytest.approx(1.0, abs=1e-4)


def test_lab02_sweep_runs_on_the_colab_code_path(tiny_qwen2_dir, hub_loader):
    profile = dataclasses.replace(PROFILES["colab"], chat_model=str(tiny_qwen2_dir), max_new_tokens=4)
    bench = forgetting_benchmark(profile, n_per_skill=2, seed=0, n_train=4, loader=hub_loader, new_task="new_facts")
    plan = Plan(
        budget=2,
        full_lrs=(1e-3,),
        full_steps=(2,),
        lora_ranks=(2,),
        lora_lrs=(1e-3,),
        l2sp_strengths=(0.1,),
        ewc_strengths=(1.0,),
        batch_size=2,
        fisher_examples=3,
        peft_reference_rank=2,
    )
    before, runs = sweep(profile, bench, plan, seed=0)
    assert [r.method.family for r in runs] == ["full", "LORA r=2", "PEFT-LORA r=2", "L2-SP", "EWC"]
    lora, peft_lora = runs[1], runs[2]
    assert len(lora.effective_ranks) == 2 * 7  # every attention and MLP projection of both layers
    assert max(lora.effective_ranks.values()) <= 2 < max(runs[0].effective_ranks.values())
    assert lora.losses == pytest.approx(peft_lora.losses, abs=1e-5)  # same A, same batches: the same run
    results = summarize(profile, 0, plan, before, runs)
    assert set(results["best_at_budget"]) == {"full", "LORA r=2", "PEFT-LORA r=2", "L2-SP", "EWC"}
    assert results["full_effective_rank"]["matrices"] == 14
    assert set(before.old) == {"json_open", "refusal_open", "chat"}
