"""Lab 01's claims on the tiny profile, asserted over three training seeds with the notebook's settings (150 steps,
batch 32, learning rates 1e-4 / 3e-4 / 1e-3, 100 items per old skill): seed 0 is the executed solution notebook,
seeds 1 and 2 run ``posttrain.studies.finetune_and_forget.learning_rate_sweep`` (its sample class:
``test_sample_classes.py``).

Claims of issue #3 (defined once, as margins, in ``autograder.claims``; measured in docs/labs/01_finetune_and_forget.md,
their margins against the cross-platform spread in docs/margins.md):
- full fine-tuning at lr 1e-3 masters the new task (>= 90 %; measured 1.00 in every seed),
- while JSON format or refusal drops by >= 30 points (measured: refusal 1.00 -> 0.00, JSON 0.95 -> 0.71-0.75),
- the sample-wise view differs from the average: somewhere in the learning-rate sweep an old skill has
  items flipping 0 -> 1, so its average drop understates its forgetting F. The tiny world shows this only
  weakly (backward transfer <= 0.03 of the items), which the lab says plainly,
- and forgetting of JSON and refusal grows with the learning rate: clearly from 3e-4 to 1e-3; between 1e-4 and 3e-4
  it is a tie (0 or 1 of 100 JSON items), accepted within the claim's named tolerance of two items.
"""

import pytest

from autograder.claims import claim, notebook_results, package_results
from autograder.demo import expected_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[0, 1, 2], ids=lambda s: f"seed{s}")
def sweep(request, sample_class) -> dict:
    """One training seed's sweep: {"runs": {str(lr): accuracies before and after, sample-wise table}}."""
    if request.param == 0:  # the solution notebook, executed once: while its sample class is graded
        return notebook_results("01", sample_class("01").notebook_results())
    return package_results("01", request.param)


def test_full_finetuning_masters_the_new_task(sweep):
    claim("01", "new_task_is_new").check(sweep)
    claim("01", "masters_new_task").check(sweep)


def test_json_format_or_refusal_collapses(sweep):
    claim("01", "json_or_refusal_collapses").check(sweep)


def test_the_average_understates_forgetting_somewhere_in_the_sweep(sweep):
    claim("01", "average_understates_forgetting").check(sweep)
    if "notebook" in sweep:  # seed 0: the notebook names the skill whose average hides most
        assert sweep["notebook"]["most_hidden_skill"] in sweep["notebook"]["sample_wise"]


def test_forgetting_grows_with_the_learning_rate(sweep):
    claim("01", "forgetting_grows_3e-4_to_1e-3").check(sweep)
    claim("01", "forgetting_grows_1e-4_to_3e-4").check(sweep)


def test_chance_adjustment_never_exceeds_raw_metrics(sweep):
    for skill, row in sweep["runs"]["0.001"]["table"].items():
        if skill.startswith("mc:"):
            assert 0.0 <= row["forgetting_adjusted"] <= row["forgetting"]
            assert 0.0 <= row["backward_transfer_adjusted"] <= row["backward_transfer"]


def test_the_sample_class_gets_exact_grades_in_the_sandbox_on_two_workers(sample_class):
    graded = sample_class("01")
    assert graded.scores() == expected_scores(graded.lab)
    assert graded.flags() == {student: [] for student in graded.results}
    assert {r.max_score for r in graded.results.values()} == {100}
