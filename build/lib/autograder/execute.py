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
"""

from __future__ import annotations

import copy
import json
import math
import time

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat import NotebookNode
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute
from traitlets import Integer

SKIPPED_CELL = (
    'raise RuntimeError("autograder: this cell {why}. It was replaced by this error and the notebook was run '
    'again without it; only the tasks that need it lose points.")'
)


class CellTimedOut(Exception):
    """A cell ran past its time limit."""


class ResilientExecute(Execute):
    """nbgrader ``Execute`` with per-cell damage control for kernel deaths, timeouts and huge outputs."""

    max_reruns = Integer(3, help="fresh-kernel reruns after a cell kills the kernel or times out").tag(config=True)
    notebook_timeout = Integer(3600, help="seconds for the whole notebook, reruns included").tag(config=True)
    max_output_bytes = Integer(1_000_000, help="output kept per cell; the rest is dropped").tag(config=True)

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
            self._running_index, self._output_bytes = None, {}
            try:
                run, resources = super().preprocess(run, resources, km)
                run.metadata["autograder"] = {"execution_seconds": round(time.monotonic() - start, 2)}
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
                    run.metadata["autograder"] = {"execution_seconds": round(time.monotonic() - start, 2)}
                    return run, resources
                self.log.warning("cell %d %s; rerunning without it", index, why)
                skipped[index] = why

    def preprocess_cell(self, cell: NotebookNode, resources: dict, index: int) -> tuple[NotebookNode, dict]:
        """Remember which cell runs, so a kernel death can be pinned on it."""
        self._running_index = index
        return super().preprocess_cell(cell, resources, index)

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
