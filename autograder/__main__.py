"""Command line: ``python -m autograder release|grade ...`` (see ``--help``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from autograder.course import REPO_ROOT, CourseError, Lab, all_labs, read_source, resolve_lab
from autograder.demo import run_bench, run_demo
from autograder.grade import GRADED, find_submissions, format_table, grade_all, write_csv
from autograder.nbgrader_config import NbgraderError
from autograder.release import release, stale_releases


def _parser() -> argparse.ArgumentParser:
    """Build the argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m autograder", description="Release student notebooks and autograde submissions with nbgrader."
    )
    parser.add_argument("--repo", type=Path, default=REPO_ROOT, help="course repo root (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True)

    rel = commands.add_parser("release", help="generate labs/<LAB>.ipynb from solutions/<LAB>.ipynb with nbgrader")
    rel.add_argument("lab", nargs="?", default="all", help="01, 01_finetune_and_forget, a notebook path, or all")
    rel.add_argument("--check", action="store_true", help="only check that labs/ is up to date (exit 1 if not)")

    grade = commands.add_parser("grade", help="autograde submissions of one lab with nbgrader")
    grade.add_argument("lab", help="01, 01_finetune_and_forget or a notebook path")
    grade.add_argument("submissions", type=Path, help="folder of <student>.ipynb or <student>/<any>.ipynb")
    grade.add_argument("--out", type=Path, default=Path("results.csv"), help="CSV to write (default: %(default)s)")
    grade.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell (default: %(default)s)")

    demo = commands.add_parser("demo", help="run the finished labs, release them and grade a sample class")
    demo.add_argument("--work", type=Path, default=Path("/tmp/posttrain-demo"), help="scratch folder, outside the repo")

    bench = commands.add_parser("bench", help="time every lab's solution on the tiny profile (docs/bench/labs.json)")
    bench.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "bench", help="folder for labs.json")
    bench.add_argument("--work", type=Path, default=Path("/tmp/posttrain-bench"), help="scratch folder")
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
    if check_only:
        stale = stale_releases(labs)
        for path in stale:
            print(
                f"stale: {path.relative_to(repo)} is missing or differs from what nbgrader generates from "
                f"solutions/{path.name}",
                file=sys.stderr,
            )
        if stale:
            print("fix: python -m autograder release all", file=sys.stderr)
            return 1
        print(f"labs/ is up to date ({len(labs)} lab(s) checked)")
        return 0
    written = {path.resolve() for path in release(labs)}
    for lab in labs:
        print(f"{'wrote' if lab.release.resolve() in written else 'unchanged'}: {lab.release.relative_to(repo)}")
    return 0


def _grade(repo: Path, spec: str, submissions: Path, out: Path, timeout: int) -> int:
    """Run ``grade``; return the exit code (1 if any submission was not graded)."""
    lab = resolve_lab(repo, spec)
    read_source(lab.source)
    if not submissions.is_dir():
        raise CourseError(f"submissions folder {submissions} does not exist")
    jobs = find_submissions(submissions, lab, timeout)
    if not jobs:
        raise CourseError(f"no submissions (<student>.ipynb or <student>/) in {submissions}")
    results = grade_all(jobs)
    print(format_table(results))
    write_csv(results, out)
    print(f"wrote {out}")
    return 0 if all(result.status == GRADED for result in results) else 1


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the command; return the process exit code (2 for usage/course errors)."""
    args = _parser().parse_args(argv)
    repo = args.repo.resolve()
    try:
        if args.command == "release":
            return _release(repo, args.lab, args.check)
        if args.command == "demo":
            return run_demo(repo, args.work)
        if args.command == "bench":
            print(json.dumps(run_bench(repo, args.out, args.work), indent=1))
            return 0
        return _grade(repo, args.lab, args.submissions, args.out, args.timeout)
    except (CourseError, NbgraderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
