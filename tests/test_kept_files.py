"""Files a graded notebook wrote come back only as what they claim to be: regular UTF-8 files inside the kernel's
working directory, under a size limit (``autograder.grade.kept_files``; the demo and the tests keep each solution's
results JSON this way, so the notebook runs once). The kernel wrote them, so a link to a file only the grader may
read, through a file or a folder, is reported and never read."""

from __future__ import annotations

import json

from autograder.grade import KEPT_FILE_BYTES, GradeJob, GradeResult, kept_files
from autograder.scheduler import ResultStore


def test_matching_text_files_are_kept_and_every_other_match_is_reported(tmp_path):
    work = tmp_path / "scratch"
    (work / "results").mkdir(parents=True)
    (work / "results" / "01.json").write_text('{"new": 1.0}', encoding="utf-8")
    (work / "results" / "big.json").write_text("x" * (KEPT_FILE_BYTES + 1), encoding="utf-8")
    (work / "results" / "binary.json").write_bytes(b"\xff\xfe\x00")
    secret = tmp_path / "grader_only.json"
    secret.write_text('{"secret": true}', encoding="utf-8")
    (work / "results" / "link.json").symlink_to(secret)
    (work / "elsewhere").symlink_to(tmp_path, target_is_directory=True)
    (work / "notes.txt").write_text("not asked for", encoding="utf-8")

    kept, remarks = kept_files(work, ("results/*.json", "elsewhere/*.json", "missing/*.json"))

    assert kept == {"results/01.json": '{"new": 1.0}'}
    assert remarks == [
        f"results/big.json not kept: larger than {KEPT_FILE_BYTES} bytes",
        "results/binary.json not kept: not UTF-8 text",
        "results/link.json not kept: not a regular file",
        "elsewhere/grader_only.json not kept: not a regular file",
    ]


def test_nothing_is_kept_unless_asked(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "01.json").write_text("{}", encoding="utf-8")
    assert kept_files(tmp_path, ()) == ({}, [])


def test_the_result_store_writes_kept_files_per_student_and_not_into_the_results_log(tmp_path, monkeypatch):
    from autograder.course import REPO_ROOT, resolve_lab

    lab = resolve_lab(REPO_ROOT, "01")
    store = ResultStore(lab, tmp_path / "grading")
    monkeypatch.setattr(store, "_merge", lambda result: None)  # no gradebook needed for this
    result = GradeResult("alice", "graded", 10.0, 100.0, kept={"results/01.json": '{"new": 1.0}'})
    store.record(GradeJob(lab, "alice", None), result)
    assert (tmp_path / "grading" / "outputs" / "alice" / "results" / "01.json").read_text() == '{"new": 1.0}'
    record = json.loads((tmp_path / "grading" / "results.jsonl").read_text())
    assert "kept" not in record and record["score"] == 10.0
