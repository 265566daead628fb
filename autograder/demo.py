"""``python -m autograder demo``: release the finished labs and grade a sample class of each, which runs the lab.

The sample class has, for every lab, one correct submission (the solution), one blank (the released
notebook as handed out) and one partly solved (the released notebook with only some answer cells filled).
Grading the solution executes it in the sandbox; the results JSON it writes is kept (``GradeJob.keep``), so the
demo and the test suite run each solution notebook once. ``execute_solution`` runs one outside the grader
(``make bench``, ``python -m autograder spread``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import nbformat

from autograder.attacks import answer_sources, solved_release
from autograder.course import Lab, all_labs, read_source
from autograder.grade import GRADED, GradeResult, Limits, find_submissions, format_table
from autograder.release import release
from autograder.report import write_report
from autograder.sandbox import SandboxUnavailable, check_sandbox
from autograder.scheduler import ResultStore, default_threads, grade_jobs

# Answer cells filled in the partly solved sample submission, per lab (the rest stays blank).
# Each leaves the lab's training unsolved, so the partial submission costs seconds, not the lab's minute: a real
# partly solved notebook, graded as it stands, while the solution's grading runs the lab.
PARTIAL_ANSWERS = {
    "01_finetune_and_forget": ("task4_sample_wise", "task5_chance"),
    "02_lora_and_regularization": ("task1_lora_forward", "task2_merge"),
    "03_replay_and_self_distillation": ("task4_reverse_kl", "task5_bhattacharyya"),
    "04_causal_tracing_and_rome": ("task1_trace_effects", "task2_n_gram_entropy"),
    "05_task_vectors_and_merging": ("task1_task_vector", "task2_ties"),
    "06_test_time_training": ("task1_entropy_tent", "task2_suta_loss"),
}
# The grade each lab's sample class must get: the solution 100, the blank release 0, the partly solved notebook the
# points of the tasks it solves.
PARTIAL_SCORES = {
    # tasks 4 and 5 (20 + 20); without the loss of task 1 nothing trains, so tasks 3, 6 and 7 fail with it
    "01_finetune_and_forget": 40,
    # tasks 1 (15) and 2 (10); the sweep needs tasks 3 and 5, so tasks 6 and 7 fail with it
    "02_lora_and_regularization": 25,
    # tasks 4 and 5 (35 points) and task 6, which checks the theory with them (15)
    "03_replay_and_self_distillation": 50,
    # tasks 1 (20) and 2 (20); without the rank-one update of task 3 no edit is made, so tasks 4 and 5 fail with it
    "04_causal_tracing_and_rome": 40,
    # tasks 1 (15) and 2 (25); without DARE (task 3) and the chat vector (task 4) the merges of tasks 5 and 6 fail
    "05_task_vectors_and_merging": 40,
    # tasks 1 (20) and 2 (25); without the shift trigger (task 3) and the episodic reset (task 4) no experiment runs,
    # so tasks 5 and 6 fail with them
    "06_test_time_training": 45,
}


def expected_scores(lab: Lab) -> dict[str, float]:
    """The score each submission of ``lab``'s sample class must get (``make_sample_class``)."""
    return {"correct": 100, "blank": 0, "partial": PARTIAL_SCORES[lab.name]}


def sample_class_scores(results: list[GradeResult]) -> dict[str, float | str]:
    """Each submission's score, or its status when it was not graded: what ``expected_scores`` is compared with."""
    return {r.student: r.score if r.status == GRADED else r.status for r in results}


# The results each solution notebook writes (``results/0N.json``), relative to its working directory.
RESULTS_FILES = "results/*.json"


def execute_solution(lab: Lab, work: Path, parameters: dict | None = None) -> tuple[Path, float]:
    """Execute ``lab``'s solution notebook with papermill in ``work`` (tiny profile unless set);
    return the executed notebook's path and the wall-clock seconds it took."""
    import papermill

    work.mkdir(parents=True, exist_ok=True)
    out = work / f"{lab.name}.executed.ipynb"
    os.environ.setdefault("POSTTRAIN_PROFILE", "tiny")
    start = time.time()
    papermill.execute_notebook(
        str(lab.source), str(out), parameters=parameters or {}, cwd=str(work), kernel_name="python3", progress_bar=False
    )
    return out, time.time() - start


