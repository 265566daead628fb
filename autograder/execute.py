"""nbgrader's notebook execution, made to lose only what a broken cell really costs.

Plain nbgrader gives no grade at all when the kernel dies, and lets one stuck cell eat the notebook's
time. ``ResilientExecute`` replaces nbgrader's ``Execute`` step in autograding and applies the rule
students are told (README, "How your notebook is graded"):

1. A cell that kills the kernel (``os._exit``, a crash, the memory limit) or runs past its time limit
   is replaced by a cell that raises an error saying so, and the notebook is run again from the top in
   a fresh kernel. Tasks that do not depend on that cell keep their points; the cell's own test fails.
2. After ``max_reruns`` such reruns, or once the notebook's total time is used up, every cell that did
   not run gets an error output, so a test that never ran can never pass.
3. Output beyond ``max_output_bytes`` per cell is dropped while it streams (the grader's memory stays
   bounded however much a cell prints).
4. A test cell counts only on the verdict of the grader's guard (``autograder/kernel_guard.py``): the guard is
   installed in each fresh kernel before the first cell, each test cell is sent through it with a fresh token, and
   a test without a verdict that verifies fails with the reason. What the guard found is kept, as flags for the
   instructor, in the notebook's ``metadata.autograder.flags``.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import math
import secrets
import time
from pathlib import Path

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell, new_output
from nbgrader.preprocessors import Execute
from nbgrader.utils import is_grade, is_solution
from traitlets import Integer, Unicode

from autograder import kernel_guard

SKIPPED_CELL = (
    'raise RuntimeError("autograder: this cell {why}. It was replaced by this error and the notebook was run '
    'again without it; only the tasks that need it lose points.")'
)


GUARD_SOURCE = Path(kernel_guard.__file__).read_text(encoding="utf-8")
# Run as the kernel's first, unrecorded request: the guard's source and key never enter the student's namespace.
INSTALL_GUARD = (
    'exec(compile(__import__("base64").b64decode("{source}").decode(), "{filename}", "exec"), '
    '{{"__name__": "posttrain_grader"}})'
)
RUN_TEST = '{entry}("{token}", "{source}")'
NO_VERDICT = (
    "this test cell did not report back to the grader, so it counts as failed: an earlier cell changed how the "
    "notebook's cells run (the shell's input or AST transformers, run_cell, the kernel, or the display of outputs)"
)
BAD_VERDICT = "this test cell's report to the grader does not verify (it was forged or ran other code)"
DEFAULT_PLAN = {"imports": [], "modules": [], "trees": ["posttrain"], "names": {}}


class CellTimedOut(Exception):
    """A cell ran past its time limit."""


class GuardNotInstalled(RuntimeError):
    """The grader's guard failed in a fresh kernel, before any student code ran: a set-up fault, not a grade."""


