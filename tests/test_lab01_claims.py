"""Lab 01's claims on the tiny profile, asserted over three training seeds (the thresholds of issue #3).

- full fine-tuning masters the new task (>= 90 %),
- while an old skill collapses: JSON format or refusal drops by >= 30 points,
- and the sample-wise view differs from the average: some skill forgets >= 5 % of its items more than its
  average accuracy drop shows (backward transfer hides them).
"""

import pytest

from posttrain.evaluate import accuracy
from posttrain.forgetting import finetune_with_snapshots, sample_wise_table
from posttrain.models import load_model
from posttrain.tasks import tiny_forgetting_benchmark
from posttrain.train import TrainConfig

LAB01_STEPS, LAB01_LR = 150, 1e-3  # the solution notebook's tiny-profile defaults


@pytest.fixture(scope="module")
def bench():
    return tiny_forgetting_benchmark(n_per_skill=60)


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def run(request, bench):
    model, tokenizer = load_model("tiny-chat", device="cpu")
    config = TrainConfig(steps=LAB01_STEPS, lr=LAB01_LR, batch_size=32, seed=request.param, progress=False)
    snapshots = finetune_with_snapshots(model, tokenizer, bench, config)
    return snapshots[0], snapshots[-1], sample_wise_table(snapshots[0], snapshots[-1], k=bench.k)


def test_full_finetuning_masters_the_new_task(run):
    before, after, _ = run
    assert accuracy(before.new) < 0.2, "the new task must be new to tiny-chat"
    assert accuracy(after.new) >= 0.9


def test_json_format_or_refusal_collapses(run):
    before, after, _ = run
    drops = {s: accuracy(before.old[s]) - accuracy(after.old[s]) for s in ("json", "refusal")}
    assert max(drops.values()) >= 0.30, drops


def test_sample_wise_view_reveals_forgetting_the_average_hides(run):
    _, _, table = run
    hidden = {
        skill: row["forgetting"] - max(0.0, row["accuracy_before"] - row["accuracy_after"])
        for skill, row in table.items()
        if skill != "new"
    }
    assert max(hidden.values()) >= 0.05, hidden


def test_chance_adjustment_never_exceeds_raw_metrics(run):
    _, _, table = run
    for skill, row in table.items():
        if skill.startswith("mc:"):
            assert 0.0 <= row["forgetting_adjusted"] <= row["forgetting"]
            assert 0.0 <= row["backward_transfer_adjusted"] <= row["backward_transfer"]
