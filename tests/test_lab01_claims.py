"""Lab 01's claims on the tiny profile, asserted over three training seeds, with the notebook's settings
(150 steps, batch 32, learning rates 1e-4 / 3e-4 / 1e-3, 100 items per old skill).

Claims of issue #3 and what the tiny world measured (see docs/labs/01_finetune_and_forget.md):
- full fine-tuning at lr 1e-3 masters the new task (>= 90 %; measured 1.00 in every seed),
- while JSON format or refusal drops by >= 30 points (measured: refusal 1.00 -> 0.00, JSON 0.95 -> 0.71-0.75),
- the sample-wise view differs from the average: somewhere in the learning-rate sweep an old skill has
  items flipping 0 -> 1, so its average drop understates its forgetting F. The tiny world shows this only
  weakly (backward transfer <= 0.03 of the items), which the lab says plainly,
- and forgetting of JSON and refusal grows with the learning rate.
"""

import pytest

from posttrain.evaluate import accuracy
from posttrain.forgetting import finetune_with_snapshots, sample_wise_table
from posttrain.models import load_model
from posttrain.tasks import tiny_forgetting_benchmark
from posttrain.train import TrainConfig

STEPS, MAIN_LR, SWEEP = 150, 1e-3, (1e-4, 3e-4, 1e-3)


@pytest.fixture(scope="module")
def bench():
    return tiny_forgetting_benchmark(n_per_skill=100)


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def sweep(request, bench):
    """{lr: (before snapshot, after snapshot)} for one training seed."""
    runs = {}
    for lr in SWEEP:
        model, tokenizer = load_model("tiny-chat", device="cpu")
        config = TrainConfig(steps=STEPS, lr=lr, batch_size=32, seed=request.param, progress=False)
        snapshots = finetune_with_snapshots(model, tokenizer, bench, config)
        runs[lr] = (snapshots[0], snapshots[-1])
    return runs


def test_full_finetuning_masters_the_new_task(sweep):
    before, after = sweep[MAIN_LR]
    assert accuracy(before.new) < 0.2, "the new task must be new to tiny-chat"
    assert accuracy(after.new) >= 0.9


def test_json_format_or_refusal_collapses(sweep):
    before, after = sweep[MAIN_LR]
    drops = {s: accuracy(before.old[s]) - accuracy(after.old[s]) for s in ("json", "refusal")}
    assert max(drops.values()) >= 0.30, drops


def test_the_average_understates_forgetting_somewhere_in_the_sweep(sweep, bench):
    hidden = {
        (lr, skill): row["forgetting"] - max(0.0, row["accuracy_before"] - row["accuracy_after"])
        for lr, (before, after) in sweep.items()
        for skill, row in sample_wise_table(before, after, k=bench.k).items()
        if skill != "new"
    }
    assert max(hidden.values()) > 0.0, hidden


def test_forgetting_grows_with_the_learning_rate(sweep):
    kept = {lr: accuracy(after.old["json"]) + accuracy(after.old["refusal"]) for lr, (_, after) in sweep.items()}
    assert kept[1e-3] < kept[3e-4] <= kept[1e-4], kept


def test_chance_adjustment_never_exceeds_raw_metrics(sweep, bench):
    before, after = sweep[MAIN_LR]
    for skill, row in sample_wise_table(before, after, k=bench.k).items():
        if skill.startswith("mc:"):
            assert 0.0 <= row["forgetting_adjusted"] <= row["forgetting"]
            assert 0.0 <= row["backward_transfer_adjusted"] <= row["backward_transfer"]
