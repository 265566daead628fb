"""The grading options that ``python -m autograder grade`` and ``selftest`` share, and the grading run they drive.

Kept apart from the command line (``autograder.__main__``), which imports everything and is imported by nothing.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from autograder.course import CourseError, Lab
from autograder.grade import GRADING_SEED_ENV, with_limits
from autograder.sandbox import check_sandbox
from autograder.scheduler import CLUSTERS, ResultStore, default_threads, grade_jobs


def add_grading_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``grade`` and ``selftest``: parallelism, device, limits, sandbox, secret seed."""
    parser.add_argument("--workers", type=int, default=1, help="parallel graders (default: %(default)s)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of a running dask scheduler (tcp://host:8786)")
    where.add_argument("--cluster", choices=CLUSTERS, default="local", help="cluster to start (default: local)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where kernels run")
    parser.add_argument("--cell-timeout", type=int, help="seconds per cell (default: the lab's own limit)")
    parser.add_argument("--notebook-timeout", type=int, help="seconds per notebook (default: the lab's own limit)")
    parser.add_argument("--memory-mb", type=int, help="kernel memory limit (default: the lab's own limit)")
    parser.add_argument("--unsafe", action="store_true", help="run student code WITHOUT a sandbox (trusted code only)")
    parser.add_argument("--regrade", action="store_true", help="grade again submissions already graded")
    parser.add_argument(
        "--seed-file", type=Path, help=f"file holding the secret grading seed (else ${GRADING_SEED_ENV})"
    )
    parser.add_argument(
        "--keep",
        action="append",
        default=[],
        metavar="GLOB",
        help="keep the files each notebook writes that match GLOB (relative to its working directory, e.g. "
        "'results/*.json') in OUT/outputs/<student>/; repeatable",
    )


def grading_seed(seed_file: Path | None) -> str | None:
    """The instructor's secret seed for hidden-test inputs, from ``--seed-file`` or the environment."""
    if seed_file is not None:
        if not seed_file.is_file():
            raise CourseError(f"--seed-file {seed_file} does not exist")
        value = seed_file.read_text(encoding="utf-8").strip()
    else:
        value = os.environ.get(GRADING_SEED_ENV)
    if value is None:
        print(
            f"warning: no secret grading seed (${GRADING_SEED_ENV} or --seed-file): hidden tests use their fixed "
            "public inputs, which anyone reading the repository can see",
            file=sys.stderr,
        )
        return None
    if not value.lstrip("-").isdigit():
        raise CourseError(f"the grading seed must be an integer, got {value!r}")
    return value


def job_settings(args: argparse.Namespace, extra_hidden: tuple[str, ...]) -> dict:
    """``GradeJob`` fields from the grading options; refuses to run without a sandbox unless ``--unsafe``."""
    if args.unsafe:
        print("warning: --unsafe: student code runs with your rights, network and files", file=sys.stderr)
    else:
        check_sandbox()
    return {
        "sandbox": not args.unsafe,
        "device": args.device,
        "threads": default_threads(args.workers),
        "hidden": tuple(str(Path(p).resolve()) for p in extra_hidden),
        "grading_seed": grading_seed(args.seed_file),
        "keep": tuple(args.keep),
    }


def run_grading(lab: Lab, jobs: list, out: Path, args: argparse.Namespace) -> list:
    """Grade ``jobs`` into the grading folder ``out`` (resuming), in parallel when asked; return the new results."""
    jobs = with_limits(
        jobs, cell_timeout=args.cell_timeout, notebook_timeout=args.notebook_timeout, memory_mb=args.memory_mb
    )
    store = ResultStore(lab, out)
    pending = store.pending(jobs, regrade=args.regrade)
    if len(pending) < len(jobs):
        print(f"resuming: {len(jobs) - len(pending)} submission(s) already graded in {out}", file=sys.stderr)
    return grade_jobs(pending, store, args.workers, args.scheduler, args.cluster)
