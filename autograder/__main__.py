"""Command line: ``python -m autograder release|collect|grade|report|selftest|demo|bench|spread`` (see ``--help``).

An instructor's loop is four commands: ``release`` the lab, ``collect`` the class's notebooks (a folder
or an LMS zip), ``grade`` them in parallel in sandboxes, and ``report`` grades, failure statistics and
feedback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autograder.bench import run_bench, run_grading_bench, run_lora_bench, run_merge_bench, run_speed_bench
from autograder.budget import lab_budgets
from autograder.budget import markdown as budget_markdown
from autograder.claims import CLAIMS
from autograder.collect import collect
from autograder.course import REPO_ROOT, CourseError, Lab, all_labs, read_source, resolve_lab
from autograder.demo import run_demo
from autograder.grade import GRADED, GradeResult, Limits, find_submissions, format_table
from autograder.nbgrader_config import NbgraderError
from autograder.options import add_grading_options, job_settings, run_grading
from autograder.release import release, stale_releases
from autograder.report import write_report
from autograder.sandbox import SandboxUnavailable
from autograder.scheduler import ClusterError, ResultStore
from autograder.selftest import run_selftest
from autograder.spread import SPREAD_DIR, markdown, measure, spread_table


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m autograder", description="Release, collect, grade and report the course's labs."
    )
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="course repo root (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)

    rel = commands.add_parser("release", help="generate labs/<LAB>.ipynb from solutions/<LAB>.ipynb with nbgrader")
    rel.add_argument("lab", nargs="?", default="all", help="01, 01_finetune_and_forget, a notebook path, or all")
    rel.add_argument("--check", action="store_true", help="only check that labs/ is up to date (exit 1 if not)")

    col = commands.add_parser("collect", help="map an LMS export or folder to students and repair metadata")
    col.add_argument("lab", help="01, 01_finetune_and_forget or a notebook path")
    col.add_argument("source", type=Path, help="folder of .ipynb files or a .zip (plain, Canvas or Moodle layout)")
    col.add_argument("--out", type=Path, required=True, help="folder to write <student>/<LAB>.ipynb into")

    grade = commands.add_parser("grade", help="autograde a folder of submissions in parallel, sandboxed")
    grade.add_argument("lab", help="01, 01_finetune_and_forget or a notebook path")
    grade.add_argument("submissions", type=Path, help="folder of <student>.ipynb or <student>/<any>.ipynb")
    grade.add_argument("--out", type=Path, help="grading folder (default: grading/<LAB>)")
    add_grading_options(grade)

    rep = commands.add_parser("report", help="grades.csv, failures.csv, flags.csv and feedback/ from a grading folder")
    rep.add_argument("lab", help="01, 01_finetune_and_forget or a notebook path")
    rep.add_argument("--grading", type=Path, help="grading folder (default: grading/<LAB>)")
    rep.add_argument("--out", type=Path, help="report folder (default: the grading folder)")

    self_test = commands.add_parser("selftest", help="solution = full marks, blank = 0, every attack contained")
    self_test.add_argument("lab", nargs="?", default="all", help="a lab or all")
    self_test.add_argument("--work", type=Path, default=Path("/tmp/posttrain-selftest"), help="scratch folder")
    add_grading_options(self_test)

    demo = commands.add_parser("demo", help="run the finished labs, release them and grade a sample class")
    demo.add_argument("--work", type=Path, default=Path("/tmp/posttrain-demo"), help="scratch folder, outside the repo")

    bench = commands.add_parser("bench", help="time the labs and the grader (docs/bench/*.json)")
    bench.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench", help="folder for the JSON files")
    bench.add_argument("--work", type=Path, default=Path("/tmp/posttrain-bench"), help="scratch folder")
    bench.add_argument(
        "--only",
        choices=("labs", "speed", "lora", "merge", "grading"),
        help="time only the labs, the speed of training and evaluation, LoRA, merging or the grader",
    )

    budget = commands.add_parser("budget", help="each lab's colab plan on a T4, on paper (docs/colab_budget.md)")
    budget.add_argument("lab", nargs="?", default="all", help="a lab or all")

    spread = commands.add_parser("spread", help="measure each claim's margin on this platform (docs/margins.md)")
    spread.add_argument("--label", help="name of this platform, e.g. avx2-2threads (writes <out>/<label>.json)")
    spread.add_argument("--labs", nargs="+", default=sorted(CLAIMS), help="labs to measure (default: all)")
    spread.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    spread.add_argument("--out", type=Path, default=SPREAD_DIR, help="folder of the per-platform JSON files")
    spread.add_argument("--work", type=Path, default=Path("/tmp/posttrain-spread"), help="scratch folder")
    spread.add_argument("--report", action="store_true", help="print the table of every platform in --out")
    return parser


def _labs(repo: Path, spec: str) -> list[Lab]:
    """Return the labs named by ``spec`` (``all`` or one lab)."""
    if spec != "all":
        return [resolve_lab(repo, spec)]
    labs = all_labs(repo)
    if not labs:
        raise CourseError(f"no source notebooks in {repo / 'solutions'}")
    return labs


def _release(repo: Path, spec: str, check_only: bool) -> int:
    """Run ``release``; return the exit code."""
    labs = _labs(repo, spec)
    generated = {lab.release for lab in labs}
    if check_only:
        stale = stale_releases(labs)
        for path in stale:
            why = (
                f"is missing or differs from what nbgrader generates from solutions/{path.name}"
                if path in generated
                else "carries another course address than pyproject.toml's [tool.posttrain-course]"
            )
            print(f"stale: {path.relative_to(repo)} {why}", file=sys.stderr)
        if stale:
            print("fix: python -m autograder release all", file=sys.stderr)
            return 1
        print(f"labs/ is up to date ({len(labs)} lab(s) checked)")
        return 0
    written = release(labs)
    for path in written:
        if path not in generated:
            print(f"stamped the course address: {path.relative_to(repo)}")
    for lab in labs:
        print(f"{'wrote' if lab.release in written else 'unchanged'}: {lab.release.relative_to(repo)}")
    return 0


def _grade(repo: Path, args: argparse.Namespace) -> int:
    """Run ``grade``; return the exit code (1 if any submission was not graded)."""
    lab = resolve_lab(repo, args.lab)
    read_source(lab.source)
    if not args.submissions.is_dir():
        raise CourseError(f"submissions folder {args.submissions} does not exist")
    out = args.out or Path("grading") / lab.name
    settings = job_settings(args, (args.submissions, out))
    jobs = find_submissions(args.submissions, lab, limits=Limits.for_lab(lab), **settings)
    if not jobs:
        raise CourseError(f"no submissions (<student>.ipynb or <student>/) in {args.submissions}")
    run_grading(lab, jobs, out, args)
    return _report(lab, out, out)


def _report(lab: Lab, grading: Path, out: Path) -> int:
    """Write the report and print the grade table; exit 1 if any student is not graded."""
    paths = write_report(lab, grading, out)
    results = ResultStore(lab, grading).latest()
    print(format_table([_as_result(record) for record in sorted(results.values(), key=lambda r: r["student"])]))
    print(f"wrote {paths.grades}, {paths.failures}, {paths.flags} and {paths.feedback}/")
    return 0 if all(record["status"] == GRADED for record in results.values()) else 1


def _as_result(record: dict) -> GradeResult:
    """A ``GradeResult`` from a results.jsonl record (for the table)."""
    keys = ("student", "status", "score", "max_score", "grades", "reason", "seconds", "submission_sha256")
    return GradeResult(**{key: record[key] for key in keys if key in record})


def _spread(args: argparse.Namespace) -> int:
    """Measure this platform's margins under ``--label``, or print the table of every stored platform."""
    if args.report:
        print(markdown(spread_table(args.out)), end="")
        return 0
    if not args.label:
        raise CourseError("spread needs --label NAME for this platform's measurements, or --report for the table")
    print(f"wrote {measure(args.labs, args.seeds, args.label, args.out, args.work)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; return the process exit code (2 for usage/course errors)."""
    args = _parser().parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.command == "release":
            return _release(repo, args.lab, args.check)
        if args.command == "collect":
            collected = collect(args.source, resolve_lab(repo, args.lab), args.out)
            for entry in collected:
                print(f"{entry.student}: {entry.status} {entry.reason}".rstrip())
            return 0 if all(entry.status in ("ok", "repaired") for entry in collected) else 1
        if args.command == "grade":
            return _grade(repo, args)
        if args.command == "report":
            lab = resolve_lab(repo, args.lab)
            grading = args.grading or Path("grading") / lab.name
            return _report(lab, grading, args.out or grading)
        if args.command == "selftest":
            return run_selftest(_labs(repo, args.lab), args.work, args)
        if args.command == "demo":
            return run_demo(repo, args.work)
        if args.command == "spread":
            return _spread(args)
        if args.command == "budget":
            print(budget_markdown(lab_budgets(_labs(repo, args.lab))), end="")
            return 0
        if args.only in (None, "labs"):
            print(json.dumps(run_bench(repo, args.out, args.work), indent=1))
        if args.only in (None, "speed"):
            print(json.dumps(run_speed_bench(args.out), indent=1))
        if args.only in (None, "lora"):
            print(json.dumps(run_lora_bench(args.out), indent=1))
        if args.only in (None, "merge"):
            print(json.dumps(run_merge_bench(args.out, args.work / "merge"), indent=1))
        if args.only in (None, "grading"):
            print(json.dumps(run_grading_bench(args.out, args.work / "grading"), indent=1))
        return 0
    except (CourseError, NbgraderError, SandboxUnavailable, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
