"""Repository contracts: labs/ is generated from solutions/, dependencies are mirrored, CI runs the README's
test command, every solution notebook carries nbgrader metadata and a papermill parameters cell."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import tomllib

from autograder.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def test_labs_are_generated_from_solutions(capsys):
    assert main(["release", "all", "--check"]) == 0, capsys.readouterr().err


def test_environment_yml_mirrors_pyproject_lower_bounds():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(pyproject["dependencies"]) | set(pyproject["optional-dependencies"]["dev"])
    env = (ROOT / "environment.yml").read_text()
    listed = set(re.findall(r"^\s+- ([a-z][\w\[\]-]*>=[\w.]+)\s*$", env, flags=re.MULTILINE))
    assert listed == wanted


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_solution_notebooks_are_graded_sources_with_parameters():
    for path in sorted((ROOT / "solutions").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        tests = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        assert sum(c.metadata["nbgrader"]["points"] for c in tests) == 100, path.name
        assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells), path.name
        assert all(c.outputs == [] for c in nb.cells if c.cell_type == "code"), f"{path.name} has stored outputs"
