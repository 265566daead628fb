"""The course's nbgrader configuration, built in code, and the throwaway nbgrader course it runs in.

nbgrader works on a course directory laid out as ``<step>/<student>/<assignment>/<notebook>.ipynb``. This course
maps nbgrader's steps onto the repo like this:

* ``source``  -> ``solutions/`` (``solutions/<lab>.ipynb`` is copied to ``source/<lab>/<lab>.ipynb``)
* ``release`` -> ``labs/`` (``release/<lab>/<lab>.ipynb`` is copied back to ``labs/<lab>.ipynb``)
* ``submitted``, ``autograded``, ``feedback`` and ``gradebook.db`` exist only in the course work directory, a
  temporary directory or ``$POSTTRAIN_COURSE_DIR/...`` (see ``autograder.course.course_workdir``), never the repo.

Releasing skips the gradebook (like ``nbgrader generate_assignment --no-db``); grading builds one per submission.
"""

from __future__ import annotations

import json
import os
import re
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from ipykernel.kernelspec import write_kernel_spec
from nbgrader.apps import NbGraderAPI
from nbgrader.converters import Autograde
from nbgrader.preprocessors import Execute
from sqlalchemy.exc import SAWarning
from traitlets.config import Config

from autograder.execute import ResilientExecute

KERNEL_NAME = "python3"
# The last line of a traceback in nbgrader's captured log, which indents continuation lines by four spaces.
_EXCEPTION_LINE = re.compile(r"^ {4}([A-Za-z_][\w.]*: .*)$", re.MULTILINE)


class NbgraderError(Exception):
    """An nbgrader step failed; the message carries nbgrader's own error lines."""


def build_config(root: Path, *, timeout: int | None = None) -> Config:
    """Return the nbgrader config for a course rooted at ``root``.

    Without ``timeout`` the config is for releasing (no gradebook); with it, for autograding with that many seconds
    allowed per cell, executed by the ``python3`` kernel through ``autograder.execute.ResilientExecute``.
    """
    c = Config()
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.source_directory = "source"  # filled from solutions/
    c.CourseDirectory.release_directory = "release"  # copied back to labs/
    # Also drop JupyterLab's per-cell execution timestamps so released notebooks are reproducible.
    c.ClearOutput.remove_metadata_fields = {"collapsed", "scrolled", "execution", "ExecuteTime"}
    if timeout is None:
        c.GenerateAssignment.no_database = True
        c.SaveCells.enabled = False
    else:
        c.Execute.timeout = timeout
        c.Execute.kernel_name = KERNEL_NAME
        # Keep the execution time ResilientExecute records (the grading overhead benchmark reads it).
        c.ClearMetadataPreprocessor.preserve_nb_metadata_mask = {("language_info", "name"), ("autograder",)}
        c.Autograde.autograde_preprocessors = [
            ResilientExecute if step is Execute else step for step in Autograde.autograde_preprocessors.default()
        ]
    return c


def _stable_cell_ids(text: str) -> str:
    """Give cells without an ``id`` a positional one; nbformat would otherwise invent random ids."""
    nb = json.loads(text)
    if (nb.get("nbformat"), nb.get("nbformat_minor", 0)) < (4, 5):
        return text
    for index, cell in enumerate(nb.get("cells", [])):
        cell.setdefault("id", f"cell-{index}")
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def prepend_path(path: Path, variable: str) -> str:
    """Return the search path in environment ``variable`` with ``path`` put first."""
    return os.pathsep.join([str(path), *filter(None, os.environ.get(variable, "").split(os.pathsep))])


@contextmanager
def nbgrader_course(
    root: Path,
    assignment: str,
    source: Path,
    *,
    timeout: int | None = None,
    kernel_env: Mapping[str, str] | None = None,
    kernel_argv: list[str] | None = None,
    config: Config | None = None,
) -> Iterator[NbGraderAPI]:
    """Lay out an nbgrader course in the empty directory ``root`` and yield an ``NbGraderAPI`` for it.

    ``source`` becomes ``source/<assignment>/<assignment>.ipynb``. With ``timeout`` (grading) a ``python3``
    kernelspec is registered in the course and used for execution: ``kernel_argv`` (default: ``sys.executable``'s
    ipykernel) with ``kernel_env``. ``config`` is merged over the course config (e.g. execution limits).
    """
    notebook = root / "source" / assignment / f"{assignment}.ipynb"
    notebook.parent.mkdir(parents=True)
    notebook.write_text(_stable_cell_ids(source.read_text(encoding="utf-8")), encoding="utf-8")
    jupyter_dir = root / "jupyter"
    if timeout is not None:
        spec = {"env": dict(kernel_env or {})}
        if kernel_argv:  # a sandboxed kernel lives in its own session: interrupt it by message, not signal
            spec |= {"argv": kernel_argv, "interrupt_mode": "message"}
        write_kernel_spec(jupyter_dir / "kernels" / KERNEL_NAME, overrides=spec)
    course_config = build_config(root, timeout=timeout)
    course_config.merge(config or Config())
    env = {
        # nbgrader shells out to `alembic` when it creates a gradebook: it must be on PATH even without an
        # activated venv.
        "PATH": prepend_path(Path(sys.executable).parent, "PATH"),
        # Our kernelspec shadows any other `python3` kernel (e.g. one in ~/.local/share/jupyter).
        "JUPYTER_PATH": prepend_path(jupyter_dir, "JUPYTER_PATH"),
    }
    with mock.patch.dict(os.environ, env), warnings.catch_warnings():
        warnings.simplefilter("ignore", SAWarning)  # nbgrader's gradebook code trips SQLAlchemy 2 warnings
        yield NbGraderAPI(config=course_config)


def check(result: Mapping[str, object], step: str) -> None:
    """Raise ``NbgraderError`` naming the underlying exceptions if an ``NbGraderAPI`` call result reports failure.

    nbgrader logs the real traceback and then raises a generic "see the above traceback"; the cause is in the log.
    """
    if result["success"]:
        return
    log = str(result.get("log", ""))
    causes = list(dict.fromkeys(_EXCEPTION_LINE.findall(log)))
    if not causes:
        errors = [line.removeprefix("[ERROR] ") for line in log.splitlines() if line.startswith("[ERROR]")]
        causes = errors[:1] or str(result.get("error", "no details")).strip().splitlines()[-1:]
    raise NbgraderError(f"nbgrader {step} failed: {'; '.join(causes)}")
