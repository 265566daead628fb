"""The kernel guard and the static screen (issue #19): test cells count only on a genuine verdict, tampering is
undone and flagged, and ordinary lab code is never flagged."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from autograder.execute import GuardNotInstalled, ResilientExecute
from autograder.screen import guard_plan, screen_cell, screen_notebook

REPO = Path(__file__).resolve().parents[1]
SETUP = "from posttrain.core.checks import assert_float_close\nimport torch"
TEST = (
    "assert_float_close(float(square(4)), 16.0, tol=1e-9, name='square(4)')\n"
    "assert (torch.tensor([square(2)]) == 4).all()"
)
HONEST = "def square(x):\n    return x * x"
# Each answer is wrong and tampers with one thing; the guard restores it before the next test. The input path is
# not restored (the test cell's own call goes through it): every later test fails, so it comes last.
TAMPERING = {
    "module entry": "import posttrain.core.checks as c\nc.assert_float_close = lambda *a, **k: None",
    "function code": "import posttrain.core.checks as c\nc.assert_float_close.__code__ = (lambda *a, **k: 0).__code__",
    "builtin": "import builtins\nbuiltins.float = lambda x: 16.0",
    "tensor method": "torch.Tensor.all = lambda _: True\nimport posttrain.core.checks as c\nc.assert_float_close = id",
    "input path": "get_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])",
}


def graded_test(source: str, grade_id: str) -> nbformat.NotebookNode:
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "grade_id": grade_id, "points": 1, "locked": True}
    return cell


def run(cells: list[nbformat.NotebookNode], plan: dict | None = None) -> nbformat.NotebookNode:
    """Execute ``cells`` through ``ResilientExecute`` with the guard plan of their own setup and tests."""
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    plan = plan if plan is not None else guard_plan(notebook)
    executed, _ = ResilientExecute(guard_plan=json.dumps(plan)).preprocess(notebook, {"metadata": {"path": "."}})
    return executed


def failed(cell: nbformat.NotebookNode) -> bool:
    return any(output.output_type == "error" for output in cell.outputs)


@pytest.fixture(scope="module")
def tampered() -> nbformat.NotebookNode:
    """One kernel: an honest test, then each tampering followed by a wrong answer and the test, then honest again."""
    cells = [new_code_cell(SETUP), new_code_cell(HONEST), graded_test(TEST, "honest")]
    leak = "import linecache\nkey = any('install(' in ''.join(e[2]) for e in linecache.cache.values())\n"
    for name, code in TAMPERING.items():
        if name == "input path":
            cells += [new_code_cell(HONEST), graded_test(TEST, "honest again")]
            cells += [new_code_cell(leak + "print('KEY' if key else 'no key')\nprint(In)")]
        cells += [new_code_cell(f"{code}\ndef square(x):\n    return 0"), graded_test(TEST, name)]
    return run(cells)


def by_id(nb: nbformat.NotebookNode) -> dict[str, nbformat.NotebookNode]:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells if "nbgrader" in c.metadata}


def test_an_honest_test_passes_and_its_verdict_is_not_kept(tampered: nbformat.NotebookNode) -> None:
    honest = by_id(tampered)["honest"]
    assert not failed(honest) and honest.outputs == []
    assert not failed(by_id(tampered)["honest again"])  # every tampering was undone


@pytest.mark.parametrize("name", list(TAMPERING))
def test_tampering_fails_the_test_and_is_flagged(tampered: nbformat.NotebookNode, name: str) -> None:
    assert failed(by_id(tampered)[name])
    assert any(flag["cell"] == name for flag in tampered.metadata["autograder"]["flags"])


def test_the_key_and_the_test_sources_stay_out_of_the_kernel(tampered: nbformat.NotebookNode) -> None:
    printed = "".join(output.get("text", "") for output in tampered.cells[-3].outputs)
    assert "no key" in printed and "assert_float_close(float" not in printed and "__posttrain_grader__" not in printed


def test_a_guard_that_cannot_install_stops_grading_with_a_clear_error() -> None:
    with pytest.raises(GuardNotInstalled, match="guard failed in the kernel"):
        run([new_code_cell("x = 1"), graded_test("assert x == 1", "t")], plan={"modules": []})


ORDINARY = [
    "%matplotlib inline\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.title('loss')",
    "from IPython.display import display, HTML, Markdown\ndisplay(HTML('<b>hi</b>'))",
    "%%time\nimport numpy as np\nx = np.arange(3)\nprint(x.sum())",
    "!ls\nimport torch\ntorch.backends.cudnn.deterministic = True\ntorch.manual_seed(0)",
    "def helper(xs):\n    return [x * 2 for x in xs]\n\n\nclass Box:\n    def __init__(self):\n        self.items = []",
    "from posttrain.core import checks\nimport posttrain.methods.merging as merging\nimport sys\nprint(sys.version)",
    "import functools\n@functools.lru_cache\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)",
]
TAMPERING_CODE = {
    "get_ipython().events.register('pre_run_cell', print)": "IPython shell",
    "import sys\nsys.modules['posttrain.core.checks'] = None": "sys.modules",
    "import builtins\nbuiltins.abs = len": "imports builtins",
    "code = 'x' + '=1'\nexec(code)": "built at run time",
    "exec('import ctypes')": "imports ctypes (in a string it runs)",
    "import torch\nsetattr(torch.testing, 'assert_close', print)": "setattr on torch.testing",
    "import torch\ntorch.testing.assert_close = print": "writes an attribute of torch.testing.assert_close",
    "def f():\n    pass\nf.__code__ = (lambda: 1).__code__": "uses .__code__",
    "import threading\nthreading.Thread(target=print).start()": "imports threading",
    "getattr(__import__('sys'), 'settrace')(None)": "uses __import__",
    "%config InteractiveShell.ast_node_interactivity = 'none'": "runs the magic %config",
}


@pytest.mark.parametrize("code", ORDINARY)
def test_ordinary_lab_code_is_not_flagged(code: str) -> None:
    assert screen_cell(code) == []


@pytest.mark.parametrize(("code", "message"), list(TAMPERING_CODE.items()))
def test_tampering_code_is_flagged_with_what_it_does(code: str, message: str) -> None:
    assert any(message in found for _, found in screen_cell(code)), screen_cell(code)


@pytest.mark.parametrize("lab", sorted(p.stem for p in (REPO / "solutions").glob("*.ipynb")))
def test_no_lab_solution_is_flagged_and_its_tests_names_are_watched(lab: str) -> None:
    source = nbformat.read(REPO / "solutions" / f"{lab}.ipynb", as_version=4)
    assert screen_notebook(source, source) == []
    answers_only = nbformat.from_dict(source)
    answers_only.cells = [cell for cell in source.cells if cell.metadata.get("nbgrader", {}).get("solution")]
    assert screen_notebook(answers_only, source) == []
    plan = guard_plan(source)
    assert "posttrain" in plan["trees"] and plan["names"], plan
