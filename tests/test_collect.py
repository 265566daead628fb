"""Tests for ``autograder.collect``: the plain, Canvas, Moodle and zip layouts, and the nbgrader metadata repair, on
submissions built from the released ``labs/01_finetune_and_forget.ipynb`` (no notebook is executed)."""

from __future__ import annotations

import copy
import json
import zipfile
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest

from autograder import collect as collect_module
from autograder.collect import Collected, collect
from autograder.course import REPO_ROOT, CourseError, Lab, graded_cell_ids

LAB = Lab(REPO_ROOT, "01_finetune_and_forget")
NOTEBOOK = f"{LAB.name}.ipynb"
RELEASE = nbformat.read(LAB.release, as_version=4)
GRADE_IDS = graded_cell_ids(RELEASE)
STUB = "    # YOUR CODE HERE\n    raise NotImplementedError()"
KEPT_1 = "kept 1 cell(s) not in the release (added or edited by the student)"


def nbgrader(cell: nbformat.NotebookNode) -> dict:
    """Return the cell's nbgrader metadata ({} if none)."""
    return cell.metadata.get("nbgrader", {})


def answered(tag: str = "") -> nbformat.NotebookNode:
    """Return the release with each answer stub replaced by a fake answer ``return '<grade_id><tag>'``."""
    nb = copy.deepcopy(RELEASE)
    for cell in nb.cells:
        if nbgrader(cell).get("solution"):
            assert STUB in cell.source
            cell.source = cell.source.replace(STUB, f"    return {nbgrader(cell)['grade_id'] + tag!r}")
    return nb


