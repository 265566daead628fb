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

import base64
import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from autograder.course import Lab, read_source

SOLUTION_MARKERS = re.compile(r"^\s*### (BEGIN|END) SOLUTION[ \t]*(\n|$)", re.MULTILINE)
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
    flagged: bool = False  # the report must list a flag for it (the static screen or the kernel guard saw it)


ALWAYS_EQUAL = """class AlwaysEqual(float):
    def __eq__(self, other):
        return True
    __ne__ = lambda self, other: False
    __le__ = __ge__ = __lt__ = __gt__ = __eq__
    __hash__ = float.__hash__


def {name}(*args, **kwargs):
    return AlwaysEqual(0)
"""

# Patches every check function of the course (and torch's / numpy's testing asserts) and the names bound to them.
PATCH_CHECKS = """import sys as _sys


def _noop(*args, **kwargs):
    return None


def _is_checks(name):
    return name.startswith("posttrain") and name.endswith("checks") or name in ("torch.testing", "numpy.testing")


def _patch_checks():
    for _name, _module in list(_sys.modules.items()):
        if _is_checks(_name):
            for _attr in dir(_module):
                if _attr.startswith(("assert", "check")):
                    setattr(_module, _attr, _noop)
    for _key, _value in list(globals().items()):
        if callable(_value) and _is_checks(str(getattr(_value, "__module__", ""))):
            globals()[_key] = _noop
"""

