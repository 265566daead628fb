"""Static reading of notebooks with ``ast``: what the kernel guard watches, and answer cells that look like tampering.

``guard_plan`` reads the lab's source notebook: the modules its own (non-answer) cells import, and the names its
test cells read that those imports bind; ``autograder/kernel_guard.py`` captures them before any student code runs.

``screen_notebook`` reads the cells a student wrote (answer cells, and any cell that is not one of the lab's own)
for code that reaches into the grading machinery: the IPython shell or kernel, the import system and module tables,
builtins, frames and function internals, trace and audit hooks, threads, attribute writes on imported modules or
objects, and code built at run time (``exec`` of a string is screened as code; of anything else, flagged). A flag
never changes a score: it goes to the report (``flags.csv``) for the instructor to read. Ordinary lab code —
``display``, ``print``, plots, ``%matplotlib`` and other common magics, helper functions, imports of torch, numpy or
``posttrain`` — is never flagged.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import nbformat
from IPython.core.inputtransformer2 import TransformerManager
from nbgrader.utils import is_grade, is_solution

# Imports that reach the shell, the kernel, the import system, memory or threads; IPython.display is ordinary.
SENSITIVE_IMPORTS = (
    "builtins",
    "ctypes",
    "gc",
    "importlib",
    "IPython",
    "ipykernel",
    "threading",
    "_thread",
    "autograder",
)
ORDINARY_IMPORTS = ("IPython.display",)
SENSITIVE_ATTRIBUTES = frozenset(
    {
        "__code__",
        "__globals__",
        "__closure__",
        "__defaults__",
        "__kwdefaults__",
        "__builtins__",
        "__import__",
        "__subclasses__",
        "__self__",
        "cell_contents",
        "__posttrain_grader__",
        "f_locals",
        "f_globals",
        "f_back",
        "f_trace",
        "f_lineno",
        "tb_frame",
        "gi_frame",
        "cr_frame",
    }
)
SENSITIVE_SYS = frozenset(
    {
        "modules",
        "meta_path",
        "path_hooks",
        "path_importer_cache",
        "settrace",
        "setprofile",
        "addaudithook",
        "_getframe",
        "displayhook",
        "excepthook",
        "_current_frames",
    }
)
SENSITIVE_NAMES = frozenset({"__builtins__", "__import__", "__posttrain_grader__", "get_ipython"})
DYNAMIC_CODE = frozenset({"exec", "eval", "compile"})
ATTRIBUTE_WRITES = frozenset({"setattr", "delattr"})
ALLOWED_MAGICS = frozenset(
    {
        "matplotlib",
        "time",
        "timeit",
        "capture",
        "pip",
        "conda",
        "who",
        "whos",
        "pwd",
        "ls",
        "writefile",
        "bash",
        "sh",
        "!",
        "html",
        "HTML",
        "markdown",
        "latex",
        "javascript",
        "prun",
        "memit",
        "load_ext autoreload",
        "autoreload",
    }
)
# Writes to these parts of an imported library are configuration, not tampering.
CONFIGURATION_PARTS = frozenset({"backends", "options", "rcParams", "environ", "flags"})
WATCHED_TREES = ("posttrain", "importlib._bootstrap", "importlib._bootstrap_external")


@dataclass(frozen=True)
class Flag:
    """One screened finding: the cell (grade_id, or ``cell <index>``), the line in it, and what was seen."""

    cell: str
    line: int
    message: str

    def as_dict(self) -> dict:
        """The flag as ``results.jsonl`` and ``flags.csv`` keep it."""
        return {"cell": self.cell, "flag": f"line {self.line}: {self.message}"}


def python_source(cell_source: str) -> ast.Module | None:
    """A cell's source as Python (IPython magics become ``get_ipython()`` calls); None if it does not parse."""
    try:
        return ast.parse(TransformerManager().transform_cell(cell_source))
    except (SyntaxError, ValueError):
        return None


