"""Collect one lab's submissions into ``<dest>/<student>/<lab>.ipynb``, with their nbgrader metadata repaired.

``collect`` reads a folder of notebooks, or a ``.zip`` of one, in any of these layouts (told apart file by file):

* plain: ``<student>/<any name>.ipynb`` (``<lab>.ipynb`` preferred when a folder holds several) or ``<student>.ipynb``;
* Canvas bulk download: ``<lastfirst>[_LATE]_<userid>_<submissionid>_<original name>``; the student is the user id and
  the highest submission id (the newest upload; Canvas renames re-uploads ``<original>-1``, ...) wins;
* Moodle: ``<Full Name>_<participantid>_assignsubmission_file_/<file>.ipynb``; the student is the participant id.

``repair`` matches a submission to the released student notebook ``labs/<lab>.ipynb``, the only reference (the
solutions are never read), so that nbgrader can grade it. Cells are matched by nbgrader ``grade_id``; cells whose
metadata was stripped (Colab, some editors) by their source, their position between matched cells, or the names an
answer defines. Read-only and test cells get back their released source and metadata, answer cells keep the
student's source under the released metadata, and deleted graded cells are put back (an answer as its blank stub,
worth 0). Every repair is one line of ``<dest>/<student>/repair.log``.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import re
import shutil
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import nbformat
from nbformat.v4.nbbase import random_cell_id
from nbgrader import utils as nbgrader_utils

from autograder.course import CourseError, Lab

OK = "ok"
REPAIRED = "repaired"
UNREADABLE = "unreadable"
AMBIGUOUS = "ambiguous"

MAX_ZIP_BYTES = 1 << 30  # total uncompressed size a .zip of submissions may have
MAX_ZIP_FILES = 10_000

# The cell metadata that nbgrader, or the kernel (the `skip-execution` and `raises-exception` tags), acts on: a graded
# cell gets the released values back. The rest (Colab's, `collapsed`, execution times) is the student's and is kept.
GRADING_KEYS = ("nbgrader", "deletable", "editable", "tags")

CANVAS = re.compile(r"(?P<name>[^_]+)(?P<late>_LATE)?_(?P<user>\d+)_(?P<submission>\d+)_(?P<original>.+)")
MOODLE = re.compile(r"(?P<name>.+)_(?P<participant>\d+)_assignsubmission_file_?")
DEFINED = re.compile(r"^(?:(?:async\s+)?def|class)\s+(\w+)|^(\w+)\s*(?::[^=\n]*)?=(?!=)", re.MULTILINE)
UNSAFE_ID = re.compile(r"[^\w.@+-]+", re.ASCII)


@dataclass
class Collected:
    """The outcome for one student: the file taken (relative to SOURCE), a status, the repair log and remarks.

    ``status`` is ``ok`` (written unchanged), ``repaired``, ``unreadable`` (not a valid notebook, or no ``.ipynb``) or
    ``ambiguous`` (no single notebook to take). ``repairs`` ends, if the student added cells, with a line counting them
    (that alone leaves the status ``ok``).
    """

    student: str
    original: str
    status: str
    repairs: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class Repaired:
    """A repaired notebook, one line per repair, and how many submitted cells match no released cell."""

    notebook: nbformat.NotebookNode
    repairs: list[str]
    added: int


@dataclass(frozen=True)
class _Found:
    """One submitted file: the student the layout names, the unit it came in and its rank within that unit."""

    path: Path
    original: str  # relative to SOURCE, for the report
    student: str  # before it is made filesystem-safe
    unit: str  # a student folder, a flat file, a Canvas user or a Moodle folder
    rank: int  # the Canvas submission id (the highest wins); 0 elsewhere
    preferred: bool  # named after the lab


def collect(source: Path, lab: Lab, dest: Path) -> list[Collected]:
    """Collect the submissions in ``source`` (a folder or a ``.zip``) into ``dest``, which must be new or empty.

    Writes ``dest/<student>/<lab>.ipynb`` (repaired) and ``dest/<student>/repair.log`` (one line per repair) for each
    student, and ``dest/collect.json`` with the returned records. A notebook that cannot be read is kept as
    ``<lab>.ipynb.unreadable``; when no single notebook can be chosen (several candidates, or several files map to
    one student id) every candidate is kept under ``dest/<student>/candidates/`` and no ``<lab>.ipynb`` is written.
    Raises ``CourseError`` for an unusable ``source`` or ``dest``, or an unsafe or oversized zip.
    """
    if not lab.release.is_file():
        raise CourseError(f"the released notebook {lab.release} does not exist: run `python -m autograder release`")
    if dest.exists() and any(dest.iterdir()):
        raise CourseError(f"{dest} is not empty: collect into a new folder")
    if source.is_dir() and dest.resolve().is_relative_to(source.resolve()):
        raise CourseError(f"{dest} is inside the submissions folder {source}: collect into a folder outside it")
    release = nbformat.read(lab.release, as_version=4)
    with _unpacked(source) as (root, base):
        students: dict[str, list[_Found]] = {}
        for found in _find(root, base, lab):
            students.setdefault(_safe_id(found.student).casefold(), []).append(found)
        dest.mkdir(parents=True, exist_ok=True)
        results = [_collect_student(files, release, lab, dest) for _, files in sorted(students.items())]
    for result in results:
        log = "".join(f"{line}\n" for line in result.repairs)
        (dest / result.student / "repair.log").write_text(log, encoding="utf-8")
    records = json.dumps([asdict(result) for result in results], indent=2, ensure_ascii=False)
    (dest / "collect.json").write_text(records + "\n", encoding="utf-8")
    return results


@contextmanager
def _unpacked(source: Path) -> Iterator[tuple[Path, Path]]:
    """Yield ``(root, base)``: ``source`` itself or, for a zip, a temporary folder it is extracted to; ``base`` is
    where the layout starts (a zip's single wrapping folder, as in ``submissions/<student>/...``, is skipped)."""
    if source.is_dir():
        yield source, source
    elif source.is_file() and source.suffix.lower() == ".zip":
        with tempfile.TemporaryDirectory(prefix="posttrain-collect-") as tmp:
            root = Path(tmp)
            _extract(source, root)
            yield root, _unwrapped(root)
    else:
        raise CourseError(f"{source} is neither a folder nor a .zip file")


def _extract(archive: Path, into: Path) -> None:
    """Extract the files of ``archive`` into ``into``, skipping hidden ones and ``__MACOSX/``; raise ``CourseError``
    for an absolute or ``..`` entry name, more than ``MAX_ZIP_FILES`` files or ``MAX_ZIP_BYTES`` bytes."""
    too_big = f"{archive} holds more than {MAX_ZIP_BYTES} bytes uncompressed: refusing to extract it"
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _member_parts(archive, info.filename)) for info in zf.infolist() if not info.is_dir()]
            if len(members) > MAX_ZIP_FILES:
                raise CourseError(f"{archive} holds {len(members)} files, more than the {MAX_ZIP_FILES} allowed")
            if sum(info.file_size for info, _ in members) > MAX_ZIP_BYTES:
                raise CourseError(too_big)
            left = MAX_ZIP_BYTES  # the sizes in the zip's directory may lie: count what is actually written
            for info, parts in members:
                if _ignored(parts):
                    continue
                target = into.joinpath(*parts)
                if target.exists():
                    raise CourseError(f"{archive} holds {info.filename!r} twice")
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, target.open("wb") as dst:
                    while chunk := src.read(1 << 20):
                        left -= len(chunk)
                        if left < 0:
                            raise CourseError(too_big)
                        dst.write(chunk)
    except (zipfile.BadZipFile, zlib.error, RuntimeError, NotImplementedError) as exc:
        raise CourseError(f"{archive} could not be extracted: {exc}") from exc