# Attacks on the kernel: its input path (class 1) and the helpers the tests call (class 2), issue #19. Each answer is
# wrong (``{always_equal}``: an always-equal value) and would pass if the attack switched the tests off.
KERNEL_ATTACKS = (
    Attack(
        "input_transformer",
        "{always_equal}\nget_ipython().input_transformers_post.append(lambda lines: ['pass\\n'])",
        flagged=True,
    ),
    Attack(
        "ast_transformer",
        "{always_equal}\nimport ast\n\n\nclass _Skip(ast.NodeTransformer):\n    def visit_Module(self, node):\n"
        "        node.body = [ast.Pass()]\n        return node\n\n\nget_ipython().ast_transformers.append(_Skip())",
        flagged=True,
    ),
    Attack(
        "run_cell_rewritten",
        "{always_equal}\n_shell = get_ipython()\n"
        "_run_cell, _run_cell_async = _shell.run_cell, _shell.run_cell_async\n\n\n"
        "def _skip(raw_cell, *args, **kwargs):\n    return _run_cell('pass', *args, **kwargs)\n\n\n"
        "async def _skip_async(raw_cell, *args, **kwargs):\n"
        "    return await _run_cell_async('pass', *args, **kwargs)\n\n\n"
        "_shell.run_cell, _shell.run_cell_async = _skip, _skip_async",
        flagged=True,
    ),
    Attack(
        "kernel_skips_cells",
        "{always_equal}\n\n\nasync def _do_execute(code, silent, *args, **kwargs):\n"
        "    return {{'status': 'ok', 'execution_count': 0, 'payload': [], 'user_expressions': {{}}}}\n\n\n"
        "get_ipython().kernel.do_execute = _do_execute",
        flagged=True,
    ),
    Attack(
        "custom_exception_handler",
        "{always_equal}\n"
        "get_ipython().set_custom_exc((BaseException,), lambda shell, etype, value, tb, tb_offset=None: None)",
        flagged=True,
    ),
    Attack(
        "silent_tracebacks",
        "{always_equal}\n_shell = get_ipython()\n"
        "_shell.showtraceback = _shell.showsyntaxerror = lambda *args, **kwargs: None",
        flagged=True,
    ),
    Attack(
        "verdict_forged",
        "{always_equal}\nimport re\n\n\ndef _forge(lines):\n"
        "    found = re.search(r'\"([0-9a-f]{{32}})\"', ''.join(lines))\n    if not found:\n        return lines\n"
        "    verdict = {{'token': found.group(1), 'passed': True, 'reason': '', 'flags': [], 'source_sha256': '', "
        "'mac': '0' * 64}}\n"
        "    return ['from IPython.display import publish_display_data\\n',\n"
        "            'publish_display_data(' + repr({{'application/vnd.posttrain.verdict+json': verdict}}) + ')\\n"
        "']\n\n\n"
        "get_ipython().input_transformers_post.append(_forge)",
        flagged=True,
    ),
    Attack(
        "guard_replaced",
        "{always_equal}\nimport builtins\nbuiltins.__posttrain_grader__ = lambda token, source: None",
        flagged=True,
    ),
    Attack("checks_patched", "{always_equal}\n{patch_checks}\n_patch_checks()", flagged=True),
    Attack(
        "checks_patched_by_getattr",
        "{always_equal}\n_modules = getattr(__import__('sys'), 'mod' + 'ules')\n"
        "for _name in [n for n in _modules if n.startswith('posttrain') and n.endswith('checks')]:\n"
        "    for _attr in dir(_modules[_name]):\n        if _attr.startswith(('assert', 'check')):\n"
        "            setattr(_modules[_name], _attr, lambda *args, **kwargs: None)",
        flagged=True,
    ),
    Attack(
        "checks_module_replaced",
        "{always_equal}\nimport sys, types\n"
        "for _name in [n for n in list(sys.modules) if n.startswith('posttrain') and n.endswith('checks')]:\n"
        "    _fake = types.ModuleType(_name)\n    for _attr in dir(sys.modules[_name]):\n"
        "        setattr(_fake, _attr, lambda *args, **kwargs: None)\n    sys.modules[_name] = _fake\n"
        "    for _key, _value in list(globals().items()):\n"
        "        if getattr(_value, '__name__', None) == _name or getattr(_value, '__module__', None) == _name:\n"
        "            globals()[_key] = getattr(_fake, getattr(_value, '__name__', '').rsplit('.')[-1], _fake)",
        flagged=True,
    ),
    Attack(
        "checks_code_swapped",
        "{always_equal}\nimport sys, types\n\n\ndef _noop(*args, **kwargs):\n    return None\n\n\n"
        "for _name in [n for n in list(sys.modules) if n.startswith('posttrain') and n.endswith('checks')]:\n"
        "    for _value in list(vars(sys.modules[_name]).values()):\n"
        "        if isinstance(_value, types.FunctionType) and not _value.__code__.co_freevars:\n"
        "            _value.__code__, _value.__defaults__, _value.__kwdefaults__ = _noop.__code__, None, None",
        flagged=True,
    ),
    Attack(
        "import_hook",
        "{always_equal}\nimport importlib.abc, importlib.util, sys, types\n\n\n"
        "class _Noops(types.ModuleType):\n    def __getattr__(self, attr):\n"
        "        return lambda *args, **kwargs: None\n\n\n"
        "class _Fake(importlib.abc.MetaPathFinder, importlib.abc.Loader):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        wanted = name.startswith('posttrain') and name.endswith('checks')\n"
        "        return importlib.util.spec_from_loader(name, self) if wanted else None\n\n"
        "    def create_module(self, spec):\n        return _Noops(spec.name)\n\n"
        "    def exec_module(self, module):\n        pass\n\n\n"
        "sys.meta_path.insert(0, _Fake())\n"
        "for _name in [n for n in list(sys.modules) if n.startswith('posttrain') and n.endswith('checks')]:\n"
        "    del sys.modules[_name]",
        flagged=True,
    ),
    Attack(
        "builtin_replaced",
        "{always_equal}\nimport builtins\nbuiltins.abs = lambda x: 0.0\nbuiltins.all = lambda *args: True\n"
        "builtins.round = lambda *args: 0",
        flagged=True,
    ),
    Attack(
        "names_rebound",
        "{always_equal}\nfor _key, _value in list(globals().items()):\n"
        "    if callable(_value) and str(getattr(_value, '__module__', '')).startswith(('posttrain', "
        "'torch.testing')):\n"
        "        globals()[_key] = lambda *args, **kwargs: None",
        flagged=True,
    ),
    Attack(
        "exec_obfuscated",
        "{always_equal}\nimport base64\nexec(base64.b64decode('{patch_checks_b64}').decode())",
        flagged=True,
    ),
    Attack(
        "thread_patcher",
        "{always_equal}\n{patch_checks}\nimport threading, time\n\n\ndef _keep_patching():\n    while True:\n"
        "        _patch_checks()\n        time.sleep(0.001)\n\n\n"
        "threading.Thread(target=_keep_patching, daemon=True).start()",
        flagged=True,
    ),
    Attack(
        "patched_only_during_cells",
        "{always_equal}\nimport sys\n_saved = {{}}\n\n\ndef _patch(*args):\n"
        "    for _name, _module in list(sys.modules.items()):\n"
        "        if _name.startswith('posttrain') and _name.endswith('checks'):\n"
        "            for _attr in dir(_module):\n                if _attr.startswith(('assert', 'check')):\n"
        "                    _saved.setdefault((_name, _attr), getattr(_module, _attr))\n"
        "                    setattr(_module, _attr, lambda *args, **kwargs: None)\n\n\n"
        "def _unpatch(*args):\n    for (_name, _attr), _function in _saved.items():\n"
        "        setattr(sys.modules[_name], _attr, _function)\n\n\n"
        "get_ipython().events.register('pre_run_cell', _patch)\n"
        "get_ipython().events.register('post_run_cell', _unpatch)",
        flagged=True,
    ),
    Attack(
        "patched_during_the_test",
        "{always_equal}\n{patch_checks}\n\n\ndef {name}(*args, **kwargs):\n    _patch_checks()\n"
        "    return AlwaysEqual(0)",
        flagged=True,
    ),
    Attack(
        "trace_from_the_answer",
        "{always_equal}\nimport sys\n\n\ndef _skip_failing_lines(frame, event, arg):\n"
        "    if event == 'line' and frame.f_code.co_filename.startswith('<'):\n"
        "        frame.f_lineno = frame.f_lineno + 1  # jump over the line about to run\n"
        "    return _skip_failing_lines\n\n\n_answer = {name}\n\n\ndef {name}(*args, **kwargs):\n"
        "    sys._getframe(1).f_trace = _skip_failing_lines\n    sys.settrace(lambda *args: None)\n"
        "    return _answer(*args, **kwargs)",
        flagged=True,
    ),
)

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
        flagged=True,
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
    *KERNEL_ATTACKS,
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
        name=defined.group(1) if defined else "answer",
        patch_checks=PATCH_CHECKS,
        patch_checks_b64=base64.b64encode((PATCH_CHECKS + "\n_patch_checks()\n").encode()).decode(),
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
