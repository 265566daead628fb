"""The course's address lives in one place (pyproject.toml, ``[tool.posttrain-course]``) and ``release`` stamps it into
every notebook's setup cell and Colab link and into the README; ``release --check`` catches drift."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from autograder.__main__ import main
from autograder.address import SETUP_LINE, CourseAddress, course_address
from autograder.course import CourseError, all_labs

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def addresses_in(text: str) -> set[str]:
    """Every install line's package and every Colab link to a lab in ``text`` (a notebook's JSON or the README)."""
    installs = re.findall(r'COURSE_PACKAGE = \\?"([^"\\]+)', text)
    links = re.findall(r"https://colab\.research\.google\.com/github/[^)\s\"\\]+/labs/[\w.-]+\.ipynb", text)
    return set(installs) | set(links)


def test_every_notebook_and_the_readme_carry_the_configured_address():
    address = course_address(ROOT)
    assert address == CourseAddress("posttrain-course", "posttrain-course", "main")
    readme = (ROOT / "README.md").read_text()
    for lab in all_labs(ROOT):
        for path in (lab.source, lab.release):
            nb = nbformat.read(path, as_version=4)
            setup = [c for c in nb.cells if c.cell_type == "code" and SETUP_LINE.search(c.source)]
            assert len(setup) == 1, f"{path} needs exactly one setup cell with COURSE_PACKAGE = ..."
            assert f'COURSE_PACKAGE = "{address.package}"' in setup[0].source
            assert address.colab_url(lab.name) in nb.cells[0].source, f"{path}: no Colab link in the title cell"
        assert f"({address.colab_url(lab.name)})" in readme, f"README lacks the Colab link of {lab.name}"


@pytest.fixture
def course(tmp_path: Path) -> Path:
    """A scratch copy of the course with Lab 01 only: pyproject.toml, README.md, its source, released."""
    repo = tmp_path / "course"
    (repo / "solutions").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copy(ROOT / "solutions" / "01_finetune_and_forget.ipynb", repo / "solutions")
    assert run_cli("--repo", str(repo), "release", "all")[0] == 0
    return repo


def test_changing_the_address_in_its_one_place_and_releasing_changes_every_copy(course):
    pyproject = course / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        .replace(
            '"https://github.com/posttrain-course/posttrain-course"', '"https://github.com/prof-x/forgetting-2027"'
        )
        .replace('ref = "main"', 'ref = "spring-2027"')
    )
    code, _, err = run_cli("--repo", str(course), "release", "all", "--check")
    assert code == 1
    assert "stale: solutions/01_finetune_and_forget.ipynb carries another course address" in err
    assert "stale: README.md carries another course address" in err

    code, out, _ = run_cli("--repo", str(course), "release", "all")
    assert code == 0 and "stamped the course address: README.md" in out
    fork = {
        "git+https://github.com/prof-x/forgetting-2027@spring-2027",
        "https://colab.research.google.com/github/prof-x/forgetting-2027/blob/spring-2027/labs/"
        "01_finetune_and_forget.ipynb",
    }
    for path in (
        course / "solutions" / "01_finetune_and_forget.ipynb",
        course / "labs" / "01_finetune_and_forget.ipynb",
    ):
        assert addresses_in(path.read_text()) == fork, path
    assert fork - addresses_in((course / "README.md").read_text()) == {next(a for a in fork if a.startswith("git+"))}
    assert "posttrain-course/posttrain-course/blob/main/labs/01_" not in (course / "README.md").read_text()
    assert run_cli("--repo", str(course), "release", "all", "--check")[0] == 0


def test_a_repository_colab_cannot_open_is_refused(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[tool.posttrain-course]\nrepository = "https://gitlab.com/prof-x/course"\nref = "main"\n'
    )
    with pytest.raises(CourseError, match=r"needs repository = \"https://github.com/<owner>/<name>\""):
        course_address(tmp_path)
