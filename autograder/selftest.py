"""``python -m autograder selftest``: grade a generated class per lab and check every grade.

The class: the solution (full marks), the blank release (0), the lab solved but for its last task
(the honest part), and one submission per attack of ``autograder.attacks`` (the honest part's score,
and nothing hidden in any output). It goes through the same path as a real class: ``collect`` (which
repairs stripped metadata), then ``grade`` on dask with the sandbox, then ``report``.
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import nbformat

from autograder.attacks import ATTACKS, BREACH_MARKERS, expected_score, solved_release, write_attack
from autograder.collect import collect
from autograder.course import Lab, read_source
from autograder.grade import GRADED, UNREADABLE, Limits, find_submissions
from autograder.options import job_settings, run_grading
from autograder.release import release
from autograder.report import hidden_lines, write_report
from autograder.scheduler import ResultStore


@dataclass(frozen=True)
class Expectation:
    """What one submission of the self-test class must get."""

    student: str
    status: str
    score: float | None
    flagged: bool = False  # the report must list flags for it (and for no other submission)


def write_class(lab: Lab, folder: Path) -> list[Expectation]:
    """Write the self-test class of ``lab`` into ``folder``, one ``<student>.ipynb`` each; return what each gets."""
    folder.mkdir(parents=True, exist_ok=True)
    source = read_source(lab.source)
    full = float(sum(cell.metadata.get("nbgrader", {}).get("points", 0) for cell in source.cells))
    honest = expected_score(lab)
    nbformat.write(solved_release(lab), folder / "correct.ipynb")
    nbformat.write(nbformat.read(lab.release, as_version=4), folder / "blank.ipynb")
    answers = [
        c.metadata["nbgrader"]["grade_id"] for c in source.cells if c.metadata.get("nbgrader", {}).get("solution")
    ]
    nbformat.write(solved_release(lab, skip=(answers[-1],)), folder / "partial.ipynb")
    expected = [Expectation("correct", GRADED, full), Expectation("blank", GRADED, 0.0)]
    expected.append(Expectation("partial", GRADED, honest))
    for attack in ATTACKS:
        write_attack(lab, attack, folder / f"{attack.name}.ipynb")
        expected.append(
            Expectation(
                attack.name,
                UNREADABLE if attack.unreadable else GRADED,
                None if attack.unreadable else honest,
                attack.flagged,
            )
        )
    return expected


def attack_limits(jobs: list, base: Limits) -> list:
    """Give each attack's job the limits that attack tests (on top of ``base``)."""
    by_name = {attack.name: attack.limits for attack in ATTACKS}
    return [replace(job, limits=replace(base, **by_name.get(job.student, {}))) for job in jobs]


def leaks(lab: Lab, grading: Path, student: str) -> list[str]:
    """What got out for ``student``: attack markers in the graded notebook's outputs, and hidden-test lines in the
    feedback page students see (the graded notebook itself is the instructor's and holds the hidden tests)."""
    found = []
    notebook = grading / "autograded" / f"{student}.ipynb"
    if notebook.is_file():
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
        outputs = json.dumps([cell.get("outputs", []) for cell in cells])
        found += [marker for marker in BREACH_MARKERS if marker in outputs]
    feedback = grading / "feedback" / f"{student}.html"
    if feedback.is_file():
        page = html.unescape(feedback.read_text(encoding="utf-8"))
        found += [f"hidden test line {line!r}" for line in hidden_lines(read_source(lab.source)) if line in page]
    return found


def check_class(lab: Lab, expected: list[Expectation], grading: Path) -> list[tuple[str, str, str, bool]]:
    """Compare the grading folder with ``expected``: (student, expected, got, ok) per submission."""
    latest = ResultStore(lab, grading).latest()
    rows = []
    for want in expected:
        got = latest.get(want.student, {"status": "missing", "score": None, "reason": "no result"})
        found = leaks(lab, grading, want.student)
        flagged = bool(got.get("flags"))
        ok = got["status"] == want.status and got["score"] == want.score and not found and flagged == want.flagged
        detail = (
            f"{got['status']} {got['score']}" + (" flagged" if flagged else "") + (f" LEAKED {found}" if found else "")
        )
        wanted = f"{want.status} {want.score}" + (" flagged" if want.flagged else "")
        rows.append((want.student, wanted, detail + f" {got.get('reason', '')}".rstrip(), ok))
    return rows


def run_selftest(labs: list[Lab], work: Path, args: argparse.Namespace) -> int:
    """Self-test every lab; print a table per lab; return 0 when every check passes."""
    failed = 0
    release(labs)
    for lab in labs:
        root = work / lab.name
        shutil.rmtree(root, ignore_errors=True)
        expected = write_class(lab, root / "raw")
        collect(root / "raw", lab, root / "collected")
        settings = job_settings(args, (str(root),))
        jobs = find_submissions(root / "collected", lab, limits=Limits.for_lab(lab), **settings)
        run_grading(lab, attack_limits(jobs, Limits.for_lab(lab)), root / "grading", args)
        write_report(lab, root / "grading", root / "grading")
        rows = check_class(lab, expected, root / "grading")
        print(f"\nselftest {lab.name}:")
        for student, want, got, ok in rows:
            print(f"  {'ok  ' if ok else 'FAIL'} {student:28} expected {want:14} got {got}")
        failed += sum(not ok for *_, ok in rows)
    print(f"\nselftest: {'all checks passed' if not failed else f'{failed} check(s) FAILED'}")
    return 0 if not failed else 1
