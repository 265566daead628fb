"""``python -m autograder bench``: how fast the grader is (``docs/bench/autograde.json``).

Measured on the mini lab of the test suite (``tests/fixtures/mini_lab``), whose notebooks run in about a
second, so that what is timed is the grader, not training:

* overhead per submission: a submission's grading wall time minus its notebook's own execution time
  (recorded by ``ResilientExecute``), graded one at a time in the sandbox;
* speed-up: the same class graded with 1 worker and with 2 workers, in one run.

It also writes a paper estimate for a 500-student class on a Slurm GPU cluster from these numbers.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import nbformat

from autograder.attacks import solved_release
from autograder.course import REPO_ROOT, Lab
from autograder.grade import Limits, find_submissions
from autograder.release import release
from autograder.sandbox import check_sandbox
from autograder.scheduler import ResultStore, connected, default_threads, grade_class

MINI_LAB = REPO_ROOT / "tests" / "fixtures" / "mini_lab"
CLASS_SIZE = 12


def _mini_lab(work: Path) -> Lab:
    """A scratch course repo holding the mini lab, released."""
    repo = work / "repo"
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(MINI_LAB / "solutions", repo / "solutions")
    lab = Lab(repo, "00_mini")
    release([lab])
    return lab


def _grade(lab: Lab, folder: Path, grading: Path, workers: int) -> tuple[float, list]:
    """Grade ``folder`` with ``workers`` (sandboxed); return the wall seconds and the results."""
    shutil.rmtree(grading, ignore_errors=True)
    jobs = find_submissions(folder, lab, limits=Limits.for_lab(lab), threads=default_threads(workers))
    store = ResultStore(lab, grading)
    if workers == 1:
        start = time.monotonic()
        results = list(grade_class(jobs, store))
        return time.monotonic() - start, results
    with connected(workers) as client:
        start = time.monotonic()  # the cluster's start-up is not grading time
        results = list(grade_class(jobs, store, client))
        return time.monotonic() - start, results


def run_grading_bench(out_dir: Path, work: Path) -> dict:
    """Time the grader; write ``out_dir/autograde.json`` and return its content."""
    from posttrain.core.profiles import run_environment

    check_sandbox()
    lab = _mini_lab(work)
    folder = work / "class"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(CLASS_SIZE):
        nbformat.write(solved_release(lab), folder / f"student{index:02d}.ipynb")

    serial_seconds, results = _grade(lab, folder, work / "grading-1", workers=1)
    overheads = []
    for result in results:
        execution = json.loads(result.autograded)["metadata"]["autograder"]["execution_seconds"]
        overheads.append(result.seconds - execution)
    parallel_seconds, _ = _grade(lab, folder, work / "grading-2", workers=2)
    report = {
        "environment": run_environment(),
        "class": f"{CLASS_SIZE} submissions of the mini lab (tests/fixtures/mini_lab), sandboxed",
        "overhead_per_submission_s": {
            "median": round(statistics.median(overheads), 2),
            "max": round(max(overheads), 2),
            "what": "grading wall time minus the notebook's own execution (kernel start to last cell), after a "
            "one-off ~3 s per worker process to build the lab's assignment gradebook",
        },
        "class_seconds": {"1_worker": round(serial_seconds, 1), "2_workers": round(parallel_seconds, 1)},
        "speedup_2_workers": round(serial_seconds / parallel_seconds, 2),
        "estimate_500_students_slurm_gpu": _slurm_estimate(statistics.median(overheads)),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "autograde.json").write_text(json.dumps(report, indent=1) + "\n")
    return report


def _slurm_estimate(overhead_s: float) -> dict:
    """A paper estimate for 500 Lab-01 submissions on 10 single-GPU Slurm nodes, 4 workers each."""
    notebook_s = 20 * 60  # a colab-profile lab is designed for <= 20 min on a T4; an A100 node is faster
    workers = 10 * 4
    total_s = 500 / workers * (notebook_s + overhead_s) + 120  # + job start-up
    return {
        "assumptions": "10 Slurm nodes x 1 GPU, 4 kernels per GPU, 20 min per colab-profile notebook, "
        f"{overhead_s:.1f} s grader time per submission, 2 min for the jobs to start",
        "hours": round(total_s / 3600, 1),
    }
