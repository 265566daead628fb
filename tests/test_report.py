"""Tests for ``autograder.report`` on a fake grading folder of lab 01 (no notebook is executed)."""

from __future__ import annotations

import copy
import csv
import html
import json
from pathlib import Path

import nbformat
import pytest

from autograder.course import REPO_ROOT, CourseError, Lab
from autograder.report import REDACTED, failure_messages, read_results, write_report
from autograder.scheduler import ResultStore

LAB = Lab(REPO_ROOT, "01_finetune_and_forget")
TESTS = [
    "test_task1_masked_loss",
    "test_task2_sft_example",
    "test_task3_new_task",
    "test_task4_sample_wise",
    "test_task5_chance",
    "test_task6_hidden",
    "test_task7_curve",
]
POINTS = [15, 15, 10, 20, 20, 10, 10]
LOSS_MESSAGE = 'loss <tensor(1.5)> differs from reference & "checks" failed'
FORGET_MESSAGE = "forgetting: got 0.5, expected 0.25"
ANSWER = 'def masked_sft_loss(logits, labels):\n    return logits.sum() if labels.ndim < 3 else "<b>bold</b> & co"\n'
REPAIRS = ["test_task3_new_task: restored nbgrader metadata from the release", "dropped 1 duplicated cell"]


@pytest.fixture(scope="module")
def source() -> nbformat.NotebookNode:
    """The lab 01 source notebook (solutions and hidden tests)."""
    return nbformat.read(LAB.source, as_version=4)


def hidden_test_lines(nb: nbformat.NotebookNode) -> list[str]:
    """Return every line strictly inside a ``### BEGIN HIDDEN TESTS`` block of ``nb`` (independent of the module)."""
    lines = []
    for cell in nb.cells:
        block = cell.source.split("### BEGIN HIDDEN TESTS\n")
        for part in block[1:]:
            lines += part.split("### END HIDDEN TESTS")[0].splitlines()
    return lines


