"""Every lab has a sample class with an expected grade for each submission, and its lab's test file grades it: the
solution gets 100, the blank release 0, and the partly solved notebook (``autograder.demo.PARTIAL_ANSWERS``) exactly
the points of the tasks it solves (``PARTIAL_SCORES``). The grading itself runs in ``tests/test_labNN*.py``, where
the solution's run also gives that lab's seed-0 results (``conftest.sample_class``)."""

from __future__ import annotations

from pathlib import Path

from autograder.course import REPO_ROOT, all_labs
from autograder.demo import PARTIAL_ANSWERS, PARTIAL_SCORES

TESTS = Path(__file__).parent


def test_every_lab_has_a_partial_submission_and_its_expected_score():
    names = {lab.name for lab in all_labs(REPO_ROOT)}
    assert names == set(PARTIAL_ANSWERS) == set(PARTIAL_SCORES)


def test_every_lab_s_test_file_grades_its_sample_class():
    for lab in all_labs(REPO_ROOT):
        number = lab.name.split("_")[0]
        files = sorted(TESTS.glob(f"test_lab{number}*.py"))
        assert len(files) == 1, f"expected one test file for lab {number}, found {files}"
        text = files[0].read_text()
        assert "def test_the_sample_class_gets_exact_grades" in text and f'sample_class("{number}")' in text
        assert "graded.flags() == {student: [] for student in graded.results}" in text, "an honest class has no flags"
