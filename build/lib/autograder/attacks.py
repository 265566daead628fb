"""The adversarial suite: submissions of a lab that each try one attack on the grader.

Every attack submission is the lab solved honestly, except its last task, whose answer cell (or test
cell) carries the attack. A contained attack therefore ends with exactly the honest score: full marks
minus the last task's points (``expected_score``), status ``graded`` (or the explicit status an
unparseable file gets), and no trace of hidden material in what the grader keeps. Attacks on a resource
run under a lowered limit for it, with bounds that keep the machine safe even if the limit failed (the
memory bomb asks for 4 GiB under 2 GiB, the fork bomb for 400 sleeping processes under 96); time limits
are the lab's own (``metadata.posttrain.grading``), which its honest cells must fit in.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from autograder.course import Lab, read_source

SOLUTION_MARKERS = re.compile(r"^\s*### (BEGIN|END) SOLUTION\s*\n", re.MULTILINE)
# Printed by an attack only if it got out: must never appear in a graded notebook's outputs.
BREACH_MARKERS = ("NETWORK-REACHED", "SOLUTIONS-READ")


@dataclass(frozen=True)
class Attack:
    """One attack: code for the last answer cell, or a change to the last test cell, and the limits it tests."""

    name: str
    answer_code: str = ""  # replaces the last answer cell's source
    test_code: str | None = None  # replaces the last test cell's source; "" deletes the cell
    limits: dict[str, int] = field(default_factory=dict)  # grading limits this attack is run under
    unreadable: bool = False  # write invalid JSON instead of a notebook
    strip_metadata: bool = False  # drop every cell's nbgrader metadata


ALWAYS_EQUAL = """class AlwaysEqual(float):
    def __eq__(self, other):
        return True
    __ne__ = lambda self, other: False
    __le__ = __ge__ = __lt__ = __gt__ = __eq__
    __hash__ = float.__hash__


def {name}(*args, **kwargs):
    return AlwaysEqual(0)
"""

ATTACKS = (
    Attack("infinite_loop", "while True:\n    pass"),  # under the lab's own cell time limit
    Attack("kernel_exit", "import os\nos._exit(0)"),
    Attack(
        "memory_bomb", "hog = bytearray(4 * 1024**3)\nhog[::4096] = b'x' * len(hog[::4096])", limits={"memory_mb": 2048}
    ),
    Attack(
        "fork_bomb",
        "import os, time\nfor _ in range(400):\n    if os.fork() == 0:\n        time.sleep(20)\n        os._exit(0)",
        limits={"processes": 96},
    ),
    Attack("print_flood", "chunk = 'x' * 2**20\nfor _ in range(1024):\n    print(chunk)"),
    Attack(
        "huge_file",
        "with open('huge.bin', 'wb') as handle:\n    for _ in range(1024):\n        handle.write(bytes(2**20))",
    ),
    Attack("deleted_test", test_code=""),
    Attack("edited_test", test_code="assert True  # edited by the student"),
    Attack("test_replaced_by_pass", test_code="pass"),
    Attack(
        "read_hidden_material",
        "import glob\nfound = []\nfor pattern in {patterns!r}:\n"
        "    for path in glob.glob(pattern, recursive=True):\n"
        "        try:\n            found.append(open(path, errors='replace').read())\n"
        "        except OSError:\n            pass\n"
        "if found:\n    print('SOLUTIONS-READ', *found)",
    ),
    Attack(
        "network_call",
        "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 53), timeout=5)\n"
        "    print('NETWORK-' + 'REACHED')\nexcept OSError as exc:\n    print('no network:', exc)",
    ),
    Attack(
        "monkey_patch_checks",
        "import builtins, numpy.testing, torch.testing\n"
        "torch.testing.assert_close = lambda *args, **kwargs: None\n"
        "numpy.testing.assert_allclose = lambda *args, **kwargs: None\n"
        "builtins.print = lambda *args, **kwargs: None\n{always_equal}",
    ),
    Attack("always_equal_answer", "{always_equal}"),
    Attack(
        "overwrite_output_notebook",
        "import json, os, pathlib\nfake = {{'cells': [], 'metadata': {{}}, 'nbformat': 4, 'nbformat_minor': 5}}\n"
        "for folder in (pathlib.Path.cwd(), pathlib.Path.cwd().parent, pathlib.Path('/tmp')):\n"
        "    try:\n        (folder / '{lab}.ipynb').write_text(json.dumps(fake))\n"
        "    except OSError:\n        pass",
    ),
    Attack("stripped_metadata", strip_metadata=True),
    Attack("invalid_json", unreadable=True),
)


def answer_sources(lab: Lab) -> dict[str, str]:
    """The solution code of every answer cell (solution markers removed), by grade_id."""
    return {
        cell.metadata["nbgrader"]["grade_id"]: SOLUTION_MARKERS.sub("", cell.source)
        for cell in read_source(lab.source).cells
        if cell.metadata.get("nbgrader", {}).get("solution")
    }


def solved_release(lab: Lab, skip: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    """The released notebook with every answer cell filled with the solution, except those in ``skip``."""
    solutions = answer_sources(lab)
    notebook = nbformat.read(lab.release, as_version=4)
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in solutions and grade_id not in skip:
            cell.source = solutions[grade_id]
    return notebook


def last_task(lab: Lab) -> tuple[str, list[str], float]:
    """The last answer cell's grade_id, the test cells after it and their points (what an attack may cost)."""
    cells = read_source(lab.source).cells
    meta = [cell.metadata.get("nbgrader", {}) for cell in cells]
    last = max(i for i, m in enumerate(meta) if m.get("solution"))
    tests = [m for m in meta[last + 1 :] if m.get("grade") and not m.get("solution")]
    return meta[last]["grade_id"], [m["grade_id"] for m in tests], float(sum(m.get("points", 0) for m in tests))


def expected_score(lab: Lab) -> float:
    """The score of an attack submission whose attack is contained: everything but the last task."""
    source = read_source(lab.source)
    total = sum(cell.metadata.get("nbgrader", {}).get("points", 0) for cell in source.cells)
    return float(total) - last_task(lab)[2]


def write_attack(lab: Lab, attack: Attack, path: Path) -> Path:
    """Write the submission carrying ``attack`` to ``path`` and return it."""
    answer_id, test_ids, _ = last_task(lab)
    if attack.unreadable:
        path.write_text('{"cells": [ this is not json', encoding="utf-8")
        return path
    notebook = solved_release(lab, skip=(answer_id,))
    defined = re.search(r"^def (\w+)\(", answer_sources(lab)[answer_id], re.MULTILINE)
    code = attack.answer_code.format(
        always_equal=ALWAYS_EQUAL.format(name=defined.group(1) if defined else "answer"),
        patterns=[str(lab.repo / "solutions" / "*"), "/tmp/**/gradebook.db", "/tmp/**/source/**/*.ipynb"],
        lab=lab.name,
    )
    cells = []
    for cell in notebook.cells:
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id == answer_id and code:
            cell.source = code
        if grade_id in test_ids and attack.test_code is not None:
            if attack.test_code == "":
                continue
            cell.source = attack.test_code
        if attack.strip_metadata:
            cell = copy.deepcopy(cell)
            cell.metadata.pop("nbgrader", None)
        cells.append(cell)
    notebook.cells = cells
    nbformat.write(notebook, path)
    return path