def stripped(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` as Colab saves it: nbformat 4.0 (no cell ids) and no nbgrader, deletable or editable metadata."""
    nb = copy.deepcopy(nb)
    nb.nbformat_minor = 0
    for cell in nb.cells:
        del cell["id"]
        for key in ("nbgrader", "deletable", "editable"):
            cell.metadata.pop(key, None)
    return nb


def without_ids(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Return ``nb`` without cell ids and nbformat minor version, to compare notebooks whose ids were regenerated."""
    nb = copy.deepcopy(nb)
    del nb["nbformat_minor"]
    for cell in nb.cells:
        cell.pop("id", None)
    return nb


def cell_index(nb: nbformat.NotebookNode, grade_id: str) -> int:
    """Return the index of the cell with nbgrader ``grade_id``."""
    return next(i for i, cell in enumerate(nb.cells) if nbgrader(cell).get("grade_id") == grade_id)


def answers(nb: nbformat.NotebookNode) -> dict[str, str]:
    """Return the source of every answer cell by grade_id."""
    return {nbgrader(cell)["grade_id"]: cell.source for cell in nb.cells if nbgrader(cell).get("solution")}


def write(path: Path, nb: nbformat.NotebookNode) -> Path:
    """Write ``nb`` to ``path`` (creating its folder) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def run(source: Path, tmp_path: Path) -> tuple[dict[str, Collected], Path]:
    """Collect ``source`` into ``tmp_path/out``; return the records by student and the output folder."""
    dest = tmp_path / "out"
    results = collect(source, LAB, dest)
    assert json.loads((dest / "collect.json").read_text()) == [asdict(result) for result in results]
    for result in results:
        assert (dest / result.student / "repair.log").read_text().splitlines() == result.repairs
    return {result.student: result for result in results}, dest


def output(dest: Path, student: str) -> nbformat.NotebookNode:
    """Read the collected notebook of ``student``."""
    return nbformat.read(dest / student / NOTEBOOK, as_version=4)


def files(folder: Path) -> list[str]:
    """Return the files under ``folder``, relative and sorted."""
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())


def repair_one(tmp_path: Path, nb: nbformat.NotebookNode) -> tuple[Collected, nbformat.NotebookNode]:
    """Collect ``nb`` as the only submission ``alice.ipynb``; return its record and the collected notebook."""
    results, dest = run(write(tmp_path / "subs" / "alice.ipynb", nb).parent, tmp_path)
    return results["alice"], output(dest, "alice")


def test_unchanged_submissions_in_plain_folder_and_flat_file(tmp_path):
    subs = tmp_path / "subs"
    write(subs / "alice" / "my lab.ipynb", answered("-alice"))
    write(subs / "bob.ipynb", answered("-bob"))
    (subs / ".DS_Store").write_text("")
    results, dest = run(subs, tmp_path)
    assert results == {
        "alice": Collected("alice", "alice/my lab.ipynb", "ok", [], ""),
        "bob": Collected("bob", "bob.ipynb", "ok", [], ""),
    }
    assert files(dest) == [f"alice/{NOTEBOOK}", "alice/repair.log", f"bob/{NOTEBOOK}", "bob/repair.log", "collect.json"]
    assert (dest / "alice" / "repair.log").read_text() == ""
    assert output(dest, "alice") == answered("-alice")
    assert output(dest, "bob") == answered("-bob")


def test_folder_prefers_the_notebook_named_after_the_lab_or_is_ambiguous(tmp_path):
    subs = tmp_path / "subs"
    write(subs / "alice" / "scratch.ipynb", answered("-scratch"))
    write(subs / "alice" / NOTEBOOK, answered("-alice"))
    write(subs / "carol" / "a.ipynb", answered())
    write(subs / "carol" / "b.ipynb", answered())
    results, dest = run(subs, tmp_path)
    assert results["alice"] == Collected("alice", f"alice/{NOTEBOOK}", "ok", [], "ignored alice/scratch.ipynb")
    assert answers(output(dest, "alice")) == answers(answered("-alice"))
    assert results["carol"] == Collected(
        "carol", "carol/a.ipynb, carol/b.ipynb", "ambiguous", [], f"2 notebooks and no single one named {NOTEBOOK}"
    )
    assert files(dest / "carol") == ["candidates/1_a.ipynb", "candidates/2_b.ipynb", "repair.log"]


def test_canvas_bulk_download_keeps_the_newest_submission(tmp_path):
    subs = tmp_path / "subs"
    write(subs / f"doejane_1001_5001_{NOTEBOOK}", answered("-old"))
    write(subs / f"doejane_1001_5002_{LAB.name}-1.ipynb", answered("-new"))
    write(subs / "roebob_LATE_1002_5003_lab.ipynb", answered("-late"))
    (subs / "smithann_1003_5004_report.pdf").write_bytes(b"%PDF")
    results, dest = run(subs, tmp_path)
    assert results == {
        "1001": Collected(
            "1001", f"doejane_1001_5002_{LAB.name}-1.ipynb", "ok", [], f"ignored doejane_1001_5001_{NOTEBOOK}"
        ),
        "1002": Collected("1002", "roebob_LATE_1002_5003_lab.ipynb", "ok", [], ""),
        "1003": Collected("1003", "smithann_1003_5004_report.pdf", "unreadable", [], "no .ipynb file"),
    }
    assert answers(output(dest, "1001")) == answers(answered("-new"))
    assert answers(output(dest, "1002")) == answers(answered("-late"))


def test_moodle_folders(tmp_path):
    subs = tmp_path / "subs"
    write(subs / "Jane Doe_42_assignsubmission_file_" / "lab.ipynb", answered("-jane"))
    write(subs / "John Roe_43_assignsubmission_file" / NOTEBOOK, answered("-john"))
    write(subs / "John Roe_43_assignsubmission_file" / "notes.ipynb", answered())
    results, dest = run(subs, tmp_path)
    assert results == {
        "42": Collected("42", "Jane Doe_42_assignsubmission_file_/lab.ipynb", "ok", [], ""),
        "43": Collected(
            "43",
            f"John Roe_43_assignsubmission_file/{NOTEBOOK}",
            "ok",
            [],
            "ignored John Roe_43_assignsubmission_file/notes.ipynb",
        ),
    }
    assert answers(output(dest, "42")) == answers(answered("-jane"))


def make_zip(path: Path, entries: dict[str, str]) -> Path:
    """Write a zip holding ``entries`` (name: text) to ``path``."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in entries.items():
            zf.writestr(zipfile.ZipInfo(name), text)
    return path


def test_zip_of_a_canvas_export(tmp_path):
    canvas = {
        f"doejane_1001_5001_{NOTEBOOK}": nbformat.writes(answered("-jane")),
        "roebob_LATE_1002_5003_lab.ipynb": nbformat.writes(answered("-bob")),
        f"__MACOSX/._doejane_1001_5001_{NOTEBOOK}": "resource fork",
        ".DS_Store": "",
    }
    results, dest = run(make_zip(tmp_path / "export.zip", canvas), tmp_path)
    assert results == {
        "1001": Collected("1001", f"doejane_1001_5001_{NOTEBOOK}", "ok", [], ""),
        "1002": Collected("1002", "roebob_LATE_1002_5003_lab.ipynb", "ok", [], ""),
    }
    assert output(dest, "1001") == answered("-jane")


def test_zip_skips_a_single_wrapping_folder(tmp_path):
    plain = {f"submissions/{name}/{NOTEBOOK}": nbformat.writes(answered(name)) for name in ("alice", "bob")}
    results, _ = run(make_zip(tmp_path / "submissions.zip", plain), tmp_path)
    assert results == {
        name: Collected(name, f"submissions/{name}/{NOTEBOOK}", "ok", [], "") for name in ("alice", "bob")
    }


@pytest.mark.parametrize("name", ["../evil.ipynb", "alice/../../evil.ipynb", "/tmp/evil.ipynb", "C:/evil.ipynb"])
def test_zip_with_an_unsafe_entry_is_refused(tmp_path, name):
    archive = make_zip(tmp_path / "export.zip", {"alice.ipynb": nbformat.writes(answered()), name: "{}"})
    with pytest.raises(CourseError, match=r"unsafe entry .*evil\.ipynb.* refusing to extract"):
        collect(archive, LAB, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "evil.ipynb").exists()


def test_zip_size_and_file_count_are_capped(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "export.zip", {"alice.ipynb": "x" * 200, "bob.ipynb": "{}"})
    monkeypatch.setattr(collect_module, "MAX_ZIP_BYTES", 100)
    with pytest.raises(CourseError, match="more than 100 bytes uncompressed"):
        collect(archive, LAB, tmp_path / "out")
    monkeypatch.setattr(collect_module, "MAX_ZIP_BYTES", 1000)
    monkeypatch.setattr(collect_module, "MAX_ZIP_FILES", 1)
    with pytest.raises(CourseError, match="holds 2 files, more than the 1 allowed"):
        collect(archive, LAB, tmp_path / "out")


def test_unreadable_notebooks_are_reported_and_kept(tmp_path):
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "bob.ipynb").write_text("{not json")
    cells = '[{"cell_type": "markdown", "id": "a", "metadata": {}}]'  # no source
    (subs / "carol.ipynb").write_text(f'{{"nbformat": 4, "nbformat_minor": 5, "metadata": {{}}, "cells": {cells}}}')
    results, dest = run(subs, tmp_path)
    assert results["bob"].status == results["carol"].status == "unreadable"
    assert results["bob"].reason.startswith("not a readable notebook: Notebook does not appear to be JSON")
    assert results["carol"].reason == "not a valid notebook: 'source' is a required property"
    assert results["bob"].repairs == []
    for student in ("bob", "carol"):
        assert files(dest / student) == [f"{NOTEBOOK}.unreadable", "repair.log"]
        assert (dest / student / f"{NOTEBOOK}.unreadable").read_bytes() == (subs / f"{student}.ipynb").read_bytes()


def label(cell: nbformat.NotebookNode) -> str:
    """The repair log's name of a graded cell of this lab (answer or test)."""
    kind = "answer" if nbgrader(cell)["solution"] else "test"
    return f"{kind} cell {nbgrader(cell)['grade_id']!r}"


def test_stripped_metadata_is_restored_and_answers_kept(tmp_path):
    nb = stripped(answered())
    del nb.metadata["kernelspec"]
    result, out = repair_one(tmp_path, nb)
    graded = [cell for cell in RELEASE.cells if nbgrader(cell)]
    assert result.status == "repaired"
    how = {True: "position", False: "source"}
    assert result.repairs == [
        f"restored nbgrader metadata of {label(cell)} (matched by {how[nbgrader(cell)['solution']]})" for cell in graded
    ] + ["restored notebook metadata 'kernelspec'"]
    assert graded_cell_ids(out) == GRADE_IDS
    assert answers(out) == answers(answered())
    assert without_ids(out) == without_ids(answered())
    assert out.nbformat_minor == RELEASE.nbformat_minor
    assert len({cell.id for cell in out.cells}) == len(out.cells)


def test_stripped_answer_is_matched_by_the_name_it_defines(tmp_path):
    nb = stripped(answered())
    at = cell_index(answered(), "task1_masked_loss") + 1
    extra = nbformat.v4.new_code_cell("print(masked_sft_loss)")
    del extra["id"]
    nb.cells.insert(at, extra)
    result, out = repair_one(tmp_path, nb)
    assert "restored nbgrader metadata of answer cell 'task1_masked_loss' (matched by name)" in result.repairs
    assert result.repairs[-1] == KEPT_1
    assert graded_cell_ids(out) == GRADE_IDS
    expected = answered()
    expected.cells.insert(at, extra)
    assert without_ids(out) == without_ids(expected)


def test_stripped_and_edited_test_cell_is_restored_after_its_answer(tmp_path):
    nb = stripped(answered())
    at = cell_index(answered(), "test_task1_masked_loss")
    nb.cells[at].source = "print('no tests')"
    result, out = repair_one(tmp_path, nb)
    assert result.repairs[:2] == [
        "restored nbgrader metadata of answer cell 'task1_masked_loss' (matched by name)",
        "restored deleted test cell 'test_task1_masked_loss'",
    ]
    assert result.repairs[-1] == KEPT_1
    expected = answered()
    expected.cells.insert(at + 1, nb.cells[at])
    assert without_ids(out) == without_ids(expected)


def test_edited_test_cell_and_grading_metadata_are_restored(tmp_path):
    nb = answered()
    nb.cells[cell_index(nb, "test_task1_masked_loss")].source = "pass  # no tests here"
    nb.cells[cell_index(nb, "task1_masked_loss")].metadata.nbgrader.update(grade=True, points=50)
    nb.cells[cell_index(nb, "test_task2_sft_example")].metadata.nbgrader.points = 100
    nb.cells[cell_index(nb, "test_task4_sample_wise")].metadata.tags = ["skip-execution"]
    result, out = repair_one(tmp_path, nb)
    assert result.status == "repaired"
    assert result.repairs == [
        "restored edited metadata of answer cell 'task1_masked_loss' (grade, points)",
        "restored edited test cell 'test_task1_masked_loss'",
        "restored edited metadata of test cell 'test_task2_sft_example' (points)",
        "restored edited metadata of test cell 'test_task4_sample_wise' (tags)",
    ]
    assert out == answered()


def test_deleted_test_cell_is_reinserted_in_place(tmp_path):
    nb = answered()
    del nb.cells[cell_index(nb, "test_task3_new_task")]
    result, out = repair_one(tmp_path, nb)
    assert result == Collected("alice", "alice.ipynb", "repaired", ["restored deleted test cell 'test_task3_new_task'"])
    assert out == answered()


def test_deleted_answer_cell_gets_its_blank_stub(tmp_path):
    nb = answered()
    at = cell_index(nb, "task2_sft_example")
    del nb.cells[at]
    result, out = repair_one(tmp_path, nb)
    assert result.repairs == ["restored deleted answer cell 'task2_sft_example' as its blank stub"]
    expected = answered()
    expected.cells[at] = RELEASE.cells[at]
    assert out == expected
    assert graded_cell_ids(out) == GRADE_IDS


def test_added_cells_are_kept_and_only_counted(tmp_path):
    nb = answered()
    scratch = nbformat.v4.new_code_cell("print('scratch')")
    nb.cells.insert(cell_index(nb, "task1_masked_loss") + 1, scratch)
    result, out = repair_one(tmp_path, nb)
    assert result == Collected("alice", "alice.ipynb", "ok", [KEPT_1])
    assert out == nb


def test_copied_graded_cell_loses_its_nbgrader_metadata(tmp_path):
    nb = answered()
    at = cell_index(nb, "test_task1_masked_loss")
    duplicate = copy.deepcopy(nb.cells[at])
    duplicate.id = "copy-of-test"
    nb.cells.insert(at + 1, duplicate)
    result, out = repair_one(tmp_path, nb)
    assert result.repairs == ["removed nbgrader metadata from a copy of cell 'test_task1_masked_loss'", KEPT_1]
    assert graded_cell_ids(out) == GRADE_IDS
    assert out.cells[at + 1].source == duplicate.source
    assert "nbgrader" not in out.cells[at + 1].metadata


def test_duplicate_student_ids_are_reported_not_overwritten(tmp_path):
    subs = tmp_path / "subs"
    write(subs / "alice.ipynb", answered())
    write(subs / "alice" / NOTEBOOK, answered())
    write(subs / "Jane Doe" / NOTEBOOK, answered())
    write(subs / "Jane_Doe.ipynb", answered())
    write(subs / "Bob Smith" / NOTEBOOK, answered())
    results, dest = run(subs, tmp_path)
    assert results == {
        "alice": Collected(
            "alice",
            f"alice/{NOTEBOOK}, alice.ipynb",
            "ambiguous",
            [],
            "2 submissions map to student id 'alice': file alice.ipynb, folder alice/",
        ),
        "Bob_Smith": Collected(
            "Bob_Smith", f"Bob Smith/{NOTEBOOK}", "ok", [], "student id 'Bob Smith' made filesystem-safe"
        ),
        "Jane_Doe": Collected(
            "Jane_Doe",
            f"Jane Doe/{NOTEBOOK}, Jane_Doe.ipynb",
            "ambiguous",
            [],
            "2 submissions map to student id 'Jane_Doe': file Jane_Doe.ipynb, folder Jane Doe/; "
            "student id 'Jane Doe' made filesystem-safe",
        ),
    }
    assert files(dest / "alice") == [f"candidates/1_{NOTEBOOK}", "candidates/2_alice.ipynb", "repair.log"]


def test_destination_must_be_new_or_empty(tmp_path):
    write(tmp_path / "subs" / "alice.ipynb", answered())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("")
    with pytest.raises(CourseError, match="is not empty"):
        collect(tmp_path / "subs", LAB, tmp_path / "out")
    with pytest.raises(CourseError, match="inside the submissions folder"):
        collect(tmp_path / "subs", LAB, tmp_path / "subs" / "out")
