"""Tests for ``python -m autograder`` (release + serial grading) on the two-task mini lab in ``tests/fixtures``."""

from __future__ import annotations

import contextlib
import copy
import csv
import io
import os
import shutil
import sys
from pathlib import Path
from unittest import mock

import nbformat
import pytest

from autograder.__main__ import main
from autograder.course import COURSE_DIR_ENV, CourseError, course_workdir, resolve_lab
from autograder.release import render_release

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mini_lab"
LAB = "00_mini"


def make_repo(root: Path) -> Path:
    """Return a fake course repo under ``root``: the mini lab in ``solutions/`` and an empty ``labs/``."""
    repo = root / "repo"
    shutil.copytree(FIXTURE / "solutions", repo / "solutions")
    (repo / "labs").mkdir()
    return repo


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``python -m autograder`` in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    """Return the cell of ``nb`` with nbgrader ``grade_id``."""
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def with_answers(nb: nbformat.NotebookNode, **answers: str) -> nbformat.NotebookNode:
    """Return a copy of ``nb`` with the answer cells named by ``answers`` (grade_id=source) replaced."""
    nb = copy.deepcopy(nb)
    for grade_id, source in answers.items():
        cell(nb, grade_id).source = source
    return nb


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A fresh fake repo with nothing released yet."""
    return make_repo(tmp_path)


def test_release_stubs_solutions_and_removes_hidden_tests(repo: Path) -> None:
    code, out, _ = run_cli("--repo", str(repo), "release", "all")
    assert code == 0
    assert "wrote: labs/00_mini.ipynb" in out

    released = nbformat.read(repo / "labs" / f"{LAB}.ipynb", as_version=4)
    text = (repo / "labs" / f"{LAB}.ipynb").read_text()
    assert cell(released, "add").source == "def add(a, b):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    assert cell(released, "square").source == "def square(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
    visible = (
        "import warnings\n\nfrom posttrain.core.checks import assert_float_close\n\n"
        'warnings.warn("a library\'s deprecation warning is not a failure", FutureWarning)\n'
        "assert_float_close(add(1, 2), 3)"
    )
    assert cell(released, "test_add").source == visible
    assert cell(released, "test_add").metadata.nbgrader["points"] == 5
    assert "checksum" in cell(released, "test_add").metadata.nbgrader
    for hidden in ("BEGIN SOLUTION", "return a + b", "HIDDEN", "add(-4, 10)"):
        assert hidden not in text
    assert all(c.get("outputs", []) == [] and c.get("execution_count") is None for c in released.cells)


def test_release_is_byte_deterministic(repo: Path, tmp_path: Path) -> None:
    lab = repo / "labs" / f"{LAB}.ipynb"
    assert run_cli("--repo", str(repo), "release", LAB)[0] == 0
    first = lab.read_bytes()
    code, out, _ = run_cli("--repo", str(repo), "release", "00")
    assert code == 0
    assert "unchanged: labs/00_mini.ipynb" in out
    lab.unlink()
    assert run_cli("--repo", str(repo), "release", str(repo / "solutions" / f"{LAB}.ipynb"))[0] == 0
    assert lab.read_bytes() == first
    other = make_repo(tmp_path / "elsewhere")
    assert render_release(resolve_lab(other, LAB)) == first


def test_check_fails_on_stale_labs_and_passes_after_release(repo: Path) -> None:
    code, _, err = run_cli("--repo", str(repo), "release", "--check")
    assert code == 1
    assert "labs/00_mini.ipynb" in err
    assert "python -m autograder release all" in err

    assert run_cli("--repo", str(repo), "release", "all")[0] == 0
    code, out, _ = run_cli("--repo", str(repo), "release", "all", "--check")
    assert (code, out.strip()) == (0, "labs/ is up to date (1 lab(s) checked)")

    lab = repo / "labs" / f"{LAB}.ipynb"
    edited = nbformat.read(lab, as_version=4)
    edited.cells[0].source += "\nhand edit"
    nbformat.write(edited, lab)
    code, _, err = run_cli("--repo", str(repo), "release", "00", "--check")
    assert code == 1
    assert "stale: labs/00_mini.ipynb" in err

    assert run_cli("--repo", str(repo), "release", "all")[0] == 0
    assert run_cli("--repo", str(repo), "release", "all", "--check")[0] == 0


def test_lab_can_be_named_by_number_name_or_path(repo: Path) -> None:
    for spec in ("00", LAB, f"labs/{LAB}.ipynb", str(repo / "solutions" / f"{LAB}.ipynb")):
        assert resolve_lab(repo, spec).name == LAB
    with pytest.raises(CourseError, match="matches no notebook"):
        resolve_lab(repo, "07")


def test_release_of_source_without_nbgrader_metadata_is_a_clear_error(repo: Path) -> None:
    plain = nbformat.read(repo / "solutions" / f"{LAB}.ipynb", as_version=4)
    for c in plain.cells:
        c.metadata.pop("nbgrader", None)
    nbformat.write(plain, repo / "solutions" / "01_plain.ipynb")

    code, _, err = run_cli("--repo", str(repo), "release", "01")
    assert code == 2
    assert str(repo / "solutions" / "01_plain.ipynb") in err
    assert "has no nbgrader metadata" in err
    assert "Create Assignment" in err
    assert "metadata.nbgrader" in err
    with pytest.raises(CourseError, match=r"01_plain\.ipynb has no nbgrader metadata"):
        render_release(resolve_lab(repo, "01_plain"))
    assert not (repo / "labs" / "01_plain.ipynb").exists()


def test_course_dir_inside_repo_is_refused(repo: Path) -> None:
    with mock.patch.dict(os.environ, {COURSE_DIR_ENV: str(repo / "work")}), pytest.raises(CourseError):
        with course_workdir(repo, "x"):
            pass


@pytest.fixture(scope="module")
def graded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Grade one folder of submissions once (the slow part: one nbgrader autograde per notebook)."""
    root = tmp_path_factory.mktemp("grading")
    repo = make_repo(root)
    assert run_cli("--repo", str(repo), "release", "all")[0] == 0
    solution = nbformat.read(repo / "solutions" / f"{LAB}.ipynb", as_version=4)
    released = nbformat.read(repo / "labs" / f"{LAB}.ipynb", as_version=4)

    subs = root / "submissions"
    (subs / "bob").mkdir(parents=True)
    (subs / "gus").mkdir()
    nbformat.write(solution, subs / "alice.ipynb")
    nbformat.write(released, subs / "bob" / "my work.ipynb")
    partly_wrong = with_answers(
        released, add="def add(a, b):\n    return a + b", square="def square(x):\n    return x + x"
    )
    nbformat.write(partly_wrong, subs / "carol.ipynb")
    (subs / "dave.ipynb").write_text("{not json", encoding="utf-8")
    stripped = copy.deepcopy(solution)
    for c in stripped.cells:
        c.metadata.pop("nbgrader", None)
    nbformat.write(stripped, subs / "erin.ipynb")
    # Passes the visible test of task 1 but not the hidden one; reports the kernel's interpreter and profile.
    spy = "import os, sys\nprint(sys.executable, os.environ['POSTTRAIN_PROFILE'])\ndef add(a, b):\n    return 3"
    nbformat.write(with_answers(released, add=spy, square="def square(x):\n    return x * x"), subs / "frank.ipynb")
    nbformat.write(released, subs / "gus" / "a.ipynb")
    # Not collected, with a test cell pasted twice: grading repairs it as collect would (nbgrader alone errs).
    doubled = copy.deepcopy(solution)
    test_square = next(
        i for i, c in enumerate(doubled.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "test_square"
    )
    doubled.cells.insert(test_square, copy.deepcopy(doubled.cells[test_square]))
    nbformat.write(doubled, subs / "hal.ipynb")
    nbformat.write(released, subs / "gus" / "b.ipynb")

    out = root / "grading"
    with mock.patch.dict(os.environ, {COURSE_DIR_ENV: str(root / "course")}):
        code, stdout, _ = run_cli(
            "--repo", str(repo), "grade", "00", str(subs), "--out", str(out), "--cell-timeout", "60"
        )
    with (out / "grades.csv").open(newline="", encoding="utf-8") as handle:
        rows = {row["student"]: row for row in csv.DictReader(handle)}
    return {"code": code, "stdout": stdout, "rows": rows, "out": out}


@pytest.mark.parametrize(
    ("student", "score", "test_add", "test_square"),
    [
        ("alice", "10", "5", "5"),  # the solution notebook submitted as-is
        ("bob", "0", "0", "0"),  # the released notebook, untouched
        ("carol", "5", "5", "0"),  # task 1 right, task 2 wrong
        ("frank", "5", "0", "5"),  # task 1 fails only the hidden test
        ("hal", "10", "5", "5"),  # the solution with a duplicated test cell, not collected
    ],
)
def test_grade_scores(graded: dict, student: str, score: str, test_add: str, test_square: str) -> None:
    row = graded["rows"][student]
    assert (row["status"], row["total"], row["max_score"]) == ("graded", score, "10")
    assert (row["test_add"], row["test_square"]) == (test_add, test_square)


def test_grading_an_uncollected_notebook_repairs_and_logs_it(graded: dict) -> None:
    assert "test_square" in graded["rows"]["hal"]["repairs"] and "(when graded)" in graded["rows"]["hal"]["repairs"]


def test_grade_invalid_json_is_unreadable(graded: dict) -> None:
    row = graded["rows"]["dave"]
    assert (row["status"], row["total"]) == ("unreadable", "")
    assert "not a readable notebook" in row["reason"]


def test_grade_notebook_without_metadata_is_explained(graded: dict) -> None:
    row = graded["rows"]["erin"]
    assert (row["status"], row["total"]) == ("no_nbgrader_metadata", "")
    assert "downloaded from the released labs/00_mini.ipynb" in row["reason"]
    assert "not copied into a fresh notebook" in row["reason"]


def test_grade_ambiguous_folder_is_unreadable(graded: dict) -> None:
    row = graded["rows"]["gus"]
    assert row["status"] == "unreadable"
    assert "found: a.ipynb, b.ipynb" in row["reason"]


def test_grade_reports_every_submission_and_fails_when_any_is_not_graded(graded: dict) -> None:
    assert graded["code"] == 1
    assert sorted(graded["rows"]) == ["alice", "bob", "carol", "dave", "erin", "frank", "gus", "hal"]
    lines = graded["stdout"].splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("student ")) :]
    assert table[0].split() == ["student", "score", "max_score", "status", "reason"]
    assert table[1].split() == ["alice", "10", "10", "graded"]
    assert table[4].split()[:3] == ["dave", "10", "unreadable"]


def test_kernel_runs_the_grader_interpreter_with_tiny_profile(graded: dict) -> None:
    autograded = graded["out"] / "autograded" / "frank.ipynb"
    outputs = cell(nbformat.read(autograded, as_version=4), "add").outputs
    assert outputs[0]["text"] == f"{sys.executable} tiny\n"
