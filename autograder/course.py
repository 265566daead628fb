"""Where the course lives: the repo root, its labs, and nbgrader work directories outside the repo.

The repo keeps nbgrader *source* notebooks in ``solutions/`` and the generated student notebooks in ``labs/``;
a lab's name (its nbgrader assignment id) is the file stem, e.g. ``01_finetune_and_forget``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbgrader import utils as nbgrader_utils

REPO_ROOT = Path(__file__).resolve().parents[1]
COURSE_DIR_ENV = "POSTTRAIN_COURSE_DIR"


class CourseError(Exception):
    """A problem the user has to fix (unknown lab, source without nbgrader metadata, ...)."""


@dataclass(frozen=True)
class Lab:
    """One lab: ``solutions/<name>.ipynb`` (nbgrader source) released as ``labs/<name>.ipynb``."""

    repo: Path
    name: str

    @property
    def source(self) -> Path:
        """The nbgrader source notebook (full solutions, hidden tests)."""
        return self.repo / "solutions" / f"{self.name}.ipynb"

    @property
    def release(self) -> Path:
        """The generated student notebook."""
        return self.repo / "labs" / f"{self.name}.ipynb"

    @property
    def study(self) -> str:
        """The module of the lab's experiment, named after it: ``posttrain.studies.finetune_and_forget`` for
        ``01_finetune_and_forget``."""
        return f"posttrain.studies.{self.name.split('_', 1)[1]}"


def all_labs(repo: Path) -> list[Lab]:
    """Return every lab with a source notebook in ``solutions/``, sorted by name."""
    return [Lab(repo, path.stem) for path in sorted((repo / "solutions").glob("*.ipynb"))]


def resolve_lab(repo: Path, spec: str) -> Lab:
    """Return the lab named by ``spec``: a number prefix (``01``), a full name, or a path to either notebook."""
    name = Path(spec).name.removesuffix(".ipynb")
    labs = all_labs(repo)
    matches = [lab for lab in labs if lab.name == name] or [lab for lab in labs if lab.name.startswith(f"{name}_")]
    if len(matches) != 1:
        known = ", ".join(lab.name for lab in labs) or "none"
        problem = "is ambiguous" if matches else "matches no notebook"
        raise CourseError(f"lab {spec!r} {problem} in {repo / 'solutions'} (labs: {known})")
    return matches[0]


def graded_cell_ids(nb: nbformat.NotebookNode) -> list[str]:
    """Return the nbgrader ``grade_id`` of every answer, test and task cell, in notebook order."""
    return [
        cell.metadata.nbgrader["grade_id"]
        for cell in nb.cells
        if nbgrader_utils.is_grade(cell) or nbgrader_utils.is_solution(cell) or nbgrader_utils.is_task(cell)
    ]


def read_source(path: Path) -> nbformat.NotebookNode:
    """Read an nbgrader source notebook, raising ``CourseError`` if it has no nbgrader cell metadata."""
    if not path.is_file():
        raise CourseError(f"source notebook {path} does not exist")
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as exc:
        raise CourseError(f"source notebook {path} is not a readable notebook: {exc}") from exc
    if not graded_cell_ids(nb):
        raise CourseError(
            f"{path} has no nbgrader metadata: none of its cells is an autograded answer, test or task cell. "
            "Mark the cells with the nbgrader 'Create Assignment' cell toolbar, or add `metadata.nbgrader` "
            "(grade, solution, locked, grade_id, points, schema_version) to each graded cell."
        )
    return nb


@contextmanager
def course_workdir(repo: Path, label: str) -> Iterator[Path]:
    """Yield an empty directory for an nbgrader course (gradebook, submitted/, autograded/, ...).

    With ``$POSTTRAIN_COURSE_DIR`` set it is ``$POSTTRAIN_COURSE_DIR/<label>`` and is kept afterwards for
    inspection; otherwise it is a temporary directory that is deleted. It is never inside the repo.
    """
    base = os.environ.get(COURSE_DIR_ENV)
    if not base:
        with tempfile.TemporaryDirectory(prefix="posttrain-course-") as tmp:
            yield Path(tmp)
        return
    root = Path(base).resolve() / label
    if root.is_relative_to(repo.resolve()):
        raise CourseError(f"${COURSE_DIR_ENV}={base} is inside the repo {repo}; point it outside the repo")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    yield root