def imported_names(tree: ast.AST) -> dict[str, tuple[str, str | None]]:
    """``{name: (module, attribute or None)}`` for each name an ``import`` in ``tree`` binds: ``import a.b`` binds
    ``a`` to module ``a``; ``import a.b as c`` binds ``c`` to ``a.b``; ``from m import x as y`` binds ``y`` to
    ``m.x``."""
    names: dict[str, tuple[str, str | None]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = (alias.name, None)
                else:
                    names[alias.name.split(".")[0]] = (alias.name.split(".")[0], None)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if alias.name != "*":
                    names[alias.asname or alias.name] = (node.module, alias.name)
    return names


def imported_modules(tree: ast.AST) -> set[str]:
    """Every module an ``import`` in ``tree`` loads, by its full name; ``from m import x`` adds ``m`` and ``m.x``
    (which is a module when ``x`` is a submodule: importing it is then what the statement does)."""
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            modules |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*"}
    return modules


def guard_plan(source: nbformat.NotebookNode) -> dict:
    """What the kernel guard does for this lab: ``imports``, every module the lab's own cells import (imported
    before the capture, so that libraries that patch each other on import, as ``torch._dynamo`` rebinds
    ``torch.manual_seed``, have done so); ``modules`` and ``trees`` to watch (the modules a test cell reads, every
    ``posttrain`` module, the import machinery); ``names``, ``{name: [module, attribute]}`` for each name a test cell
    reads that the lab's imports bind."""
    imported: dict[str, tuple[str, str | None]] = {}
    read: set[str] = set()
    modules: set[str] = set()
    for cell in source.cells:
        if cell.cell_type != "code" or is_solution(cell):
            continue
        tree = python_source(cell.source)
        if tree is None:
            continue
        imported.update(imported_names(tree))
        modules |= imported_modules(tree)
        if is_grade(cell):
            read |= {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    names = {name: list(where) for name, where in imported.items() if name in read}
    watched = {module for module, _ in names.values()} | {f"{m}.{a}" for m, a in names.values() if a}
    trees = {*WATCHED_TREES, *(f"{m.split('.')[0]}.testing" for m in watched if not m.startswith("posttrain"))}
    return {
        "imports": sorted(modules | set(WATCHED_TREES)),
        "modules": sorted(watched | set(WATCHED_TREES)),
        "trees": sorted(trees),
        "names": names,
    }


def lab_cell_sources(source: nbformat.NotebookNode) -> set[str]:
    """The sources of the lab's own code cells (everything but answers): a submitted cell equal to one is not
    the student's writing."""
    return {cell.source.strip() for cell in source.cells if cell.cell_type == "code" and not is_solution(cell)}


def screen_notebook(nb: nbformat.NotebookNode, source: nbformat.NotebookNode) -> list[Flag]:
    """Screen every code cell of submission ``nb`` the student wrote (see the module docstring)."""
    ours = lab_cell_sources(source)
    lab_imports: dict[str, tuple[str, str | None]] = {}
    for cell in source.cells:
        tree = python_source(cell.source) if cell.cell_type == "code" else None
        if tree is not None:
            lab_imports.update(imported_names(tree))
    flags = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or (cell.source.strip() in ours and not is_solution(cell)):
            continue
        label = cell.metadata.get("nbgrader", {}).get("grade_id") or f"cell {index}"
        flags += [Flag(label, line, message) for line, message in screen_cell(cell.source, lab_imports)]
    return flags


def screen_cell(
    cell_source: str, lab_imports: dict[str, tuple[str, str | None]] | None = None
) -> list[tuple[int, str]]:
    """``(line, message)`` for each construct in one cell that reaches into the grading machinery."""
    tree = python_source(cell_source)
    if tree is None:
        return []  # a cell that does not parse fails on its own; nothing in it runs
    imports = {**(lab_imports or {}), **imported_names(tree)}
    return sorted(set(_Screen(imports).findings(tree)))


class _Screen(ast.NodeVisitor):
    """The checks of ``screen_cell`` over one parsed cell."""

    def __init__(self, imports: dict[str, tuple[str, str | None]]) -> None:
        self.imports = imports
        self.found: list[tuple[int, str]] = []

    def findings(self, tree: ast.AST) -> list[tuple[int, str]]:
        """Every ``(line, message)`` found in ``tree``."""
        self.visit(tree)
        return self.found

    def note(self, node: ast.AST, message: str) -> None:
        self.found.append((getattr(node, "lineno", 0), message))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.check_import(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        self.check_import(node, module)
        if module == "sys":
            for alias in node.names:
                if alias.name in SENSITIVE_SYS:
                    self.note(node, f"imports sys.{alias.name}")

    def check_import(self, node: ast.AST, module: str) -> None:
        if _within(module, SENSITIVE_IMPORTS) and not _within(module, ORDINARY_IMPORTS):
            self.note(node, f"imports {module}")

    def visit_Name(self, node: ast.Name) -> None:
        if node.id == "get_ipython":  # reached here only outside an allowed magic's translation
            self.note(node, "reaches the IPython shell (get_ipython)")
        elif node.id in SENSITIVE_NAMES:
            self.note(node, f"uses {node.id}")

    def visit_Attribute(self, node: ast.Attribute) -> None:
        root = _root_name(node)
        if node.attr in SENSITIVE_ATTRIBUTES:
            self.note(node, f"uses .{node.attr}")
        elif root is not None and self.imports.get(root, ("",))[0] == "sys" and node.attr in SENSITIVE_SYS:
            self.note(node, f"uses sys.{node.attr}")
        if isinstance(node.ctx, (ast.Store, ast.Del)) and root in self.imports and not _configuration(node):
            self.note(node, f"writes an attribute of {_dotted(node)}, which comes from an import")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        magic = _magic(node)
        if magic is not None:
            if magic not in ALLOWED_MAGICS:
                self.note(node, f"runs the magic %{magic}")
            for arg in node.args[2:]:  # a cell magic's body (e.g. %%time) is code too
                self.screen_literal(node, arg)
            return  # get_ipython() inside an allowed magic call is IPython's own translation
        if isinstance(node.func, ast.Name) and node.func.id in DYNAMIC_CODE | {"__import__"}:
            literal = node.args[0] if node.args else None
            if not (isinstance(literal, ast.Constant) and isinstance(literal.value, str)):
                self.note(node, f"runs code built at run time ({node.func.id})")
            elif node.func.id == "__import__":
                self.check_import(node, literal.value)
            else:
                self.screen_literal(node, literal)
        if isinstance(node.func, ast.Name) and node.func.id in ATTRIBUTE_WRITES | {"getattr"} and len(node.args) >= 2:
            target, attribute = node.args[0], node.args[1]
            literal = isinstance(attribute, ast.Constant) and isinstance(attribute.value, str)
            if literal and attribute.value in SENSITIVE_ATTRIBUTES | SENSITIVE_SYS:
                self.note(node, f"uses .{attribute.value} through {node.func.id}")
            root = _root_name(target) if isinstance(target, (ast.Name, ast.Attribute)) else None
            if node.func.id != "getattr" and root in self.imports:
                self.note(node, f"{node.func.id} on {_dotted(target)}, which comes from an import")
            elif node.func.id == "getattr" and not literal and root in self.imports:
                self.note(node, "reads an attribute of an imported name chosen at run time (getattr)")
        self.generic_visit(node)

    def screen_literal(self, node: ast.AST, literal: ast.expr) -> None:
        """Screen a string that ``exec`` or a cell magic runs as code, or note that it is not a literal."""
        if not (isinstance(literal, ast.Constant) and isinstance(literal.value, str)):
            self.note(node, "runs code built at run time")
            return
        inner = python_source(literal.value)
        if inner is None:
            self.note(node, "runs a string that does not parse as code")
            return
        self.found += [
            (getattr(node, "lineno", 0), f"{message} (in a string it runs)")
            for _, message in _Screen(self.imports).findings(inner)
        ]


def _within(module: str, packages: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``packages`` or a submodule of one."""
    return any(module == package or module.startswith(package + ".") for package in packages)


def _root_name(node: ast.expr) -> str | None:
    """The name an attribute chain starts from (``a`` in ``a.b.c``), if it starts from a name."""
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _dotted(node: ast.expr) -> str:
    """The expression as source text (``torch.testing.assert_close``)."""
    return ast.unparse(node)


def _configuration(node: ast.Attribute) -> bool:
    """Whether an attribute write sets a library's configuration (``torch.backends.cudnn.deterministic = ...``)."""
    parts = _dotted(node).split(".")
    return any(part in CONFIGURATION_PARTS for part in parts[1:])


def _magic(node: ast.Call) -> str | None:
    """The magic's name if ``node`` is IPython's translation of a line or cell magic, else None."""
    func = node.func
    if not (
        isinstance(func, ast.Attribute) and func.attr in ("run_line_magic", "run_cell_magic", "system", "getoutput")
    ):
        return None
    if not (
        isinstance(func.value, ast.Call)
        and isinstance(func.value.func, ast.Name)
        and func.value.func.id == "get_ipython"
    ):
        return None
    if func.attr in ("system", "getoutput"):
        return "!"
    name = node.args[0].value if node.args and isinstance(node.args[0], ast.Constant) else "?"
    line = node.args[1].value if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) else ""
    return f"{name} {line}".strip() if name == "load_ext" else str(name)
