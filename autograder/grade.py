"""Autograde one submission with nbgrader, in a throwaway nbgrader course and a sandboxed kernel.

``grade_submission`` takes and returns plain picklable data, so it runs unchanged in a dask worker
(``autograder.scheduler``); it never raises: every outcome is a ``GradeResult`` with a status.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from unittest import mock

import nbformat
from nbgrader.api import Gradebook
from traitlets.config import Config

from autograder.collect import repair
from autograder.course import REPO_ROOT, Lab, course_workdir, graded_cell_ids
from autograder.nbgrader_config import check, nbgrader_course, prepend_path
from autograder.sandbox import SandboxPolicy, prepare_dirs
from autograder.screen import guard_plan, screen_notebook

GRADED = "graded"
UNREADABLE = "unreadable"
NO_NBGRADER_METADATA = "no_nbgrader_metadata"
ERROR = "error"
GRADING_SEED_ENV = "POSTTRAIN_GRADING_SEED"

# nbgrader's student id inside each throwaway course; the real id (from the file name) never reaches nbgrader.
NBGRADER_STUDENT = "student"


@dataclass(frozen=True)
class Limits:
    """Time and resource limits of one grading run; a lab sets its own in the source notebook's metadata
    (``metadata.posttrain.grading``), the command line can override them."""

    cell_timeout: int = 600  # seconds per cell: training cells need minutes, not nbgrader's default 30 s
    notebook_timeout: int = 1800  # seconds for the whole notebook, reruns after a killed kernel included
    memory_mb: int = 8192  # kernel address space (CPU only; CUDA kernels are not address-space limited)
    processes: int = 512  # processes and threads of the kernel's user
    output_bytes: int = 1_000_000  # output kept per cell

    @classmethod
    def for_lab(cls, lab: Lab) -> Limits:
        """The lab's limits: the defaults updated by ``metadata.posttrain.grading`` of its source notebook."""
        settings = nbformat.read(lab.source, as_version=4).metadata.get("posttrain", {}).get("grading", {})
        unknown = sorted(set(settings) - set(cls.__dataclass_fields__))
        if unknown:
            known = ", ".join(cls.__dataclass_fields__)
            raise ValueError(f"{lab.source}: unknown limits {unknown} in metadata.posttrain.grading; known: {known}")
        return cls(**settings)


@dataclass(frozen=True)
class GradeJob:
    """Everything needed to grade one submission, picklable for a worker."""

    lab: Lab
    student: str
    submission: Path | None
    limits: Limits = Limits()
    sandbox: bool = True  # False only with --unsafe
    device: str = "cpu"
    threads: int = 1  # CPU threads for the kernel's torch
    hidden: tuple[str, ...] = ()  # extra paths the kernel must not see (submissions, outputs)
    grading_seed: str | None = None
    problem: str = ""  # set when no single notebook could be found for the student
    keep: tuple[str, ...] = ()  # globs, relative to the kernel's working directory, of files to return (``kept``)


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
    submission_sha256: str = ""
    autograded: str = ""  # the autograded notebook (JSON text), written out by the one writer
    kept: dict[str, str] = field(default_factory=dict)  # files the notebook wrote that match ``GradeJob.keep``
    # What the static screen and the kernel guard saw, for the instructor ({"cell": grade_id, "flag": text}).
    flags: list[dict[str, str]] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)  # what grading repaired itself in a notebook not collected


