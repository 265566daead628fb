"""The student install suffices: a fresh virtual environment with only what a notebook's setup cell installs (the
course package and its own dependencies, at the lock's versions) runs Lab 01 on the tiny profile end to end, and
holds none of the grader's or a notebook server's packages (which Colab pins and must not see replaced). The lab runs
its main fine-tuning run only (``SWEEP_LRS = [0.001]``, the main run's rate, injected as papermill would): the sweep's
other runs execute the same code, and the whole notebook runs once per test run, in ``test_lab01_claims.py``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
GRADER_ONLY = ("nbgrader", "papermill", "dask", "nbformat", "nbclient", "ipykernel", "IPython", "notebook", "pytest")

pytestmark = pytest.mark.slow


def run(*command: str | Path, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, **kwargs)
    shown = " ".join(map(str, command))
    assert result.returncode == 0, f"{shown} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def notebook_as_script(path: Path, parameters: str = "") -> str:
    """Every code cell of a solution notebook, in order, with ``parameters`` after its parameters cell (as papermill
    injects them): the lab as a plain Python program (no IPython needed)."""
    cells = []
    for cell in nbformat.read(path, as_version=4).cells:
        if cell.cell_type == "code":
            cells.append(cell.source)
            if "parameters" in cell.metadata.get("tags", []):
                cells.append(parameters)
    return "\n\n".join(cells)


def test_the_student_install_runs_lab_01_on_the_tiny_profile(tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    pip, python = venv / "bin" / "pip", venv / "bin" / "python"
    run(ROOT / ".ci" / "install-torch", pip, LOCK)
    source = tmp_path / "source"  # a copy: a regular build writes build/ into the tree it builds
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "results", "*.egg-info"))
    run(pip, "install", "--quiet", "-c", LOCK, source)  # a regular (non-editable) install, as from the git URL
    found = run(python, "-c", f"import importlib.util as u; print([m for m in {GRADER_ONLY!r} if u.find_spec(m)])")
    assert found.stdout.strip() == "[]", f"the student install pulled in grader packages: {found.stdout}"

    work = tmp_path / "lab"
    work.mkdir()
    lab01 = notebook_as_script(ROOT / "solutions" / "01_finetune_and_forget.ipynb", parameters="SWEEP_LRS = [0.001]")
    (work / "lab01.py").write_text(lab01)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env |= {"POSTTRAIN_PROFILE": "tiny", "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    lab = run(python, "lab01.py", cwd=work, env=env, timeout=900)
    assert "the course package is installed" in lab.stdout and str(venv) in lab.stdout  # not the repo's copy
    results = json.loads((work / "results" / "01.json").read_text())
    assert (results["profile"], results["lr"]) == ("tiny", 0.001)
    assert results["accuracy_after"]["new"] >= 0.9, f"Lab 01's new task was not learned: {results['accuracy_after']}"