def partly_solved(lab: Lab, answer_ids: tuple[str, ...]) -> nbformat.NotebookNode:
    """The released notebook with the solution code pasted into the answer cells named by ``answer_ids``."""
    return solved_release(lab, skip=tuple(set(answer_sources(lab)) - set(answer_ids)))


def make_sample_class(lab: Lab, folder: Path) -> Path:
    """Write ``correct.ipynb``, ``blank.ipynb`` and ``partial.ipynb`` submissions of ``lab`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(read_source(lab.source), folder / "correct.ipynb")
    nbformat.write(nbformat.read(lab.release, as_version=4), folder / "blank.ipynb")
    nbformat.write(partly_solved(lab, PARTIAL_ANSWERS.get(lab.name, ())), folder / "partial.ipynb")
    return folder


def grade_sample_class(
    lab: Lab, folder: Path, grading: Path, workers: int = 2, keep: tuple[str, ...] = (RESULTS_FILES,)
) -> list[GradeResult]:
    """Grade the sample class in ``folder`` on a local dask cluster, sandboxed when the machine allows it, keeping
    the files each notebook writes that match ``keep`` (default: its results JSON, in ``GradeResult.kept`` and
    ``grading/outputs/<student>/``): the solution's is the lab's results, so its notebook need not run again."""
    try:
        check_sandbox()
        sandbox = True
    except SandboxUnavailable as exc:
        print(f"warning: grading the demo's own notebooks without a sandbox: {exc}", file=sys.stderr)
        sandbox = False
    shutil.rmtree(grading, ignore_errors=True)
    jobs = find_submissions(
        folder,
        lab,
        limits=Limits.for_lab(lab),
        sandbox=sandbox,
        threads=default_threads(workers),
        hidden=(str(folder),),
        keep=keep,
    )
    results = sorted(grade_jobs(jobs, ResultStore(lab, grading), workers), key=lambda result: result.student)
    write_report(lab, grading, grading)
    return results


def print_summary(name: str, summary: dict) -> None:
    """Print the headline numbers of a lab's results JSON (``results/0N.json``)."""
    for when in ("accuracy_before", "accuracy_after"):
        if when in summary:
            row = ", ".join(f"{skill} {value:.2f}" for skill, value in summary[when].items())
            print(f"  {name} {when}: {row}")
    for family, best in summary.get("best_at_budget", {}).items():
        print(f"  {name} best at the budget, {family}: new {best['new']:.2f}, old drop {best['old_drop']:.2f}")
    cuts = summary.get("forgetting_cut", {})
    for run in summary.get("runs", []) if cuts else []:
        cut = f", removes {cuts[run['label']]:.0%} of plain SFT's" if run["label"] in cuts else ""
        print(f"  {name} {run['label']}: new {run['new_accuracy']:.2f}, forgetting {run['forgetting']:.2f}{cut}")


def run_demo(repo: Path, work: Path) -> int:
    """Release all labs and grade a sample class per lab, whose ``correct`` submission is the solution: its graded run
    is the lab's run on the tiny profile, so each notebook executes once. Print each lab's results and grades; return
    1 when a submission was not graded or did not get its expected score (``expected_scores``), else 0."""
    labs = all_labs(repo)
    for path in release(labs):
        print(f"released {path.relative_to(repo)}")
    exit_code = 0
    for number, lab in enumerate(labs, 1):
        print(
            f"\n[{number}/{len(labs)}] {lab.name}: grading its sample class (the solution runs in full) ...", flush=True
        )
        grading = work / "grading" / lab.name
        start = time.time()
        graded = grade_sample_class(lab, make_sample_class(lab, work / "class" / lab.name), grading)
        print(
            f"graded in {time.time() - start:.0f} s; the solution as it ran: {grading / 'autograded' / 'correct.ipynb'}"
        )
        correct = next(result for result in graded if result.student == "correct")
        for name, text in correct.kept.items():
            print_summary(Path(name).name, json.loads(text))
        print(format_table(graded))
        if sample_class_scores(graded) != expected_scores(lab):
            print(f"  expected {expected_scores(lab)}")
            exit_code = 1
    return exit_code
