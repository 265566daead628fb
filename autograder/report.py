"""Reports on one graded lab: a grade sheet, a per-test failure table and a feedback page per student.

``write_report`` reads a grading folder (``results.jsonl``, whose last line per student wins, and
``autograded/<student>.ipynb``) and writes ``grades.csv``, ``failures.csv``, ``flags.csv`` and
``feedback/<student>.html``.
Feedback pages never show test-cell source: a failed test shows only ``ename: evalue``, and any line of that
message quoting a line of a hidden test is replaced by a placeholder.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import nbformat
from nbgrader import utils as nbgrader_utils

from autograder.course import CourseError, Lab, read_source
from autograder.grade import GRADED

HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
REDACTED = "[line withheld: it quotes a hidden test]"
MIN_QUOTED = 8  # hidden-test lines shorter than this (``else:``, ``pass``) are too generic to redact on
STYLE = (
    "body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
    "pre{background:#f6f6f6;padding:.5em;overflow-x:auto;white-space:pre-wrap;margin:0}"
    ".pass{color:#17692b}.fail{color:#a31515}"
)


@dataclass(frozen=True)
class ReportPaths:
    """Where ``write_report`` put its output."""

    grades: Path
    failures: Path
    feedback: Path  # folder of <student>.html
    flags: Path  # one row per flag the static screen or the kernel guard raised, for the instructor to review


@dataclass(frozen=True)
class StudentResult:
    """One student's latest line of ``results.jsonl``."""

    student: str
    status: str
    score: float | None = None
    max_score: float | None = None
    grades: dict[str, float | None] = field(default_factory=dict)
    reason: str = ""
    repairs: list[str] = field(default_factory=list)
    flags: list[dict[str, str]] = field(default_factory=list)  # {"cell": grade_id, "flag": what was seen}


@dataclass(frozen=True)
class LabInfo:
    """What a report needs from the lab: graded cells with points, answer cells, and hidden-test lines."""

    name: str
    points: dict[str, float]  # grade_id -> points of every graded cell, in release order
    answers: list[str]  # grade_id of every answer cell, in release order
    hidden: frozenset[str]  # stripped lines of the hidden tests, at least MIN_QUOTED long


@dataclass(frozen=True)
class FailureRow:
    """How one graded cell fared across the graded students."""

    grade_id: str
    points: float
    graded: int
    failing: int
    message: str  # the most common first line of ``ename: evalue`` among the failures
    message_count: int

    @property
    def share(self) -> float | None:
        """The fraction of graded students failing this cell, ``None`` when nobody was graded."""
        return self.failing / self.graded if self.graded else None


def _fmt(value: float | None) -> str:
    """Format a number: ``10`` or ``7.5``, empty when there is none."""
    return "" if value is None else f"{value:g}"


def _number(record: dict, key: str) -> float | None:
    """Return ``record[key]`` as a float (``None`` if absent or null), raising ``ValueError`` if not a number."""
    value = record.get(key)
    if value is not None and not isinstance(value, int | float):
        raise ValueError(f"{key!r} must be a number or null, got {value!r}")
    return value


def _parse_result(line: str) -> StudentResult:
    """Parse one line of ``results.jsonl``, raising ``ValueError`` with what is wrong."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} at column {exc.colno}") from exc
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    student, status = record.get("student"), record.get("status")
    if not isinstance(student, str) or not student or student.startswith(".") or Path(student).name != student:
        raise ValueError(f"'student' must be a plain file name, got {student!r}")
    if not isinstance(status, str) or not status:
        raise ValueError(f"'status' must be a non-empty string, got {status!r}")
    grades, repairs, flags = record.get("grades") or {}, record.get("repairs") or [], record.get("flags") or []
    if not isinstance(grades, dict) or not isinstance(repairs, list) or not isinstance(flags, list):
        raise ValueError("'grades' must be an object, 'repairs' and 'flags' lists")
    if not all(isinstance(flag, dict) for flag in flags):
        raise ValueError("each of 'flags' must be an object with 'cell' and 'flag'")
    return StudentResult(
        student=student,
        status=status,
        score=_number(record, "score"),
        max_score=_number(record, "max_score"),
        grades={grade_id: _number(grades, grade_id) for grade_id in grades},
        reason=str(record.get("reason") or ""),
        repairs=[str(repair) for repair in repairs],
        flags=[{"cell": str(flag.get("cell", "")), "flag": str(flag.get("flag", ""))} for flag in flags],
    )


def read_results(path: Path) -> list[StudentResult]:
    """Return the latest result of every student in ``results.jsonl``, sorted by student.

    Blank lines are skipped; any other line that is not a valid result raises ``CourseError`` naming it.
    """
    if not path.is_file():
        raise CourseError(f"{path} does not exist: grade the lab first (python -m autograder grade LAB SUBMISSIONS)")
    latest: dict[str, StudentResult] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            result = _parse_result(line)
        except ValueError as exc:
            raise CourseError(
                f"{path}, line {number}: malformed result ({exc}). Fix or delete that line; re-grading the student "
                "appends a fresh one."
            ) from exc
        latest[result.student] = result
    return [latest[student] for student in sorted(latest)]


def hidden_lines(nb: nbformat.NotebookNode) -> frozenset[str]:
    """Return the stripped lines between ``### BEGIN HIDDEN TESTS`` and ``### END HIDDEN TESTS`` in ``nb``."""
    found, inside = set(), False
    for cell in nb.cells:
        for line in cell.source.splitlines():
            stripped = line.strip()
            if stripped in (HIDDEN_BEGIN, HIDDEN_END):
                inside = stripped == HIDDEN_BEGIN
            elif inside and len(stripped) >= MIN_QUOTED:
                found.add(stripped)
        inside = False
    return frozenset(found)


