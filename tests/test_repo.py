"""Repository contracts: labs/ is generated from solutions/, dependencies are mirrored and locked, CI runs the README's
test command, every solution notebook carries nbgrader metadata and a papermill parameters cell."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import tomllib
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from autograder.__main__ import main
from posttrain.core.profiles import PROFILES
from posttrain.world.hub import HUB_DATASETS

ROOT = Path(__file__).resolve().parents[1]


def test_labs_are_generated_from_solutions(capsys):
    assert main(["release", "all", "--check"]) == 0, capsys.readouterr().err


def declared_requirements() -> list[Requirement]:
    """What ``make env`` installs: the student install, the grader's and the developer's extras (the ``dev`` extra
    names the grader's through ``posttrain-course[grader]``)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert "posttrain-course[grader]" in extras["dev"], "the developer install must include the grader's"
    listed = [*project["dependencies"], *extras["grader"], *extras["dev"]]
    return [Requirement(r) for r in listed if canonicalize_name(Requirement(r).name) != "posttrain-course"]


def test_the_student_install_holds_no_grader_or_notebook_server_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    student = sorted(canonicalize_name(Requirement(r).name) for r in project["dependencies"])
    labs_import = [
        "datasets",
        "jiwer",
        "matplotlib",
        "numpy",
        "peft",
        "pyyaml",
        "safetensors",
        "scikit-learn",
        "tokenizers",
        "torch",
        "tqdm",
    ]
    assert student == sorted([*labs_import, "transformers"])


def test_environment_yml_mirrors_pyproject_lower_bounds():
    py311 = {"python_version": "3.11", "python_full_version": "3.11.0"}  # environment.yml's Python
    wanted = {str(r) for r in declared_requirements() if r.marker is None or r.marker.evaluate(py311)}
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


def lock_pins(text: str) -> dict[str, list[tuple[str, str, set[str]]]]:
    """``requirements.lock`` as {package: [(version, marker, packages it is required by)]}."""
    pins: dict[str, list[tuple[str, str, set[str]]]] = {}
    current: set[str] = set()
    for line in text.splitlines():
        pin = re.match(r"^([A-Za-z0-9][\w.-]*)==([^\s;]+)\s*(?:;\s*(.*))?$", line)
        if pin:
            current = set()
            pins.setdefault(canonicalize_name(pin[1]), []).append((pin[2], pin[3] or "", current))
        elif via := re.match(r"^\s+#\s+(?:via\s+)?(\S.*?)\s*$", line):
            current.add(via[1].split(" (")[0])
    return pins


def test_the_lock_pins_every_dependency_within_pyproject_bounds_for_python_3_10_to_3_12():
    wanted = declared_requirements()
    pins = lock_pins((ROOT / "requirements.lock").read_text())
    for python in ("3.10", "3.11", "3.12"):
        env = {
            "python_version": python,
            "python_full_version": f"{python}.0",
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
            "os_name": "posix",
        }
        for requirement in wanted:
            if requirement.marker is not None and not requirement.marker.evaluate(env):
                continue
            name = canonicalize_name(requirement.name)
            chosen = [
                version for version, marker, _ in pins.get(name, []) if not marker or Marker(marker).evaluate(env)
            ]
            assert len(chosen) == 1, f"the lock pins {name} {len(chosen)} times for Python {python}; run `make lock`"
            assert requirement.specifier.contains(chosen[0], prereleases=True), (
                f"the lock pins {name}=={chosen[0]} outside pyproject's {requirement}; run `make lock`"
            )
    direct = {name for name, entries in pins.items() if any("posttrain-course" in via for *_, via in entries)}
    assert direct == {canonicalize_name(r.name) for r in wanted}, "pyproject.toml changed since `make lock`"


def test_the_lock_pins_the_torch_release_that_install_torch_installs():
    inputs = (ROOT / ".ci" / "lock-inputs.txt").read_text()
    torch_pin = re.search(r"^torch==(\S+)$", inputs, flags=re.MULTILINE)[1]
    assert [version for version, *_ in lock_pins((ROOT / "requirements.lock").read_text())["torch"]] == [torch_pin]
    makefile = (ROOT / "Makefile").read_text()
    assert ".ci/install-torch $(BIN)/pip $(LOCK)" in makefile and 'pip install -c $(LOCK) -e ".[dev]"' in makefile


def test_every_model_and_hub_dataset_names_its_licence_in_the_readme_and_the_lab_docs():
    rows = [line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("| ")]
    named = [(d.hub_id, d.licence) for d in HUB_DATASETS]
    named += [(m, p.licence) for p in PROFILES.values() for m in (p.chat_model, p.base_model)]
    for name, licence in named:
        assert any(f"`{name}`" in row and licence in row for row in rows), (
            f"README's data table lacks {name}: {licence}"
        )
    for doc in sorted((ROOT / "docs" / "labs").glob("*.md")):
        text = doc.read_text()
        for name, licence in named:
            if f"`{name}`" in text:
                assert licence in text, f"{doc.name} uses {name} without naming its licence ({licence})"
        assert PROFILES["colab"].licence in text, f"{doc.name} does not name the colab model's licence"