def cell(nb: nbformat.NotebookNode, grade_id: str) -> nbformat.NotebookNode:
    """Return the cell of ``nb`` with nbgrader ``grade_id``."""
    return next(c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def fail(nb: nbformat.NotebookNode, grade_id: str, evalue: str) -> None:
    """Give the test cell ``grade_id`` an AssertionError output whose traceback quotes the cell's hidden tests."""
    test = cell(nb, grade_id)
    traceback = ["\x1b[0;31mAssertionError\x1b[0m  Traceback (most recent call last)"]
    traceback += [f"---> {number} {line}" for number, line in enumerate(test.source.splitlines(), 1)]
    traceback.append(f"AssertionError: {evalue}")
    error = nbformat.v4.new_output("error", ename="AssertionError", evalue=evalue, traceback=traceback)
    test.outputs = [error]


def autograded(source: nbformat.NotebookNode, failures: dict[str, str], answer: str = "") -> nbformat.NotebookNode:
    """Return ``source`` as nbgrader would autograde it, with ``failures`` (grade_id -> evalue) and task 1's answer."""
    nb = copy.deepcopy(source)
    if answer:
        cell(nb, "task1_masked_loss").source = answer
    for grade_id, evalue in failures.items():
        fail(nb, grade_id, evalue)
    return nb


def result(student: str, status: str, grades: list[float] | None = None, **extra: object) -> str:
    """Return one ``results.jsonl`` line."""
    scores = dict(zip(TESTS, grades or [], strict=False))
    record = {
        "student": student,
        "status": status,
        "score": sum(grades) if grades else None,
        "max_score": 100.0,
        "grades": scores,
        "reason": "",
        "seconds": 12.5,
        "repairs": [],
        "submission_sha256": "0" * 64,
        **extra,
    }
    return json.dumps(record) + "\n"


@pytest.fixture
def grading_dir(tmp_path: Path, source: nbformat.NotebookNode) -> Path:
    """A grading folder: alice (timed out, then re-graded), bob (unreadable) and carol (graded, repaired)."""
    folder = tmp_path / "grading"
    (folder / "autograded").mkdir(parents=True)
    lines = [
        result("alice", "timeout", reason="cell timed out after 600 s"),
        result("bob", "unreadable", reason="bob.ipynb is not a readable notebook: <unexpected> & bad"),
        result("carol", "graded", [15, 15, 10, 0, 20, 10, 10], repairs=REPAIRS),
        result("alice", "graded", [0, 15, 10, 0, 20, 10, 10]),
    ]
    (folder / "results.jsonl").write_text("".join(lines), encoding="utf-8")
    # carol's second message line quotes a hidden test line, which the feedback page must withhold.
    quoted = next(line for line in hidden_test_lines(source) if 'assert_float_close(got["forgetting"]' in line)
    alice = autograded(
        source, {"test_task1_masked_loss": LOSS_MESSAGE, "test_task4_sample_wise": FORGET_MESSAGE}, ANSWER
    )
    carol = autograded(source, {"test_task4_sample_wise": f"{FORGET_MESSAGE}\n{quoted}"})
    nbformat.write(alice, folder / "autograded" / "alice.ipynb")
    nbformat.write(carol, folder / "autograded" / "carol.ipynb")
    return folder


def read_csv(path: Path) -> list[list[str]]:
    """Return the rows of a CSV file."""
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def test_grades_csv_has_one_row_per_student_last_result_wins(grading_dir: Path, tmp_path: Path) -> None:
    paths = write_report(LAB, grading_dir, tmp_path / "report")
    assert read_csv(paths.grades) == [
        ["student", "status", "total", "max_score", *TESTS, "repairs", "flags", "reason"],
        ["alice", "graded", "65", "100", "0", "15", "10", "0", "20", "10", "10", "", "0", ""],
        [
            "bob",
            "unreadable",
            "",
            "100",
            *[""] * len(TESTS),
            "",
            "0",
            "bob.ipynb is not a readable notebook: <unexpected> & bad",
        ],
        ["carol", "graded", "80", "100", "15", "15", "10", "0", "20", "10", "10", "; ".join(REPAIRS), "0", ""],
    ]


def test_failures_csv_counts_failures_and_most_common_message(
    grading_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    paths = write_report(LAB, grading_dir, tmp_path / "report")
    rows = read_csv(paths.failures)
    assert rows[0] == ["grade_id", "points", "graded", "failing", "failure_share", "message", "message_count"]
    assert rows[1] == ["test_task4_sample_wise", "20", "2", "2", "1", f"AssertionError: {FORGET_MESSAGE}", "2"]
    assert rows[2] == ["test_task1_masked_loss", "15", "2", "1", "0.5", f"AssertionError: {LOSS_MESSAGE}", "1"]
    passing = [name for name in TESTS if name not in ("test_task1_masked_loss", "test_task4_sample_wise")]
    assert rows[3:] == [[name, str(POINTS[TESTS.index(name)]), "2", "0", "0", "", "0"] for name in passing]
    summary = capsys.readouterr().out
    assert f"test_task4_sample_wise: 2/2 failing (100%)  AssertionError: {FORGET_MESSAGE} (x2)" in summary


def test_feedback_shows_scores_and_messages_but_never_hidden_tests(
    grading_dir: Path, tmp_path: Path, source: nbformat.NotebookNode
) -> None:
    paths = write_report(LAB, grading_dir, tmp_path / "report")
    pages = {path.stem: path.read_text(encoding="utf-8") for path in paths.feedback.glob("*.html")}
    assert sorted(pages) == ["alice", "bob", "carol"]
    hidden = [line.strip() for line in hidden_test_lines(source) if len(line.strip()) > 10]
    assert len(hidden) > 30
    for student, page in pages.items():
        assert page.startswith("<!DOCTYPE html>") and LAB.name in page
        assert "<script" not in page and "src=" not in page and "href=" not in page
        assert "BEGIN HIDDEN TESTS" not in page
        for line in hidden:
            assert line not in page and html.escape(line) not in page, f"{student}'s feedback quotes: {line}"
    assert "65 / 100" in pages["alice"] and "80 / 100" in pages["carol"]
    assert "AssertionError: " + html.escape(LOSS_MESSAGE) in pages["alice"]
    assert html.escape(FORGET_MESSAGE) in pages["alice"] and html.escape(FORGET_MESSAGE) in pages["carol"]
    assert REDACTED in pages["carol"] and REDACTED not in pages["alice"]
    assert all(html.escape(repair) in pages["carol"] for repair in REPAIRS)
    assert "not graded (unreadable)" in pages["bob"] and "test_task1_masked_loss" not in pages["bob"]


def test_feedback_escapes_student_code_and_messages(grading_dir: Path, tmp_path: Path) -> None:
    paths = write_report(LAB, grading_dir, tmp_path / "report")
    alice = (paths.feedback / "alice.html").read_text(encoding="utf-8")
    bob = (paths.feedback / "bob.html").read_text(encoding="utf-8")
    assert html.escape(ANSWER) in alice and "<b>bold</b>" not in alice and "<tensor(1.5)>" not in alice
    assert "&lt;tensor(1.5)&gt; differs from reference &amp; &quot;checks&quot;" in alice
    assert "&lt;unexpected&gt; &amp; bad" in bob and "<unexpected>" not in bob


def test_failure_messages_without_evalue_is_the_exception_name(source: nbformat.NotebookNode) -> None:
    nb = autograded(source, {"test_task3_new_task": ""})
    assert failure_messages(nb) == {"test_task3_new_task": "AssertionError"}


def test_missing_results_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CourseError, match=r"results\.jsonl does not exist: grade the lab first"):
        write_report(LAB, tmp_path, tmp_path / "report")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"student": "dave", "status": "gra', "not valid JSON: Unterminated string"),
        ('["dave", "graded"]', "not a JSON object"),
        ('{"student": "dave"}', "'status' must be a non-empty string"),
        ('{"student": "../dave", "status": "graded"}', "'student' must be a plain file name"),
        ('{"student": "dave", "status": "graded", "score": "high"}', "'score' must be a number"),
        ('{"student": "dave", "status": "graded", "flags": ["x"]}', "each of 'flags' must be an object"),
    ],
)
def test_malformed_results_line_is_a_clear_error(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text(result("alice", "unreadable") + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(CourseError, match=r"results\.jsonl, line 3: malformed result") as excinfo:
        read_results(path)
    assert problem in str(excinfo.value) and "Fix or delete that line" in str(excinfo.value)


def test_a_corrupt_line_in_the_middle_of_results_is_named(tmp_path: Path) -> None:
    store = ResultStore(Lab(tmp_path, "00_mini"), tmp_path / "grading")
    store.results.write_text('{"student": "a", "status": "graded"}\nnot json\n{"student": "b", "status": "graded"}\n')
    with pytest.raises(CourseError, match=r"results\.jsonl, line 2: not valid JSON"):
        store.latest()


def test_flags_are_listed_per_student_and_counted_in_grades(tmp_path: Path, source: nbformat.NotebookNode) -> None:
    folder = tmp_path / "grading"
    (folder / "autograded").mkdir(parents=True)
    flags = [
        {"cell": "task2", "flag": "line 3: uses .__code__"},
        {"cell": "test_task2", "flag": "builtins.abs was rebound"},
    ]
    lines = [result("dan", "graded", [15, 15, 10, 0, 20, 10, 10], flags=flags), result("erin", "graded", [0] * 7)]
    (folder / "results.jsonl").write_text("".join(lines), encoding="utf-8")
    paths = write_report(LAB, folder, tmp_path / "report")
    assert read_csv(paths.flags) == [
        ["student", "cell", "flag"],
        ["dan", *flags[0].values()],
        ["dan", *flags[1].values()],
    ]
    header, *rows = read_csv(paths.grades)
    assert [row[header.index("flags")] for row in rows] == ["2", "0"]