def lab_info(lab: Lab) -> LabInfo:
    """Read the lab's release (graded and answer cells) and source (hidden tests), raising ``CourseError``."""
    if not lab.release.is_file():
        raise CourseError(f"{lab.release} does not exist: release the lab first (python -m autograder release)")
    release = nbformat.read(lab.release, as_version=4)
    return LabInfo(
        name=lab.name,
        points={
            cell.metadata.nbgrader["grade_id"]: float(cell.metadata.nbgrader.get("points", 0))
            for cell in release.cells
            if nbgrader_utils.is_grade(cell)
        },
        answers=[cell.metadata.nbgrader["grade_id"] for cell in release.cells if nbgrader_utils.is_solution(cell)],
        hidden=hidden_lines(read_source(lab.source)),
    )


def _cells_by_id(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    """Return the cells of ``nb`` that have an nbgrader ``grade_id``, by grade_id."""
    return {
        cell.metadata.nbgrader["grade_id"]: cell for cell in nb.cells if "grade_id" in cell.metadata.get("nbgrader", {})
    }


def failure_messages(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Return ``ename: evalue`` of the first error output of each graded cell of an autograded notebook, if any."""
    messages = {}
    for grade_id, cell in _cells_by_id(nb).items():
        errors = [output for output in cell.get("outputs", []) if output.get("output_type") == "error"]
        if errors:
            ename, evalue = errors[0].get("ename", ""), errors[0].get("evalue", "")
            messages[grade_id] = f"{ename}: {evalue}" if evalue else ename
    return messages


def redact(text: str, hidden: frozenset[str]) -> str:
    """Replace every line of ``text`` that contains a hidden-test line with a placeholder."""
    return "\n".join(REDACTED if any(h in line for h in hidden) else line for line in text.splitlines())


def _first_line(message: str) -> str:
    """Return the first line of ``message`` (empty for an empty message)."""
    return message.splitlines()[0] if message else ""


def failure_table(
    points: dict[str, float], results: list[StudentResult], messages: dict[str, dict[str, str]]
) -> list[FailureRow]:
    """Return one row per graded cell, most failures first.

    ``messages`` maps student -> grade_id -> failure message (``failure_messages``). A cell counts for a student
    whose status is ``graded`` and who has a score for it; it fails when that score is below the cell's points.
    """
    rows = []
    for grade_id, cell_points in points.items():
        scores = {r.student: r.grades.get(grade_id) for r in results if r.status == GRADED}
        graded = [student for student, score in scores.items() if score is not None]
        failing = [student for student in graded if scores[student] < cell_points]
        counts = Counter(
            _first_line(messages[student][grade_id]) for student in failing if grade_id in messages.get(student, {})
        )
        message, count = counts.most_common(1)[0] if counts else ("", 0)
        rows.append(FailureRow(grade_id, cell_points, len(graded), len(failing), message, count))
    return sorted(rows, key=lambda row: row.failing, reverse=True)


def format_failures(rows: list[FailureRow]) -> str:
    """Return a short plain-text summary: failing/graded per cell and its most common message."""
    lines = []
    for row in rows:
        share = "" if row.share is None else f" ({row.share:.0%})"
        common = f"  {row.message} (x{row.message_count})" if row.message else ""
        lines.append(f"{row.grade_id}: {row.failing}/{row.graded} failing{share}{common}")
    return "\n".join(lines)


def _write_grades(info: LabInfo, results: list[StudentResult], path: Path) -> None:
    """Write ``grades.csv``: one row per student, a column per graded cell."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "status", "total", "max_score", *info.points, "repairs", "flags", "reason"])
        for r in results:
            per_cell = [_fmt(r.grades.get(grade_id)) for grade_id in info.points]
            repairs = "; ".join(r.repairs)
            row = [r.student, r.status, _fmt(r.score), _fmt(r.max_score), *per_cell, repairs, len(r.flags), r.reason]
            writer.writerow(row)


def _write_flags(results: list[StudentResult], path: Path) -> None:
    """Write ``flags.csv``: one row per flag (student, cell, what was seen). A flag never changed a score; it marks
    a submission for the instructor to read."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["student", "cell", "flag"])
        for r in results:
            for flag in r.flags:
                writer.writerow([r.student, flag["cell"], flag["flag"]])


def _write_failures(rows: list[FailureRow], path: Path) -> None:
    """Write ``failures.csv``: one row per graded cell, most failures first."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["grade_id", "points", "graded", "failing", "failure_share", "message", "message_count"])
        for row in rows:
            share = "" if row.share is None else f"{row.share:.3g}"
            writer.writerow(
                [row.grade_id, _fmt(row.points), row.graded, row.failing, share, row.message, row.message_count]
            )


def _task_table(info: LabInfo, result: StudentResult, messages: dict[str, str]) -> str:
    """Return the HTML table of a graded student's score, verdict and (redacted) failure message per graded cell."""
    rows = ["<tr><th>task</th><th>score</th><th>result</th><th>message</th></tr>"]
    for grade_id, points in info.points.items():
        score = result.grades.get(grade_id)
        verdict = "not graded" if score is None else "pass" if score >= points else "fail"
        message = messages.get(grade_id, "") if verdict == "fail" else ""
        shown = f"<pre>{escape(redact(message, info.hidden))}</pre>" if message else ""
        rows.append(
            f"<tr><td>{escape(grade_id)}</td><td>{_fmt(score) or '–'} / {_fmt(points)}</td>"
            f'<td class="{verdict.replace(" ", "-")}">{verdict}</td><td>{shown}</td></tr>'
        )
    return "<h2>Tasks</h2>\n<table>\n" + "\n".join(rows) + "\n</table>"


def _answers(info: LabInfo, nb: nbformat.NotebookNode) -> str:
    """Return the student's own answer cells (found by the release's answer grade_ids) as escaped HTML."""
    cells = _cells_by_id(nb)
    shown = [
        f"<h3>{escape(grade_id)}</h3>\n<pre>{escape(cells[grade_id].source)}</pre>"
        for grade_id in info.answers
        if grade_id in cells
    ]
    return "<h2>Your answers</h2>\n" + "\n".join(shown) if shown else ""


def render_feedback(info: LabInfo, result: StudentResult, nb: nbformat.NotebookNode | None) -> str:
    """Return a self-contained HTML feedback page for one student; ``nb`` is their autograded notebook, if any.

    Test-cell source is never shown; failed tests show only their redacted ``ename: evalue``.
    """
    graded = result.status == GRADED
    total = f"{_fmt(result.score)} / {_fmt(result.max_score)}" if graded else f"not graded ({escape(result.status)})"
    parts = [
        f"<h1>{escape(info.name)}</h1>",
        f"<p>Student: <b>{escape(result.student)}</b></p>",
        f"<p>Total: <b>{total}</b></p>",
    ]
    if result.reason:
        parts.append(f"<p>{escape(result.reason)}</p>")
    if result.repairs:
        items = "".join(f"<li>{escape(repair)}</li>" for repair in result.repairs)
        parts.append(f"<h2>Notebook repairs</h2>\n<ul>{items}</ul>")
    if graded:
        parts.append(_task_table(info, result, failure_messages(nb) if nb is not None else {}))
        if nb is not None:
            parts.append(_answers(info, nb))
    title = escape(f"{info.name}: feedback for {result.student}")
    body = "\n".join(part for part in parts if part)
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
        f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _read_autograded(path: Path) -> nbformat.NotebookNode | None:
    """Read an autograded notebook; ``None`` if there is none, ``CourseError`` if it is unreadable."""
    if not path.is_file():
        return None
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:
        raise CourseError(f"{path} is not a readable notebook ({exc}); re-grade the student or delete it") from exc


def write_report(lab: Lab, grading_dir: Path, out_dir: Path) -> ReportPaths:
    """Write ``grades.csv``, ``failures.csv`` and ``feedback/<student>.html`` for a grading folder; print a summary.

    Every student of ``results.jsonl`` gets a row and a page. Autograded notebooks are read only for students whose
    latest status is ``graded`` (an older one may be stale).
    """
    results = read_results(grading_dir / "results.jsonl")
    info = lab_info(lab)
    paths = ReportPaths(out_dir / "grades.csv", out_dir / "failures.csv", out_dir / "feedback", out_dir / "flags.csv")
    paths.feedback.mkdir(parents=True, exist_ok=True)
    messages = {}
    for result in results:
        nb = (
            _read_autograded(grading_dir / "autograded" / f"{result.student}.ipynb")
            if result.status == GRADED
            else None
        )
        messages[result.student] = failure_messages(nb) if nb is not None else {}
        page = render_feedback(info, result, nb)
        (paths.feedback / f"{result.student}.html").write_text(page, encoding="utf-8")
    _write_grades(info, results, paths.grades)
    _write_flags(results, paths.flags)
    rows = failure_table(info.points, results, messages)
    _write_failures(rows, paths.failures)
    print(format_failures(rows))
    return paths