class ResilientExecute(Execute):
    """nbgrader ``Execute`` with per-cell damage control for kernel deaths, timeouts and huge outputs."""

    max_reruns = Integer(3, help="fresh-kernel reruns after a cell kills the kernel or times out").tag(config=True)
    notebook_timeout = Integer(3600, help="seconds for the whole notebook, reruns included").tag(config=True)
    max_output_bytes = Integer(1_000_000, help="output kept per cell; the rest is dropped").tag(config=True)
    guard_plan = Unicode(
        json.dumps(DEFAULT_PLAN), help="JSON: what the guard watches (``autograder.screen.guard_plan`` of the lab)"
    ).tag(config=True)

    def preprocess(self, nb: NotebookNode, resources=None, km=None) -> tuple[NotebookNode, dict]:
        """Execute ``nb``, skipping cells that kill the kernel or time out, within the notebook's time limit."""
        start = time.monotonic()
        deadline = start + self.notebook_timeout
        cell_limit = self.timeout if self.timeout and self.timeout > 0 else math.inf
        self.timeout_func = lambda cell: max(1, int(min(cell_limit, deadline - time.monotonic())))
        skipped: dict[int, str] = {}
        while True:
            run = copy.deepcopy(nb)
            for index, why in skipped.items():
                run.cells[index].source = SKIPPED_CELL.format(why=why)
            self._running_index, self._output_bytes, self._guard_key, self._flags = None, {}, None, []
            self._guard_seconds = 0.0
            try:
                run, resources = super().preprocess(run, resources, km)
                run.metadata["autograder"] = self._summary(start)
                return run, resources
            except (DeadKernelError, CellTimedOut, CellTimeoutError) as exc:
                index = self._running_index
                if index is None:  # the kernel never ran a cell: a broken set-up, not a student's doing
                    raise
                why = _reason(exc)
                if time.monotonic() >= deadline - 1:
                    why = f"did not finish: the notebook used up its total time limit of {self.notebook_timeout} s"
                if time.monotonic() >= deadline - 1 or len(skipped) >= self.max_reruns:
                    self.log.warning("giving up on the rest of the notebook: cell %d %s", index, why)
                    _fail_unrun_cells(run, index, why)
                    run.metadata["autograder"] = self._summary(start)
                    return run, resources
                self.log.warning("cell %d %s; rerunning without it", index, why)
                skipped[index] = why

    def _summary(self, start: float) -> dict:
        """The notebook's ``metadata.autograder``: its execution time and the guard's flags."""
        return {
            "execution_seconds": round(time.monotonic() - start, 2),
            # the guard's capture of the kernel and its checks around each test, as it measured them in the kernel
            "guard_seconds": round(self._guard_seconds, 3),
            "flags": self._flags,
        }

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        """Run a cell (a test cell through the guard), remembering which one runs so a kernel death is pinned on it."""
        self._running_index = index
        if cell.cell_type != "code":
            return super().preprocess_cell(cell, resources, index)
        if self._guard_key is None:
            self._install_guard(index)
        if not is_test_cell(cell):
            return super().preprocess_cell(cell, resources, index)
        self._check_assign_resources(resources)
        source, token = cell.source, secrets.token_hex(16)
        encoded = base64.b64encode(source.encode("utf-8")).decode("ascii")
        cell.source = RUN_TEST.format(entry=kernel_guard.ENTRY_POINT, token=token, source=encoded)
        try:
            cell = self.execute_cell(cell, index, store_history=False)
        finally:
            cell.source = source
        self._check_verdict(cell, token)
        return cell, self.resources

    def _install_guard(self, index: int) -> None:
        """Install the guard in the fresh kernel with a new key; raise ``GuardNotInstalled`` if it fails."""
        self._guard_key = secrets.token_bytes(32)
        call = f"\ninstall({self._guard_key.hex()!r}, {self.guard_plan!r})\n"
        encoded = base64.b64encode((GUARD_SOURCE + call).encode("utf-8")).decode("ascii")
        install = new_code_cell(INSTALL_GUARD.format(source=encoded, filename=kernel_guard.INSTALL_FILENAME))
        saved = self.nb.cells[index]
        try:
            self.execute_cell(install, index, store_history=False)
        finally:
            self.nb.cells[index] = saved
        errors = [out for out in install.outputs if out.output_type == "error"]
        if errors:
            raise GuardNotInstalled(f"the grader's guard failed in the kernel: {errors[0].ename}: {errors[0].evalue}")

    def _check_verdict(self, cell: NotebookNode, token: str) -> None:
        """Score a test cell by its guard verdict: take the verdict out of the outputs and, unless it verifies and
        says the test passed, make sure the cell carries an error output naming the reason."""
        verdicts = [out.data[kernel_guard.VERDICT_MIME] for out in cell.outputs if _is_verdict(out)]
        cell.outputs = [out for out in cell.outputs if not _is_verdict(out)]
        grade_id = cell.metadata["nbgrader"]["grade_id"]
        mine = [v for v in verdicts if isinstance(v, dict) and v.get("token") == token]
        digest = hashlib.sha256(cell.source.encode("utf-8")).hexdigest()
        genuine = [
            v
            for v in mine
            if hmac.compare_digest(str(v.get("mac", "")), kernel_guard.sign(self._guard_key, v))
            and v.get("source_sha256") == digest
        ]
        if len(genuine) != 1 or len(verdicts) != 1:
            reason = NO_VERDICT if not verdicts else BAD_VERDICT
            self._flags.append({"cell": grade_id, "flag": reason})
            _add_error(cell, reason)
            return
        verdict = genuine[0]
        self._guard_seconds += float(verdict.get("guard_seconds", 0.0))
        self._flags += [{"cell": grade_id, "flag": flag} for flag in verdict["flags"]]
        if not verdict["passed"]:  # tampering is always named; a test's own error already is
            _add_error(cell, verdict["reason"] or "the test failed", only_if_none=not verdict["tampered"])

    async def _async_handle_timeout(self, timeout: int, cell: NotebookNode | None = None) -> None:
        """Treat a timeout like a kernel death: the cell is skipped and the notebook rerun."""
        raise CellTimedOut(f"ran past its time limit of {timeout} s")

    def output(self, outs: list[NotebookNode], msg: dict, display_id: str | None, cell_index: int):
        """Keep a cell's outputs until they reach ``max_output_bytes``, then one truncation note."""
        used = self._output_bytes.get(cell_index, 0)
        if used > self.max_output_bytes:
            return None
        used += len(json.dumps(msg["content"]))
        self._output_bytes[cell_index] = used
        if used > self.max_output_bytes:
            note = f"\n[autograder: output truncated at {self.max_output_bytes} bytes]\n"
            outs.append(new_output("stream", name="stderr", text=note))
            return None
        return super().output(outs, msg, display_id, cell_index)


def is_test_cell(cell: NotebookNode) -> bool:
    """Whether nbgrader scores this code cell as a test (graded, not an answer)."""
    return cell.cell_type == "code" and is_grade(cell) and not is_solution(cell)


def _is_verdict(output: NotebookNode) -> bool:
    """Whether an output claims to be a guard verdict (genuine or not)."""
    is_display = output.get("output_type") in ("display_data", "execute_result")
    return is_display and kernel_guard.VERDICT_MIME in output.get("data", {})


def _add_error(cell: NotebookNode, reason: str, only_if_none: bool = False) -> None:
    """Give ``cell`` an error output (nbgrader fails a test cell that has one) saying ``reason``."""
    if only_if_none and any(out.output_type == "error" for out in cell.outputs):
        return
    cell.outputs.append(
        new_output("error", ename="AutograderError", evalue=reason, traceback=[f"AutograderError: {reason}"])
    )


def _reason(exc: Exception) -> str:
    """A sentence fragment saying why a cell was skipped."""
    if isinstance(exc, DeadKernelError):
        return "stopped the Python kernel (it exited, crashed or hit the memory limit)"
    if isinstance(exc, CellTimeoutError):  # the reply came, but its output kept streaming past the limit
        return "kept sending output past its time limit"
    return str(exc)


def _fail_unrun_cells(nb: NotebookNode, from_index: int, why: str) -> None:
    """Give the cell at ``from_index`` and every later code cell an error output (an unrun test never passes)."""
    for cell in nb.cells[from_index:]:
        if cell.cell_type != "code":
            continue
        cell.outputs = [
            *cell.get("outputs", []),
            new_output("error", ename="AutograderError", evalue=f"this cell {why}", traceback=[f"this cell {why}"]),
        ]
