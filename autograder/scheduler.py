"""Grade a whole class on dask.distributed, with one writer and results that survive a killed run.

Workers run ``autograder.grade.grade_submission`` (one throwaway nbgrader course per submission, a
sandboxed kernel each); only this process writes. It appends every result to ``results.jsonl`` the
moment it arrives and merges it into one nbgrader gradebook, so:

* a killed run resumes where it stopped: submissions whose bytes were already graded are skipped;
* re-grading replaces a student's submission in the gradebook, never duplicates it (the last line of
  ``results.jsonl`` for a student wins);
* there is never more than one SQLite writer.

Clusters: a ``LocalCluster`` (default), an existing scheduler by address, or Slurm / Kubernetes through
``dask-jobqueue`` / ``dask-kubernetes`` (``pip install -e .[cluster]``; configured in dask's own YAML
config, see README "Grading on a cluster").
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry
from sqlalchemy.exc import SAWarning

from autograder.course import CourseError, Lab
from autograder.grade import (
    ERROR,
    GRADED,
    GradeJob,
    GradeResult,
    assignment_gradebook,
    grade_submission,
    submission_digest,
)

RESULTS = "results.jsonl"
CLUSTERS = ("local", "slurm", "kubernetes")


class ClusterError(Exception):
    """A cluster that cannot be started, with the fix."""


def make_client(workers: int, scheduler: str | None = None, cluster: str = "local"):
    """A dask ``Client``: to ``scheduler`` if given, else to a new cluster of ``workers`` single-threaded workers."""
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    if cluster == "local":
        # A nanny writes its pre-spawn environment (OMP_NUM_THREADS=1, ...) into *this* process's os.environ and never
        # restores it, so every notebook run after a grading run would be single-threaded. The workers only start
        # kernels, whose thread counts ``kernel_settings`` sets, so they need none of it.
        with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
            local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
        return Client(local)
    try:
        if cluster == "slurm":
            from dask_jobqueue import SLURMCluster

            remote = SLURMCluster()  # cores, memory, queue, job_extra_directives: from ~/.config/dask/jobqueue.yaml
        elif cluster == "kubernetes":
            from dask_kubernetes.operator import KubeCluster

            remote = KubeCluster(name="posttrain-grader")  # image and resources: ~/.config/dask/kubernetes.yaml
        else:
            raise ClusterError(f"unknown cluster {cluster!r}; choose one of {', '.join(CLUSTERS)}")
    except ImportError as exc:
        raise ClusterError(f"--cluster {cluster} needs {exc.name}: pip install -e '.[cluster]'") from exc
    remote.scale(workers)
    return Client(remote)


class ResultStore:
    """The grading folder of one lab: ``results.jsonl``, ``autograded/<student>.ipynb``, ``gradebook.db`` and the files
    each notebook wrote that the grading keeps (``outputs/<student>/``, see ``GradeJob.keep``)."""

    def __init__(self, lab: Lab, folder: Path) -> None:
        self.lab, self.folder = lab, folder
        (folder / "autograded").mkdir(parents=True, exist_ok=True)
        self.results = folder / RESULTS
        self.gradebook_url = f"sqlite:///{(folder / 'gradebook.db').resolve()}"

    def latest(self) -> dict[str, dict]:
        """The last recorded result of each student.

        A run killed while appending leaves a last line without its newline; that line is cut off (the student is
        graded again), so that the next result does not run into it. Any other line that is not JSON is an error.
        """
        if not self.results.is_file():
            return {}
        text = self.results.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            self.results.write_text(text, encoding="utf-8")
        records = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CourseError(
                    f"{self.results}, line {number}: not valid JSON ({exc.msg}). Fix or delete that line; grading "
                    "that student again appends a fresh one."
                ) from exc
            records[record["student"]] = record
        return records

    def pending(self, jobs: list[GradeJob], regrade: bool = False) -> list[GradeJob]:
        """The jobs still to grade: all with ``regrade``, else those whose exact bytes have no final result."""
        if regrade:
            return jobs
        done = self.latest()
        return [
            job
            for job in jobs
            if job.student not in done
            or done[job.student]["status"] == ERROR
            or done[job.student]["submission_sha256"] != submission_digest(job)
        ]

    def prepare_gradebook(self) -> None:
        """Start the gradebook from the lab's assignment (notebooks, grade cells, points) unless it exists."""
        database = self.folder / "gradebook.db"
        if not database.is_file():
            shutil.copyfile(assignment_gradebook(self.lab), database)

    def record(self, job: GradeJob, result: GradeResult) -> None:
        """Append ``result`` to ``results.jsonl``, save its autograded notebook and the files it kept
        (``outputs/<student>/``) and merge it into the gradebook."""
        notebook = self.folder / "autograded" / f"{job.student}.ipynb"
        if result.autograded:
            notebook.write_text(result.autograded, encoding="utf-8")
        for relative, text in result.kept.items():
            path = self.folder / "outputs" / job.student / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        record = {key: value for key, value in asdict(result).items() if key not in ("autograded", "kept")}
        record["repairs"] = repair_notes(job) + [f"{note} (when graded)" for note in result.repairs]
        with self.results.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if result.status == GRADED:
            self._merge(result)

    def _merge(self, result: GradeResult) -> None:
        """Replace the student's submission in the gradebook by ``result``'s scores."""
        name = self.lab.name
        with warnings.catch_warnings(), Gradebook(self.gradebook_url) as gb:
            warnings.simplefilter("ignore", SAWarning)  # nbgrader's gradebook code trips SQLAlchemy 2 warnings
            gb.update_or_create_student(result.student)
            try:
                gb.remove_submission(name, result.student)
            except MissingEntry:
                pass
            gb.add_submission(name, result.student)
            for grade_id, score in result.grades.items():
                gb.find_grade(grade_id, name, name, result.student).auto_score = score
            gb.db.commit()