class Rejected(Exception):
    """A submission that cannot be graded, with its status."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status


def find_submissions(folder: Path, lab: Lab, **settings) -> list[GradeJob]:
    """Return one job per student in ``folder``: ``<student>.ipynb`` files and ``<student>/`` directories.

    A directory must hold one ``.ipynb`` (or one named ``<lab>.ipynb``); otherwise its job carries the problem.
    Hidden entries are skipped; other files are reported on stderr and ignored. ``settings`` are ``GradeJob``
    fields shared by every job (limits, sandbox, ...).
    """
    jobs = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith(".") or entry.name == "collect.json":  # collect's own summary
            continue
        if entry.is_dir():
            notebooks = sorted(entry.glob("*.ipynb"))
            named = [nb for nb in notebooks if nb.name == f"{lab.name}.ipynb"]
            chosen = named or notebooks
            if len(chosen) == 1:
                jobs.append(GradeJob(lab, entry.name, chosen[0], **settings))
            else:
                found = ", ".join(nb.name for nb in notebooks) or "none"
                problem = f"expected one .ipynb (or {lab.name}.ipynb) in {entry}, found: {found}"
                jobs.append(GradeJob(lab, entry.name, None, problem=problem, **settings))
        elif entry.suffix == ".ipynb":
            jobs.append(GradeJob(lab, entry.stem, entry, **settings))
        else:
            print(f"ignoring {entry}: not a .ipynb file or a student directory", file=sys.stderr)
    return jobs


def submission_digest(job: GradeJob) -> str:
    """SHA-256 of the submitted file ("" when there is none): a re-grade of the same bytes can be skipped."""
    if job.submission is None or not job.submission.is_file():
        return ""
    return hashlib.sha256(job.submission.read_bytes()).hexdigest()


def grade_submission(job: GradeJob) -> GradeResult:
    """Autograde one submission; never raises, every outcome is a ``GradeResult``."""
    start = time.monotonic()
    result = GradeResult(job.student, GRADED, submission_sha256=submission_digest(job))
    try:
        source = nbformat.read(job.lab.source, as_version=4)
        result.max_score = float(sum(cell.metadata.get("nbgrader", {}).get("points", 0) for cell in source.cells))
        submitted, result.repairs = _repaired_submission(job)
        graded = _autograde(job, source, submitted)
        result.score, result.grades, result.reason, result.autograded, result.kept, result.flags = graded
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


def _repaired_submission(job: GradeJob) -> tuple[nbformat.NotebookNode, list[str]]:
    """The submission with what ``collect`` repairs repaired (graded cells matched to the released notebook, edited
    tests restored, duplicates unlabelled), and one line per repair. A collected notebook needs none."""
    submitted = _read_submission(job)
    if not job.lab.release.is_file():
        return submitted, []
    release = nbformat.read(job.lab.release, as_version=4)
    if not set(graded_cell_ids(submitted)) & set(graded_cell_ids(release)):
        return submitted, []  # nothing to match it by: ``no_nbgrader_metadata`` says to run collect
    fixed = repair(submitted, release)
    return fixed.notebook, fixed.repairs


def kernel_settings(
    job: GradeJob, root: Path, source: nbformat.NotebookNode
) -> tuple[dict[str, str], list[str] | None, Config]:
    """The kernel's environment, its command (None: unsandboxed) and the execution config for one job (the kernel
    guard watches what the lab's ``source`` notebook imports and its tests read)."""
    repo = job.lab.repo.resolve()
    env = {
        "POSTTRAIN_PROFILE": "tiny" if job.device == "cpu" else "colab",
        "PYTHONPATH": str(repo / "shared"),
        "OMP_NUM_THREADS": str(job.threads),
        "MKL_NUM_THREADS": str(job.threads),
        "MPLBACKEND": "Agg",
        "HF_HUB_OFFLINE": "1",
        # nbgrader scores a test cell 0 when it writes to stderr; a library's deprecation warning is not a failure
        "PYTHONWARNINGS": "ignore",
        "PATH": prepend_path(Path(sys.executable).parent, "PATH"),
    }
    if job.grading_seed is not None:
        env[GRADING_SEED_ENV] = job.grading_seed
    config = Config()
    config.Execute.timeout = job.limits.cell_timeout
    config.ResilientExecute.notebook_timeout = job.limits.notebook_timeout
    config.ResilientExecute.max_output_bytes = job.limits.output_bytes
    config.ResilientExecute.guard_plan = json.dumps(guard_plan(source))
    if not job.sandbox:
        return env | {"PYTHONPATH": prepend_path(repo / "shared", "PYTHONPATH")}, None, config
    hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
    shared = (repo / "shared", REPO_ROOT / "shared")  # the lab's package and the installed one
    policy = SandboxPolicy(
        scratch=str(root / "scratch"),
        runtime=str(root / "runtime"),
        visible=tuple(str(p) for p in (sys.base_prefix, sys.prefix, *shared, hf_home) if Path(p).exists()),
        hidden=(str(repo), str(REPO_ROOT), str(root), str(Path.home()), *job.hidden),
        env=env | ({"HF_HOME": hf_home} if Path(hf_home).exists() else {}),
        memory_mb=job.limits.memory_mb if job.device == "cpu" else 0,
        cpu_seconds=2 * job.limits.notebook_timeout * max(1, job.threads),
        processes=job.limits.processes,
        gpu=job.device == "cuda",
    )
    prepare_dirs(policy)
    policy_file = root / "sandbox.json"
    policy.save(policy_file)
    config.KernelManager.transport = "ipc"  # Unix sockets reach into the network-less sandbox; TCP cannot
    config.KernelManager.ip = str(root / "runtime" / "kernel")
    argv = [sys.executable, "-m", "autograder.sandbox", str(policy_file), "{connection_file}"]
    return env, argv, config


