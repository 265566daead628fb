"""Generate the student notebooks in ``labs/`` from the nbgrader sources in ``solutions/``, after stamping the course's
address into the sources and the README (``autograder.address``)."""

from __future__ import annotations

from pathlib import Path

from autograder.address import stamped_files
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
    """Stamp the course's address into the sources and the README, then write ``labs/<name>.ipynb`` for each lab
    whose file is missing or differs; return the files written."""
    written = []
    for path, text in stamped_files(labs).items():
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for lab in labs:
        data = render_release(lab)
        if not lab.release.is_file() or lab.release.read_bytes() != data:
            lab.release.parent.mkdir(parents=True, exist_ok=True)
            lab.release.write_bytes(data)
            written.append(lab.release)
    return written


def stale_releases(labs: list[Lab]) -> list[Path]:
    """Return the files ``release`` would change: sources or README carrying another address than the configured
    one, and ``labs/`` files that are missing or differ from what nbgrader generates."""
    stale = list(stamped_files(labs))
    if stale:
        return stale + [lab.release for lab in labs]  # generated from sources that are about to change
    return [lab.release for lab in labs if not lab.release.is_file() or lab.release.read_bytes() != render_release(lab)]
