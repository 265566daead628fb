"""``python -m autograder demo``: run the finished labs, release them and grade a sample class.

The sample class has, for every lab, one correct submission (the solution), one blank (the released
notebook as handed out) and one partly solved (the released notebook with only some answer cells filled).
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
PARTIAL_ANSWERS = {
    "01_finetune_and_forget": ("task1_masked_loss", "task2_sft_example"),
    "02_lora_and_regularization": ("task1_lora_forward", "task2_merge"),
    "03_replay_and_self_distillation": ("task4_reverse_kl", "task5_bhattacharyya"),
}


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


def grade_sample_class(lab: Lab, folder: Path, grading: Path, workers: int = 2) -> list[GradeResult]:
    """Grade the sample class in ``folder`` on a local dask cluster, sandboxed when the machine allows it."""
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
    )
    results = sorted(grade_jobs(jobs, ResultStore(lab, grading), workers), key=lambda result: result.student)
    write_report(lab, grading, grading)
    return results


def run_demo(repo: Path, work: Path) -> int:
    """Execute every lab's solution, release all labs, grade a sample class per lab; return an exit code."""
    labs = all_labs(repo)
    for lab in labs:
        executed, seconds = execute_solution(lab, work / "executed")
        results = work / "executed" / "results"
        print(f"executed {lab.name} in {seconds:.0f} s -> {executed}")
        path = results / f"{lab.name.split('_')[0]}.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        for when in ("accuracy_before", "accuracy_after"):
            if when in summary:
                row = ", ".join(f"{skill} {value:.2f}" for skill, value in summary[when].items())
                print(f"  {path.name} {when}: {row}")
        for family, best in summary.get("best_at_budget", {}).items():
            print(f"  {path.name} best at the budget, {family}: new {best['new']:.2f}, old drop {best['old_drop']:.2f}")
        cuts = summary.get("forgetting_cut", {})
        for run in summary.get("runs", []) if cuts else []:
            cut = f", removes {cuts[run['label']]:.0%} of plain SFT's" if run["label"] in cuts else ""
            print(
                f"  {path.name} {run['label']}: new {run['new_accuracy']:.2f}, forgetting {run['forgetting']:.2f}{cut}"
            )
    for path in release(labs):
        print(f"released {path.relative_to(repo)}")
    exit_code = 0
    for lab in labs:
        folder = make_sample_class(lab, work / "class" / lab.name)
        graded = grade_sample_class(lab, folder, work / "grading" / lab.name)
        print(f"\ngrades for {lab.name} (sample class in {folder}; report in {work / 'grading' / lab.name}):")
        print(format_table(graded))
        exit_code |= any(result.status != GRADED for result in graded)
    return int(exit_code)


def run_bench(repo: Path, out_dir: Path, work: Path) -> dict[str, dict]:
    """Time each lab's solution notebook on the tiny profile; write ``out_dir/labs.json`` and return it."""
    from posttrain.core.profiles import run_environment

    report = {}
    for lab in all_labs(repo):
        _, seconds = execute_solution(lab, work / lab.name)
        report[lab.name] = {"profile": os.environ.get("POSTTRAIN_PROFILE", "tiny"), "seconds": round(seconds, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "labs.json").write_text(json.dumps({"environment": run_environment(), "labs": report}, indent=1) + "\n")
    return report


def run_lora_bench(out_dir: Path) -> dict:
    """Time our LoRA's training step against PEFT's on the Lab 02 model and batch; write ``out_dir/lora.json``."""
    from posttrain.core.profiles import resolve_profile, run_environment
    from posttrain.studies.lora_and_regularization import lora_step_time
    from posttrain.world.benchmarks import forgetting_benchmark

    profile = resolve_profile(None)
    report = lora_step_time(profile, forgetting_benchmark(profile, new_task="new_facts"))
    report["environment"] = run_environment()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lora.json").write_text(json.dumps(report, indent=1) + "\n")
    return report
