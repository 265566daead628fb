"""Autograde student submissions of one lab with nbgrader, one throwaway nbgrader course per submission.

``grade_submission`` is self-contained (it takes and returns plain picklable data) so it can later run in a worker.
"""

from __future__ import annotations

import csv
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbgrader.api import Gradebook

from autograder.course import Lab, course_workdir, graded_cell_ids
from autograder.nbgrader_config import check, nbgrader_course, prepend_path

GRADED = "graded"
UNREADABLE = "unreadable"
NO_NBGRADER_METADATA = "no_nbgrader_metadata"
ERROR = "error"

# nbgrader's student id inside each throwaway course; the real id (from the file name) never reaches nbgrader.
NBGRADER_STUDENT = "student"


@dataclass(frozen=True)
class GradeJob:
    """Everything needed to grade one submission."""

    lab: Lab
    student: str
    submission: Path | None
    timeout: int = 600
    problem: str = ""  # set when no single notebook could be found for the student


@dataclass
class GradeResult:
    """The outcome for one submission: a score when ``status == "graded"``, else a reason."""

    student: str
    status: str
    score: float | None = None
    max_score: float | None = None
    grades: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    seconds: float = 0.0


class Rejected(Exception):
    """A submission that cannot be graded, with its status."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def find_submissions(folder: Path, lab: Lab, timeout: int = 600) -> list[GradeJob]:
    """Return one job per student in ``folder``: ``<student>.ipynb`` files and ``<student>/`` directories.

    A directory must hold one ``.ipynb`` (or one named ``<lab>.ipynb``); otherwise its job carries the problem.
    Hidden entries are skipped; other files are reported on stderr and ignored.
    """
    jobs = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            notebooks = sorted(entry.glob("*.ipynb"))
            named = [nb for nb in notebooks if nb.name == f"{lab.name}.ipynb"]
            chosen = named or notebooks
            if len(chosen) == 1:
                jobs.append(GradeJob(lab, entry.name, chosen[0], timeout))
            else:
                found = ", ".join(nb.name for nb in notebooks) or "none"
                problem = f"expected one .ipynb (or {lab.name}.ipynb) in {entry}, found: {found}"
                jobs.append(GradeJob(lab, entry.name, None, timeout, problem))
        elif entry.suffix == ".ipynb":
            jobs.append(GradeJob(lab, entry.stem, entry, timeout))
        else:
            print(f"ignoring {entry}: not a .ipynb file or a student directory", file=sys.stderr)
    return jobs


def grade_submission(job: GradeJob) -> GradeResult:
    """Autograde one submission; never raises, every outcome is a ``GradeResult``."""
    start = time.monotonic()
    result = GradeResult(job.student, GRADED)
    try:
        source = nbformat.read(job.lab.source, as_version=4)
        result.max_score = float(sum(cell.metadata.get("nbgrader", {}).get("points", 0) for cell in source.cells))
        result.score, result.grades, result.reason = _autograde(job, graded_cell_ids(source))
    except Rejected as exc:
        result.status, result.reason = exc.status, str(exc)
    except Exception as exc:
        result.status, result.reason = ERROR, f"{type(exc).__name__}: {exc}"
    result.seconds = round(time.monotonic() - start, 2)
    return result


def _read_submission(job: GradeJob) -> nbformat.NotebookNode:
    """Read the submitted notebook or raise ``Rejected(UNREADABLE)``."""
    if job.submission is None:
        raise Rejected(UNREADABLE, job.problem)
    try:
        return nbformat.read(job.submission, as_version=4)
    except Exception as exc:
        raise Rejected(UNREADABLE, f"{job.submission.name} is not a readable notebook: {exc}") from exc


def _autograde(job: GradeJob, source_ids: list[str]) -> tuple[float, dict[str, float], str]:
    """Run nbgrader generate_assignment + autograde; return (score, score per grade_id, remarks)."""
    submitted_ids = set(graded_cell_ids(_read_submission(job)))
    released = f"labs/{job.lab.name}.ipynb"
    if not submitted_ids & set(source_ids):
        raise Rejected(
            NO_NBGRADER_METADATA,
            f"the notebook has none of the nbgrader cell metadata of {released}, so its answers and tests cannot be "
            f"matched. The notebook must be downloaded from the released {released} and worked in directly, not "
            "copied into a fresh notebook.",
        )
    name = job.lab.name
    kernel_env = {"POSTTRAIN_PROFILE": "tiny", "PYTHONPATH": prepend_path(job.lab.repo / "shared", "PYTHONPATH")}
    with (
        course_workdir(job.lab.repo, f"grade/{name}/{job.student}") as root,
        nbgrader_course(root, name, job.lab.source, timeout=job.timeout, kernel_env=kernel_env) as api,
    ):
        check(api.generate_assignment(name, force=True, create=True), f"generate_assignment {name}")
        submitted = root / "submitted" / NBGRADER_STUDENT / name / f"{name}.ipynb"
        submitted.parent.mkdir(parents=True)
        shutil.copyfile(job.submission, submitted)
        check(api.autograde(name, NBGRADER_STUDENT, force=True, create=True), f"autograde {name}")
        with Gradebook(api.coursedir.db_url) as gb:
            submission = gb.find_submission(name, NBGRADER_STUDENT)
            grades = [grade for notebook in submission.notebooks for grade in notebook.grades]
            scores = {grade.name: grade.score for grade in grades}
            manual = [grade.name for grade in grades if grade.needs_manual_grade]
            score = submission.score
    missing = [grade_id for grade_id in source_ids if grade_id not in submitted_ids]
    remarks = []
    if missing:
        remarks.append(f"cells missing from the submission: {', '.join(missing)}")
    if manual:
        remarks.append(f"needs manual grading: {', '.join(manual)}")
    ordered = {grade_id: scores[grade_id] for grade_id in source_ids if grade_id in scores}
    return score, ordered, "; ".join(remarks)


def grade_all(jobs: list[GradeJob]) -> list[GradeResult]:
    """Grade the jobs one after another, printing progress to stderr."""
    results = []
    for index, job in enumerate(jobs, 1):
        print(f"[{index}/{len(jobs)}] grading {job.student} ...", file=sys.stderr, flush=True)
        results.append(grade_submission(job))
    return results


def _fmt(value: float | None) -> str:
    """Format a score: ``10`` or ``7.5``, empty when there is none."""
    return "" if value is None else f"{value:g}"


def format_table(results: list[GradeResult]) -> str:
    """Return a plain-text table: student, score, max score, status, and the reason or remarks if any."""
    rows = [("student", "score", "max_score", "status", "reason")]
    rows += [(r.student, _fmt(r.score), _fmt(r.max_score), r.status, r.reason) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def write_csv(results: list[GradeResult], path: Path) -> None:
    """Write one row per submission: student, status, score, max_score, a column per grade_id, reason, seconds."""
    grade_ids = list(dict.fromkeys(grade_id for r in results for grade_id in r.grades))
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "status", "score", "max_score", *grade_ids, "reason", "seconds"])
        for r in results:
            per_cell = [_fmt(r.grades.get(grade_id)) for grade_id in grade_ids]
            writer.writerow([r.student, r.status, _fmt(r.score), _fmt(r.max_score), *per_cell, r.reason, r.seconds])