def repair_notes(job: GradeJob) -> list[str]:
    """The metadata repairs ``collect`` logged for this submission (``repair.log`` beside it)."""
    if job.submission is None:
        return []
    log = job.submission.parent / "repair.log"
    if job.submission.parent.name != job.student or not log.is_file():
        return []
    return [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]


def grade_class(jobs: list[GradeJob], store: ResultStore, client=None) -> Iterator[GradeResult]:
    """Grade ``jobs`` (in parallel when ``client`` is a dask client), recording each result as it arrives."""
    store.prepare_gradebook()
    by_student = {job.student: job for job in jobs}
    results = map(grade_submission, jobs) if client is None else _on_cluster(client, jobs)
    for count, result in enumerate(results, 1):
        store.record(by_student[result.student], result)
        print(f"[{count}/{len(jobs)}] {result.student}: {result.status} {result.score}", file=sys.stderr, flush=True)
        yield result


def grade_jobs(
    jobs: list[GradeJob], store: ResultStore, workers: int = 1, scheduler: str | None = None, cluster: str = "local"
) -> list[GradeResult]:
    """Grade ``jobs`` into ``store``: in this process with one local worker, else on a dask cluster (closed after)."""
    if not jobs or (workers == 1 and scheduler is None and cluster == "local"):
        return list(grade_class(jobs, store))
    with connected(workers, scheduler, cluster) as client:
        return list(grade_class(jobs, store, client))


@contextmanager
def connected(workers: int, scheduler: str | None = None, cluster: str = "local") -> Iterator:
    """A dask client (``make_client``) that is closed afterwards, with the cluster it started."""
    client = make_client(workers, scheduler, cluster)
    try:
        yield client
    finally:
        client.close()
        if scheduler is None and client.cluster is not None:
            client.cluster.close()


def _on_cluster(client, jobs: list[GradeJob]) -> Iterator[GradeResult]:
    """Submit every job to ``client``; yield results as they finish. A worker lost while grading (killed,
    out of memory) becomes an ``error`` result for its student, never a missing one."""
    from dask.distributed import as_completed

    futures = {
        client.submit(grade_submission, job, key=f"grade-{i}-{job.student}", pure=False): job
        for i, job in enumerate(jobs)
    }
    for future in as_completed(futures):
        try:
            yield future.result()
        except Exception as exc:
            job = futures[future]
            yield GradeResult(job.student, ERROR, reason=f"the grading worker failed: {type(exc).__name__}: {exc}")


def default_threads(workers: int) -> int:
    """CPU threads per kernel so that ``workers`` kernels share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)
