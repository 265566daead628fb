"""Generate the student notebooks in ``labs/`` from the nbgrader sources in ``solutions/``."""

from __future__ import annotations

from pathlib import Path

from autograder.course import Lab, course_workdir, read_source
from autograder.nbgrader_config import check, nbgrader_course


def render_release(lab: Lab) -> bytes:
    """Return the bytes of the student notebook nbgrader's generate_assignment makes from ``lab.source``.

    Solution regions become nbgrader's stub, hidden tests are removed, outputs are cleared; the result depends only
    on the source notebook, so releasing twice gives byte-identical files.
    """
    read_source(lab.source)
    with (
        course_workdir(lab.repo, f"release/{lab.name}") as root,
        nbgrader_course(root, lab.name, lab.source) as api,
    ):
        check(api.generate_assignment(lab.name, force=True, create=True), f"generate_assignment {lab.name}")
        return (root / "release" / lab.name / f"{lab.name}.ipynb").read_bytes()


def release(labs: list[Lab]) -> list[Path]:
    """Write ``labs/<name>.ipynb`` for each lab whose file is missing or differs; return the files written."""
    written = []
    for lab in labs:
        data = render_release(lab)
        if not lab.release.is_file() or lab.release.read_bytes() != data:
            lab.release.parent.mkdir(parents=True, exist_ok=True)
            lab.release.write_bytes(data)
            written.append(lab.release)
    return written


def stale_releases(labs: list[Lab]) -> list[Path]:
    """Return the ``labs/`` files that are missing or differ from what ``release`` would write."""
    return [lab.release for lab in labs if not lab.release.is_file() or lab.release.read_bytes() != render_release(lab)]
