"""The scalable grader end to end: a generated class (correct, partial, blank and every attack) collected,
graded on 2 dask workers in sandboxes, reported; resuming and re-grading; the execution rules."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from nbgrader.api import Gradebook

from autograder.__main__ import main
from autograder.attacks import ATTACKS
from autograder.course import Lab
from autograder.execute import ResilientExecute
from autograder.grade import GradeJob, Limits
from autograder.scheduler import ResultStore, make_client

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mini_lab"
LAB = "00_mini"


def run_cli(*argv: str) -> tuple[int, str, str]:
    """Run ``python -m autograder`` in-process; return (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def latest(grading: Path) -> dict[str, dict]:
    """The last results.jsonl record of each student."""
    lines = (grading / "results.jsonl").read_text(encoding="utf-8").splitlines()
    return {record["student"]: record for record in map(json.loads, filter(None, lines))}


@pytest.fixture(scope="module")
def selftest(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Self-test the mini lab once: collect, grade with 2 workers in sandboxes, report."""
    root = tmp_path_factory.mktemp("selftest")
    repo = root / "repo"
    shutil.copytree(FIXTURE / "solutions", repo / "solutions")
    (repo / "labs").mkdir()
    work = root / "work"
    code, stdout, stderr = run_cli("--repo", str(repo), "selftest", LAB, "--workers", "2", "--work", str(work))
    return {"code": code, "stdout": stdout, "stderr": stderr, "repo": repo, "work": work / LAB}


def test_selftest_class_gets_every_expected_grade_on_two_workers(selftest: dict) -> None:
    assert selftest["code"] == 0, selftest["stdout"][-3000:]
    results = latest(selftest["work"] / "grading")
    assert len(results) >= 12
    assert (results["correct"]["score"], results["blank"]["score"], results["partial"]["score"]) == (10, 0, 5)
    assert [results[s]["flags"] for s in ("correct", "blank", "partial")] == [[], [], []]
    for attack in ATTACKS:
        record = results[attack.name]
        assert bool(record.get("flags")) == attack.flagged, (attack.name, record.get("flags"))
        if attack.unreadable:
            assert (record["status"], record["score"]) == ("unreadable", None), attack.name
        else:  # the honest task keeps its 5 points, the attacked one gets 0
            assert (record["status"], record["score"], record["grades"]) == (
                "graded",
                5,
                {"test_add": 5, "test_square": 0},
            ), attack.name


@pytest.mark.parametrize(
    ("attack", "explanation"),
    [
        ("kernel_exit", "square: this cell stopped the Python kernel"),
        ("infinite_loop", "square: this cell ran past its time limit of 10 s"),
        ("print_flood", "square: this cell"),
    ],
)
def test_skipped_cells_are_explained_in_the_status(selftest: dict, attack: str, explanation: str) -> None:
    assert explanation in latest(selftest["work"] / "grading")[attack]["reason"]


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("input_transformer", "did not report back to the grader"),
        ("kernel_skips_cells", "did not report back to the grader"),
        ("verdict_forged", "does not verify"),
        ("thread_patcher", "tampered with"),
    ],
)
def test_a_test_without_a_genuine_verdict_fails_with_its_reason(selftest: dict, attack: str, reason: str) -> None:
    assert reason in latest(selftest["work"] / "grading")[attack]["reason"]


def test_flags_reach_the_report(selftest: dict) -> None:
    grading = selftest["work"] / "grading"
    flagged = {attack.name for attack in ATTACKS if attack.flagged}
    with (grading / "flags.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["student"] for row in rows} == flagged
    with (grading / "grades.csv").open(encoding="utf-8") as handle:
        counts = {row["student"]: int(row["flags"]) for row in csv.DictReader(handle)}
    assert {student for student, count in counts.items() if count} == flagged


def test_stripped_and_edited_notebooks_are_repaired_and_logged(selftest: dict) -> None:
    results = latest(selftest["work"] / "grading")
    assert any("restored" in note for note in results["stripped_metadata"]["repairs"])
    assert any("test_square" in note for note in results["edited_test"]["repairs"])
    assert any("test_square" in note for note in results["deleted_test"]["repairs"])


def test_feedback_and_csv_cover_every_student(selftest: dict) -> None:
    grading = selftest["work"] / "grading"
    students = set(latest(grading))
    assert {path.stem for path in (grading / "feedback").glob("*.html")} == students
    assert len((grading / "grades.csv").read_text().splitlines()) == len(students) + 1


def test_a_killed_run_resumes_and_regrading_never_duplicates(selftest: dict, tmp_path: Path) -> None:
    repo, grading = selftest["repo"], tmp_path / "grading"
    folder = tmp_path / "class"
    for student in ("correct", "partial", "blank"):
        shutil.copytree(selftest["work"] / "collected" / student, folder / student)
    grade = ("--repo", str(repo), "grade", LAB, str(folder), "--out", str(grading))
    assert run_cli(*grade)[0] == 0
    lines = (grading / "results.jsonl").read_text().splitlines()
    # the run was killed while appending the last result: half a line, no newline
    (grading / "results.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    code, _, stderr = run_cli(*grade)
    assert code == 0 and "resuming: 2 submission(s) already graded" in stderr
    new_lines = (grading / "results.jsonl").read_text().splitlines()[2:]
    assert [json.loads(line)["student"] for line in new_lines] == [json.loads(lines[-1])["student"]]

    assert run_cli(*grade, "--regrade")[0] == 0
    assert len((grading / "results.jsonl").read_text().splitlines()) == 6  # appended; the last line wins
    store = ResultStore(Lab(repo, LAB), grading)
    with Gradebook(store.gradebook_url) as gb:
        assert sorted(s.student.id for s in gb.assignment_submissions(LAB)) == ["blank", "correct", "partial"]
        assert [gb.find_submission(LAB, s).score for s in ("correct", "partial", "blank")] == [10, 5, 0]


def test_grading_refuses_without_sandbox_unless_unsafe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURE / "solutions", repo / "solutions")
    (tmp_path / "subs").mkdir()
    monkeypatch.setattr("autograder.sandbox.shutil.which", lambda tool: None)
    code, _, stderr = run_cli("--repo", str(repo), "grade", LAB, str(tmp_path / "subs"), "--out", str(tmp_path / "g"))
    assert code == 2
    assert "bwrap, prlimit, setpriv not found" in stderr and "--unsafe" in stderr


def execute(cells: list[str], **limits) -> nbformat.NotebookNode:
    """Run ``cells`` through ``ResilientExecute`` in a plain local kernel; return the executed notebook."""
    notebook = new_notebook(cells=[new_code_cell(source) for source in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    executor = ResilientExecute(**limits)
    executed, _ = executor.preprocess(notebook, {"metadata": {"path": "."}})
    return executed


def texts(cell: nbformat.NotebookNode) -> str:
    """All stream text and error messages of a cell."""
    return "".join(o.get("text", "") + o.get("evalue", "") for o in cell.outputs)


def test_a_cell_that_kills_the_kernel_or_hangs_costs_only_itself() -> None:
    executed = execute(
        ["x = 20", "import os\nos._exit(1)", "print(x + 1)", "while True:\n    pass", "print(x + 2)"], timeout=5
    )
    assert "stopped the Python kernel" in texts(executed.cells[1])
    assert texts(executed.cells[2]) == "21\n"
    assert "ran past its time limit of 5 s" in texts(executed.cells[3])
    assert texts(executed.cells[4]) == "22\n"


def test_notebook_time_limit_fails_every_cell_that_did_not_run() -> None:
    executed = execute(["import time\ntime.sleep(30)", "print('never')", "1 + 1"], timeout=60, notebook_timeout=4)
    for cell in executed.cells:
        assert any(o.get("ename") == "AutograderError" for o in cell.outputs), cell.source


def test_output_is_capped_while_it_streams() -> None:
    executed = execute(["for _ in range(50):\n    print('y' * 100_000)"], max_output_bytes=300_000)
    text = texts(executed.cells[0])
    assert len(text) < 400_000 and "output truncated at 300000 bytes" in text


def test_lab_limits_come_from_the_source_notebook(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(FIXTURE / "solutions", repo / "solutions")
    source = repo / "solutions" / f"{LAB}.ipynb"
    notebook = nbformat.read(source, as_version=4)
    notebook.metadata["posttrain"] = {"grading": {"cell_timeout": 42}}
    nbformat.write(notebook, source)
    assert Limits.for_lab(Lab(repo, LAB)).cell_timeout == 42
    notebook.metadata["posttrain"] = {"grading": {"cell_timout": 42}}
    nbformat.write(notebook, source)
    with pytest.raises(ValueError, match="unknown limits \\['cell_timout'\\]"):
        Limits.for_lab(Lab(repo, LAB))
    assert GradeJob(Lab(repo, LAB), "x", None).sandbox  # sandboxed unless asked otherwise


THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def test_a_local_cluster_leaves_the_thread_settings_of_this_process_alone(monkeypatch):
    # dask's nannies set OMP_NUM_THREADS=1 (and the like) in the parent's environment by default: every notebook a
    # test or an instructor runs after grading would then be single-threaded (it doubled the CI time of the lab tests)
    for name in THREAD_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    make_client(2).close()
    assert [name for name in THREAD_SETTINGS if name in os.environ] == []
