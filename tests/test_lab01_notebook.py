"""Lab 01 end to end: the executed solution shows the lab's claims (its sample class is graded in
``test_sample_classes.py``)."""

from __future__ import annotations

import json

import pytest

from autograder.course import REPO_ROOT, resolve_lab
from autograder.demo import execute_solution

pytestmark = pytest.mark.slow
LAB = resolve_lab(REPO_ROOT, "01")


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("lab01")
    execute_solution(LAB, work)
    return json.loads((work / "results" / "01.json").read_text())


def test_solution_masters_new_task(results):
    assert results["profile"] == "tiny"
    assert results["accuracy_after"]["new"] >= 0.9


def test_solution_shows_json_or_refusal_collapse(results):
    before, after = results["accuracy_before"], results["accuracy_after"]
    assert max(before[s] - after[s] for s in ("json", "refusal")) >= 0.30


def test_solution_sample_wise_table_differs_from_average(results):
    # backward transfer hides some forgetting from the average somewhere in the sweep (weakly: a few items)
    hidden = [
        row["forgetting"] - max(0.0, row["accuracy_before"] - row["accuracy_after"])
        for table in results["sample_wise_by_lr"].values()
        for skill, row in table.items()
        if skill != "new"
    ]
    assert max(hidden) > 0.0
    assert results["most_hidden_skill"] in results["sample_wise"]


def test_solution_forgetting_grows_with_learning_rate(results):
    final = {float(lr): acc for lr, acc in results["sweep_final"].items()}
    low, high = min(final), max(final)
    assert final[high]["json"] + final[high]["refusal"] < final[low]["json"] + final[low]["refusal"]
