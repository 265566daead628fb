"""Every lab's sample class, graded in the sandbox on two workers: the solution gets 100, the blank release 0, and
the partly solved notebook (``autograder.demo.PARTIAL_ANSWERS``) exactly the points of the tasks it solves."""

from __future__ import annotations

import pytest

from autograder.course import REPO_ROOT, all_labs
from autograder.demo import PARTIAL_ANSWERS, grade_sample_class, make_sample_class

pytestmark = pytest.mark.slow

# Lab 01: tasks 1 and 2 (15 + 15) and task 3, which the solved loss makes pass (10).
# Lab 02: tasks 1 (15) and 2 (10); the sweep needs tasks 3 and 5, so tasks 6 and 7 fail with it.
PARTIAL_SCORES = {
    "01_finetune_and_forget": 40,
    "02_lora_and_regularization": 25,
    # tasks 4 and 5 (35 points) and task 6, which checks the theory with them (15)
    "03_replay_and_self_distillation": 50,
}


def test_every_lab_has_a_partial_submission_and_its_expected_score():
    names = {lab.name for lab in all_labs(REPO_ROOT)}
    assert names == set(PARTIAL_ANSWERS) == set(PARTIAL_SCORES)


@pytest.mark.parametrize("lab", all_labs(REPO_ROOT), ids=lambda lab: lab.name)
def test_sample_class_gets_exact_grades_in_the_sandbox_on_two_workers(lab, tmp_path):
    folder = make_sample_class(lab, tmp_path / "class")
    grades = {r.student: r for r in grade_sample_class(lab, folder, tmp_path / "grading", workers=2)}
    assert {s: r.status for s, r in grades.items()} == {"correct": "graded", "blank": "graded", "partial": "graded"}
    assert grades["correct"].score == grades["correct"].max_score == 100
    assert grades["blank"].score == 0
    assert grades["partial"].score == PARTIAL_SCORES[lab.name]