def _unwrapped(root: Path) -> Path:
    """Return the single folder that holds everything in ``root`` if it holds folders itself and is no Moodle
    submission folder (a zip of ``submissions/<student>/...``), else ``root``."""
    entries = list(root.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not MOODLE.fullmatch(entries[0].name):
        if any(entry.is_dir() for entry in entries[0].iterdir()):
            return entries[0]
    return root


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """Return the path parts of zip entry ``name``; raise ``CourseError`` for an absolute path or a ``..`` part."""
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or PureWindowsPath(name).drive or ".." in path.parts:
        raise CourseError(f"{archive} holds an unsafe entry {name!r} (absolute path or '..'): refusing to extract it")
    return path.parts


def _ignored(parts: tuple[str, ...]) -> bool:
    """Whether a path is hidden or macOS zip metadata (``__MACOSX/``)."""
    return any(part.startswith(".") or part == "__MACOSX" for part in parts)


def _find(root: Path, base: Path, lab: Lab) -> list[_Found]:
    """Return every submitted file under ``base``; loose files other than notebooks are reported on stderr."""
    found = []
    for path in sorted(base.rglob("*")):
        parts = path.relative_to(base).parts
        if _ignored(parts) or not path.is_file():
            continue
        original = path.relative_to(root).as_posix()
        item = _classify(path, original, parts, lab)
        if item is None:
            print(f"ignoring {original}: not a notebook (.ipynb) nor in a student folder", file=sys.stderr)
        else:
            found.append(item)
    return found


def _classify(path: Path, original: str, parts: tuple[str, ...], lab: Lab) -> _Found | None:
    """Return whose file ``parts`` (relative to the layout's base) is, after the Moodle, Canvas or plain layout."""
    wanted = f"{lab.name}.ipynb"
    moodle = next((match for part in reversed(parts[:-1]) if (match := MOODLE.fullmatch(part))), None)
    if moodle:
        return _Found(path, original, moodle["participant"], f"Moodle folder {moodle[0]}", 0, path.name == wanted)
    canvas = CANVAS.fullmatch(path.name)
    if canvas:
        name = PurePosixPath(canvas["original"])
        preferred = re.sub(r"-\d+$", "", name.stem) + name.suffix == wanted
        user = canvas["user"]
        return _Found(path, original, user, f"Canvas user {user}", int(canvas["submission"]), preferred)
    if len(parts) > 1:
        return _Found(path, original, parts[0], f"folder {parts[0]}/", 0, path.name == wanted)
    if path.suffix.lower() == ".ipynb":
        return _Found(path, original, path.stem, f"file {path.name}", 0, True)
    return None


def _safe_id(raw: str) -> str:
    """Return ``raw`` usable as a folder name: runs of characters other than letters, digits and ``._@+-`` become
    ``_`` and leading dots are dropped (so no ``/``, ``..`` or hidden name)."""
    return UNSAFE_ID.sub("_", raw).lstrip(".") or "_"


def _collect_student(files: list[_Found], release: nbformat.NotebookNode, lab: Lab, dest: Path) -> Collected:
    """Choose one student's notebook among ``files``, repair it and write it to ``dest/<student>/``."""
    student = _safe_id(files[0].student)
    out = dest / student
    out.mkdir()
    remarks = [
        f"student id {raw!r} made filesystem-safe" for raw in sorted({f.student for f in files}) if _safe_id(raw) != raw
    ]
    units = sorted({f.unit for f in files})
    notebooks = [f for f in files if f.path.suffix.lower() == ".ipynb"]
    newest = [f for f in notebooks if f.rank == max((n.rank for n in notebooks), default=0)]
    chosen = [f for f in newest if f.preferred] or newest
    if len(units) > 1 or len(chosen) != 1:
        (out / "candidates").mkdir()
        for number, found in enumerate(files, 1):
            shutil.copyfile(found.path, out / "candidates" / f"{number}_{found.path.name}")
        if len(units) > 1:
            problem = f"{len(units)} submissions map to student id {student!r}: {', '.join(units)}"
        elif chosen:
            problem = f"{len(chosen)} notebooks and no single one named {lab.name}.ipynb"
        else:
            problem = "no .ipynb file"
        originals = ", ".join(f.original for f in files)
        status = AMBIGUOUS if len(units) > 1 or notebooks else UNREADABLE
        return Collected(student, originals, status, [], "; ".join([problem, *remarks]))
    taken = chosen[0]
    remarks += [f"ignored {f.original}" for f in files if f is not taken]
    try:
        submitted = _read(taken.path)
    except ValueError as exc:
        shutil.copyfile(taken.path, out / f"{lab.name}.ipynb.unreadable")
        return Collected(student, taken.original, UNREADABLE, [], "; ".join([str(exc), *remarks]))
    repaired = repair(submitted, release)
    nbformat.write(repaired.notebook, out / f"{lab.name}.ipynb")
    lines = list(repaired.repairs)
    if repaired.added:
        lines.append(f"kept {repaired.added} cell(s) not in the release (added or edited by the student)")
    return Collected(student, taken.original, REPAIRED if repaired.repairs else OK, lines, "; ".join(remarks))


def _read(path: Path) -> nbformat.NotebookNode:
    """Read a submitted notebook as nbformat v4; raise ``ValueError`` with the reason when it is not a valid one."""
    errors: dict[str, Exception] = {}
    try:
        nb = nbformat.reads(path.read_text(encoding="utf-8"), as_version=4, capture_validation_error=errors)
    except Exception as exc:  # nbformat raises many kinds (JSON, conversion, schema) for a file that is no notebook
        raise ValueError(f"not a readable notebook: {getattr(exc, 'message', None) or exc}") from exc
    if "ValidationError" in errors:
        error = errors["ValidationError"]
        raise ValueError(f"not a valid notebook: {getattr(error, 'message', error)}")
    return nb


def repair(submitted: nbformat.NotebookNode, release: nbformat.NotebookNode) -> Repaired:
    """Return a copy of ``submitted`` with the graded cells of ``release`` restored (see the module docstring).

    Cells the student added stay where they are; deleted graded cells go back after the released cell before them.
    """
    nb = copy.deepcopy(submitted)
    repairs: list[str] = []
    released_index = {_grade_id(cell): i for i, cell in enumerate(release.cells) if _grade_id(cell)}
    present = _unlabel_strays(nb.cells, released_index, repairs)
    matches, anchors = _match(release.cells, nb.cells, {released_index[gid]: j for gid, j in present.items()})
    by_submitted = {j: i for i, (j, _) in matches.items()}
    placements = _placements(release.cells, matches, anchors)
    cells = []
    for j in range(-1, len(nb.cells)):
        i = by_submitted.get(j)
        if i is not None and _grade_id(release.cells[i]):
            cells.append(_restore(nb.cells[j], release.cells[i], matches[i][1], repairs))
        elif j >= 0:
            cells.append(nb.cells[j])
        for deleted in placements.get(j, []):
            cells.append(_reinsert(release.cells[deleted], repairs))
    nb.cells = cells
    for key, value in release.metadata.items():
        if key not in nb.metadata:
            nb.metadata[key] = copy.deepcopy(value)
            repairs.append(f"restored notebook metadata {key!r}")
    _fix_cell_ids(nb, release.nbformat_minor)
    return Repaired(nb, repairs, len(submitted.cells) - len(by_submitted))


def _grade_id(cell: nbformat.NotebookNode) -> str | None:
    """Return the cell's nbgrader ``grade_id``, or None for a cell without nbgrader metadata."""
    meta = cell.metadata.get("nbgrader")
    grade_id = meta.get("grade_id") if isinstance(meta, dict) else None
    return grade_id if isinstance(grade_id, str) and grade_id else None


def _unlabel_strays(cells: list, released_index: dict[str, int], repairs: list[str]) -> dict[str, int]:
    """Return ``{grade_id: index}`` of the submitted cells with a released grade_id (the first of copies); drop the
    nbgrader metadata of later copies and of unknown grade_ids, which nbgrader would reject."""
    present: dict[str, int] = {}
    for j, cell in enumerate(cells):
        grade_id = _grade_id(cell)
        if grade_id in released_index and grade_id not in present:
            present[grade_id] = j
        elif grade_id:
            del cell.metadata["nbgrader"]
            what = "a copy of" if grade_id in released_index else "unknown"
            repairs.append(f"removed nbgrader metadata from {what} cell {grade_id!r}")
    return present


def _match(released: list, submitted: list, by_id: dict[int, int]) -> tuple[dict[int, tuple[int, str]], dict[int, int]]:
    """Match released to submitted cells; ``by_id`` maps released to submitted indices by grade_id.

    Cells without nbgrader metadata are aligned by whitespace-normalised source; between two aligned cells, the
    unmatched answer and plain cells then take the unlabelled cells there in order (by position) if their cell types
    line up, and a remaining answer takes the one unlabelled code cell defining a name that its stub defines.

    Returns ``{released: (submitted, how)}`` and its in-order part ``{released: submitted}``: the anchors that
    re-inserted cells are placed after (a cell matched by grade_id or name that the student moved is no anchor).
    """

    def key(cell: nbformat.NotebookNode, index: int, present: bool) -> tuple:
        """What a cell is matched by: its grade_id if both sides have it, else its source (never an answer's)."""
        if present:
            return ("id", _grade_id(cell))
        if _grade_id(cell) and nbgrader_utils.is_solution(cell):
            return ("answer", index)  # an answer's source is the student's: it never matches the stub
        return ("source", cell.cell_type, " ".join(cell.source.split()))

    rel_keys = [key(cell, i, i in by_id) for i, cell in enumerate(released)]
    sub_keys = [key(cell, j, _grade_id(cell) is not None) for j, cell in enumerate(submitted)]
    blocks = difflib.SequenceMatcher(None, rel_keys, sub_keys, autojunk=False).get_matching_blocks()
    anchors = {block.a + k: block.b + k for block in blocks for k in range(block.size)}
    matches = {i: (j, "id" if i in by_id else "source") for i, j in anchors.items()}
    matches |= {i: (j, "id") for i, j in by_id.items() if i not in matches}
    taken = {j for j, _ in matches.values()}
    bounds = [(-1, -1), *sorted(anchors.items()), (len(released), len(submitted))]
    for (rel_start, sub_start), (rel_end, sub_end) in itertools.pairwise(bounds):
        rel_gap = [i for i in range(rel_start + 1, rel_end) if i not in matches and _keeps_student_source(released[i])]
        sub_gap = [j for j in range(sub_start + 1, sub_end) if j not in taken]
        if [released[i].cell_type for i in rel_gap] == [submitted[j].cell_type for j in sub_gap]:
            for i, j in zip(rel_gap, sub_gap, strict=True):
                matches[i], anchors[i] = (j, "position"), j
                taken.add(j)
    for i, cell in enumerate(released):
        if i in matches or not (_grade_id(cell) and nbgrader_utils.is_solution(cell)):
            continue
        names = _defined_names(cell.source)
        hits = [
            j
            for j, other in enumerate(submitted)
            if j not in taken and other.cell_type == "code" and names & _defined_names(other.source)
        ]
        if len(hits) == 1:
            matches[i] = (hits[0], "name")
            taken.add(hits[0])
            if _in_order(anchors, i, hits[0]):
                anchors[i] = hits[0]
    return matches, anchors


def _in_order(anchors: dict[int, int], i: int, j: int) -> bool:
    """Whether matching released cell ``i`` to submitted cell ``j`` keeps the ``anchors`` in the same order."""
    before = [anchors[k] for k in anchors if k < i]
    after = [anchors[k] for k in anchors if k > i]
    return max(before, default=-1) < j < min(after, default=j + 1)


def _keeps_student_source(cell: nbformat.NotebookNode) -> bool:
    """Whether a released cell is an answer or a plain cell, whose submitted source is the student's own."""
    return _grade_id(cell) is None or nbgrader_utils.is_solution(cell)


def _defined_names(source: str) -> set[str]:
    """Return the names a cell defines at top level (``def``, ``class``, assignment)."""
    return {name for pair in DEFINED.findall(source) for name in pair if name}


def _placements(released: list, matches: dict[int, tuple[int, str]], anchors: dict[int, int]) -> dict[int, list[int]]:
    """Return where the unmatched graded cells of the release go back: ``{submitted index they follow (-1: the top):
    released indices}``, each after the submitted cell anchoring the nearest released cell before it."""
    placements: dict[int, list[int]] = {}
    after = -1
    for i, cell in enumerate(released):
        if i in anchors:
            after = anchors[i]
        elif i not in matches and _grade_id(cell):
            placements.setdefault(after, []).append(i)
    return placements


def _label(cell: nbformat.NotebookNode) -> str:
    """Name a released graded cell for the repair log, e.g. ``test cell 'test_task1'``."""
    if nbgrader_utils.is_solution(cell):
        kind = "answer"
    elif nbgrader_utils.is_grade(cell):
        kind = "test"
    elif nbgrader_utils.is_task(cell):
        kind = "task"
    else:
        kind = "read-only"
    return f"{kind} cell {_grade_id(cell)!r}"


def _grading_metadata(metadata: dict) -> dict:
    """Return the ``GRADING_KEYS`` part of cell metadata (an empty ``tags`` list counts as none)."""
    return {key: metadata[key] for key in GRADING_KEYS if key in metadata and metadata[key] != []}


def _restore(
    cell: nbformat.NotebookNode, released: nbformat.NotebookNode, how: str, repairs: list[str]
) -> nbformat.NotebookNode:
    """Return submitted ``cell``, matched to graded cell ``released`` (``how``: id, source, position or name), with the
    released grading metadata, cell type and, unless it is an answer, source."""
    label = _label(released)
    answer = nbgrader_utils.is_solution(released)
    if how != "id":
        repairs.append(f"restored nbgrader metadata of {label} (matched by {how})")
    fixed = cell
    if cell.cell_type != released.cell_type or (not answer and cell.source != released.source):
        what = f"the cell type of {label} (was {cell.cell_type})" if answer else f"edited {label}"
        repairs.append(f"restored {what}")
        fixed = copy.deepcopy(released)  # the released cell, with the student's cell id and other metadata
        fixed.metadata = copy.deepcopy(cell.metadata)
        fixed.source = cell.source if answer else released.source
        if "id" in cell:
            fixed["id"] = cell["id"]
    ours, theirs = _grading_metadata(cell.metadata), _grading_metadata(released.metadata)
    ours_nbgrader, theirs_nbgrader = ours.pop("nbgrader", {}), theirs.pop("nbgrader", {})
    edited = sorted(
        k for k in ours_nbgrader.keys() | theirs_nbgrader.keys() if ours_nbgrader.get(k) != theirs_nbgrader.get(k)
    )
    edited += sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
    if how == "id" and edited:
        repairs.append(f"restored edited metadata of {label} ({', '.join(edited)})")
    for key in GRADING_KEYS:
        if key in released.metadata:
            fixed.metadata[key] = copy.deepcopy(released.metadata[key])
        else:
            fixed.metadata.pop(key, None)
    return fixed


def _reinsert(released: nbformat.NotebookNode, repairs: list[str]) -> nbformat.NotebookNode:
    """Return a copy of a released graded cell the submission lacks (for an answer, its blank stub) and log it."""
    stub = " as its blank stub" if nbgrader_utils.is_solution(released) else ""
    repairs.append(f"restored deleted {_label(released)}{stub}")
    return copy.deepcopy(released)


def _fix_cell_ids(nb: nbformat.NotebookNode, release_minor: int) -> None:
    """Raise the notebook to the release's nbformat minor version and give each cell a unique id from 4.5 on."""
    nb.nbformat_minor = max(nb.nbformat_minor, release_minor)
    seen: set[str] = set()
    for cell in nb.cells:
        if nb.nbformat_minor < 5:
            cell.pop("id", None)
            continue
        while not cell.get("id") or cell["id"] in seen:
            cell["id"] = random_cell_id()
        seen.add(cell["id"])