_assignment_gradebooks: dict[tuple[str, int], Path] = {}


def assignment_gradebook(lab: Lab) -> Path:
    """A gradebook holding only ``lab``'s assignment (notebooks, graded cells, points, checksums), built once per
    process and source version. Each submission's course starts from a copy of it: nbgrader's generate_assignment,
    which this replaces, was most of the per-submission overhead (about 3 s)."""
    key = (str(lab.source.resolve()), lab.source.stat().st_mtime_ns)
    if key not in _assignment_gradebooks or not _assignment_gradebooks[key].is_file():
        root = Path(tempfile.mkdtemp(prefix="posttrain-gradebook-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        config = Config()
        config.GenerateAssignment.no_database = False
        config.SaveCells.enabled = True
        with nbgrader_course(root, lab.name, lab.source, config=config) as api:
            check(api.generate_assignment(lab.name, force=True, create=True), f"generate_assignment {lab.name}")
        _assignment_gradebooks[key] = root / "gradebook.db"
    return _assignment_gradebooks[key]


def _autograde(
    job: GradeJob, source: nbformat.NotebookNode, submitted_notebook: nbformat.NotebookNode
) -> tuple[float, dict[str, float], str, str, dict[str, str], list[dict[str, str]]]:
    """Run nbgrader autograde in a fresh course; return (score, score per grade_id, remarks, notebook, kept files,
    flags of the static screen and the kernel guard)."""
    source_ids = graded_cell_ids(source)
    submitted_ids = set(graded_cell_ids(submitted_notebook))
    released = f"labs/{job.lab.name}.ipynb"
    if not submitted_ids & set(source_ids):
        raise Rejected(
            NO_NBGRADER_METADATA,
            f"the notebook has none of the nbgrader cell metadata of {released}, so its answers and tests cannot be "
            f"matched. The notebook must be downloaded from the released {released} and worked in directly, not "
            "copied into a fresh notebook (`python -m autograder collect` repairs partly stripped metadata).",
        )
    name = job.lab.name
    with course_workdir(job.lab.repo, f"grade/{name}/{job.student}") as root:
        shutil.copyfile(assignment_gradebook(job.lab), root / "gradebook.db")
        kernel_env, kernel_argv, config = kernel_settings(job, root, source)
        runtime = {"JUPYTER_RUNTIME_DIR": str(root / "runtime")}
        with (
            mock.patch.dict(os.environ, runtime),
            nbgrader_course(
                root,
                name,
                job.lab.source,
                timeout=job.limits.cell_timeout,
                kernel_env=kernel_env,
                kernel_argv=kernel_argv,
                config=config,
            ) as api,
        ):
            submitted = root / "submitted" / NBGRADER_STUDENT / name / f"{name}.ipynb"
            submitted.parent.mkdir(parents=True)
            nbformat.write(submitted_notebook, submitted)
            check(api.autograde(name, NBGRADER_STUDENT, force=True, create=True), f"autograde {name}")
            with Gradebook(api.coursedir.db_url) as gb:
                submission = gb.find_submission(name, NBGRADER_STUDENT)
                grades = [grade for notebook in submission.notebooks for grade in notebook.grades]
                scores = {grade.name: grade.score for grade in grades}
                manual = [grade.name for grade in grades if grade.needs_manual_grade]
                score = submission.score
        notebook_dir = root / "autograded" / NBGRADER_STUDENT / name
        autograded = (notebook_dir / f"{name}.ipynb").read_text(encoding="utf-8")
        kept, unkept = kept_files(root / "scratch" if job.sandbox else notebook_dir, job.keep)
    missing = [grade_id for grade_id in source_ids if grade_id not in submitted_ids]
    executed = nbformat.reads(autograded, as_version=4)
    remarks = skipped_cells(executed)
    flags = [flag.as_dict() for flag in screen_notebook(submitted_notebook, source)]
    flags += executed.metadata.get("autograder", {}).get("flags", [])
    if missing:
        remarks.append(f"cells missing from the submission: {', '.join(missing)}")
    if manual:
        remarks.append(f"needs manual grading: {', '.join(manual)}")
    remarks += unkept
    ordered = {grade_id: scores[grade_id] for grade_id in source_ids if grade_id in scores}
    return score, ordered, "; ".join(remarks), autograded, kept, flags


KEPT_FILE_BYTES = 1_000_000


def kept_files(workdir: Path, patterns: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """The text of each regular file under ``workdir`` matching one of ``patterns`` (relative paths as keys), and a
    remark for each match not kept. The kernel wrote these files, so a link (which could point at a file only the
    grader may read), a file over ``KEPT_FILE_BYTES`` or one that is not UTF-8 text is reported, never read."""
    kept, remarks = {}, []
    for pattern in patterns:
        for path in sorted(workdir.glob(pattern)):
            relative = path.relative_to(workdir)
            folders = [workdir / folder for folder in relative.parents if folder != Path(".")]
            if path.is_symlink() or not path.is_file() or any(folder.is_symlink() for folder in folders):
                remarks.append(f"{relative} not kept: not a regular file")
            elif path.stat().st_size > KEPT_FILE_BYTES:
                remarks.append(f"{relative} not kept: larger than {KEPT_FILE_BYTES} bytes")
            else:
                try:
                    kept[relative.as_posix()] = path.read_text(encoding="utf-8")
                except UnicodeDecodeError:
                    remarks.append(f"{relative} not kept: not UTF-8 text")
    return kept, remarks


def skipped_cells(notebook: nbformat.NotebookNode) -> list[str]:
    """One remark per cell the grader skipped or stopped (kernel death, timeout, time limit), for the status."""
    remarks = []
    for index, cell in enumerate(notebook.cells):
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") != "error":
                continue
            message = output.get("evalue", "")
            if output.get("ename") == "AutograderError" or message.startswith("autograder: "):
                label = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index + 1}"
                remarks.append(f"{label}: {message.removeprefix('autograder: ').split('. It was')[0]}")
                break
    return remarks


def with_limits(jobs: list[GradeJob], **changes) -> list[GradeJob]:
    """Return ``jobs`` with their ``Limits`` fields replaced by ``changes`` (None values are ignored)."""
    changes = {key: value for key, value in changes.items() if value is not None}
    return [replace(job, limits=replace(job.limits, **changes)) for job in jobs]


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
