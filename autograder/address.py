"""Where students install the course from: one address, stamped into every notebook and the README.

``pyproject.toml`` holds it (``[tool.posttrain-course]``: ``repository``, a github.com URL, and ``ref``, a branch or
tag); an instructor's fork changes those two lines and runs ``python -m autograder release``. Release writes:

- into each solution notebook's setup cell, the line ``COURSE_PACKAGE = "git+<repository>@<ref>"`` (and from there
  into the student notebook nbgrader generates);
- into each notebook's markdown and into the README, every "Open in Colab" link of that lab:
  ``https://colab.research.google.com/github/<owner>/<name>/blob/<ref>/labs/<lab>.ipynb``;
- into the README, every ``git+https://github.com/...@<ref>`` install command.

``release --check`` reports a notebook or README whose address differs from the configured one.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, from PyPI (a dependency of the grader on 3.10)
    import tomli as tomllib

from autograder.course import CourseError, Lab

SETUP_LINE = re.compile(r'^COURSE_PACKAGE = "[^"\n]*"$', re.MULTILINE)
COLAB = "https://colab.research.google.com/github/"
_GIT_INSTALL = re.compile(r"git\+https://github\.com/[\w.-]+/[\w.-]+@[\w./-]+")
_GITHUB = re.compile(r"https://github\.com/(?P<owner>[\w.-]+)/(?P<name>[\w.-]+?)(?:\.git)?/?")


@dataclass(frozen=True)
class CourseAddress:
    """The course repository on GitHub and the branch or tag students install and open."""

    owner: str
    name: str
    ref: str

    @property
    def repository(self) -> str:
        return f"https://github.com/{self.owner}/{self.name}"

    @property
    def package(self) -> str:
        """What the setup cell installs with pip."""
        return f"git+{self.repository}@{self.ref}"

    def colab_url(self, lab: str) -> str:
        """The link that opens ``labs/<lab>.ipynb`` of this repository and ref in Colab."""
        return f"{COLAB}{self.owner}/{self.name}/blob/{self.ref}/labs/{lab}.ipynb"


def course_address(repo: Path) -> CourseAddress | None:
    """The address configured in ``repo/pyproject.toml`` (``[tool.posttrain-course]``), or None if it has none."""
    pyproject = repo / "pyproject.toml"
    if not pyproject.is_file():
        return None
    table = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("tool", {}).get("posttrain-course")
    if table is None:
        return None
    repository, ref = table.get("repository", ""), table.get("ref", "")
    match = _GITHUB.fullmatch(repository)
    if match is None or not ref:
        raise CourseError(
            f'{pyproject}: [tool.posttrain-course] needs repository = "https://github.com/<owner>/<name>" (Colab '
            f"opens notebooks from GitHub) and ref = a branch or tag; got repository={repository!r}, ref={ref!r}"
        )
    return CourseAddress(match["owner"], match["name"], ref)


def _colab_link(lab: str) -> re.Pattern[str]:
    """Any Colab link to ``labs/<lab>.ipynb``, whatever repository and ref it names."""
    return re.compile(re.escape(COLAB) + r"[^)\s\"']*/labs/" + re.escape(lab) + r"\.ipynb")


def stamp_notebook(nb: nbformat.NotebookNode, address: CourseAddress, lab: str) -> nbformat.NotebookNode:
    """A copy of ``nb`` whose setup line installs ``address.package`` and whose Colab links open ``lab`` there."""
    nb = copy.deepcopy(nb)
    link = _colab_link(lab)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = SETUP_LINE.sub(f'COURSE_PACKAGE = "{address.package}"', cell.source)
        elif cell.cell_type == "markdown":
            cell.source = link.sub(address.colab_url(lab), cell.source)
    return nb


def stamp_readme(text: str, address: CourseAddress, labs: list[Lab]) -> str:
    """``text`` with each lab's Colab link and every ``git+https://github.com/...@ref`` install pointing at
    ``address``."""
    text = _GIT_INSTALL.sub(address.package, text)
    for lab in labs:
        text = _colab_link(lab.name).sub(address.colab_url(lab.name), text)
    return text


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """A notebook serialised as this repository stores it (nbformat's layout and a final newline)."""
    return nbformat.writes(nb) + "\n"


def stamped_files(labs: list[Lab]) -> dict[Path, str]:
    """Every file whose address is stale, mapped to its stamped text: the labs' source notebooks and the README."""
    if not labs:
        return {}
    repo = labs[0].repo
    address = course_address(repo)
    if address is None:
        return {}
    stale = {}
    for lab in labs:
        text = lab.source.read_text(encoding="utf-8")
        stamped = notebook_text(stamp_notebook(nbformat.reads(text, as_version=4), address, lab.name))
        if stamped != text:
            stale[lab.source] = stamped
    readme = repo / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        if (stamped := stamp_readme(text, address, labs)) != text:
            stale[readme] = stamped
    return stale
