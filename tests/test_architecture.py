"""The package layout's dependency rule (docs/ARCHITECTURE.md), read from every module's imports with ``ast``.

- ``posttrain.core`` (machinery) imports nothing else of ``posttrain``;
- ``posttrain.world`` (the data) imports only ``core`` and itself;
- ``posttrain.methods`` (one module per lecture concept) import only ``core``;
- ``posttrain.studies`` (one module per lab) import ``core``, ``world`` and ``methods``, never another study;
- no ``posttrain`` module imports ``autograder``, and no module imports ``autograder.__main__`` (the command line);
- no import circle among the modules of either package.

Imports inside functions count too: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from autograder.course import all_labs

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"posttrain": ROOT / "shared" / "posttrain", "autograder": ROOT / "autograder"}
ROLES = ("core", "world", "methods", "studies")
ALLOWED = {"core": {"core"}, "world": {"core", "world"}, "methods": {"core"}, "studies": {"core", "world", "methods"}}


def module_files(packages: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file of ``packages`` (``pkg/__init__.py`` is ``pkg``)."""
    modules = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``module`` imports anywhere in its file (relative imports resolved;
    ``from package import name`` counts as importing ``package.name`` when that is a module)."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import posttrain.core.models.x` → its deepest known module
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    """Every module of ``packages`` and the modules of ``packages`` it imports."""
    files = module_files(packages)
    return {module: imports_of(module, path, set(files)) for module, path in files.items()}


def role(module: str) -> str | None:
    """``core``, ``world``, ``methods`` or ``studies`` for a module of ``posttrain``; None for the package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def forbidden_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Each import that breaks the rule, as ``importer -> imported (why)``."""
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target == "autograder.__main__":
                problems.append(f"{module} -> {target} (the command line is imported by nothing)")
            if not module.startswith("posttrain"):
                continue
            if target.startswith("autograder"):
                problems.append(f"{module} -> {target} (the package never imports the grader)")
                continue
            source, dest = role(module), role(target)
            if source not in ALLOWED or dest not in ALLOWED:
                continue  # the package itself, or a module without a role (its own test reports it)
            if source == dest == "studies":
                if target != "posttrain.studies":
                    problems.append(f"{module} -> {target} (a study never imports another study)")
            elif dest not in ALLOWED[source]:
                problems.append(f"{module} -> {target} ({source} may import only {', '.join(sorted(ALLOWED[source]))})")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: each strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_posttrain_module_has_a_role():
    stray = [m for m in module_files(PACKAGES) if m.startswith("posttrain.") and role(m) not in ROLES]
    assert not stray, f"modules outside core/world/methods/studies (put each where its role says): {stray}"


def test_the_dependency_rule_holds_for_every_import():
    problems = forbidden_arrows(import_graph(PACKAGES))
    assert not problems, "imports against the rule of docs/ARCHITECTURE.md:\n" + "\n".join(problems)


def test_no_import_circle_in_either_package():
    found = cycles(import_graph(PACKAGES))
    assert not found, f"import circles: {found}"


def test_every_lab_has_a_study_named_after_it():
    labs = all_labs(ROOT)
    missing = [lab.study for lab in labs if lab.study not in module_files(PACKAGES)]
    assert labs and not missing, f"labs without their study module: {missing}"


def _write(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"core/evaluate.py": "from ..world import tiny\n"}, "posttrain.core.evaluate -> posttrain.world.tiny"),
        ({"methods/replay.py": "from posttrain.world.tiny import World\n"}, "methods may import only core"),
        ({"studies/b.py": "def f():\n    from .a import x\n"}, "a study never imports another study"),
        ({"world/tiny.py": "from ..methods import lora\n"}, "world may import only core, world"),
        ({"core/checks.py": "import autograder.grade\n"}, "never imports the grader"),
    ],
)
def test_the_rule_check_reports_each_kind_of_forbidden_arrow(tmp_path, files, expected):
    base = {
        "__init__.py": "",
        **{f"{r}/__init__.py": "" for r in ROLES},
        "core/evaluate.py": "",
        "core/checks.py": "",
        "world/tiny.py": "",
        "methods/lora.py": "",
        "methods/replay.py": "",
        "studies/a.py": "x = 1\n",
        "studies/b.py": "",
    }
    _write(tmp_path / "posttrain", base | files)
    _write(tmp_path / "autograder", {"__init__.py": "", "grade.py": ""})
    graph = import_graph({"posttrain": tmp_path / "posttrain", "autograder": tmp_path / "autograder"})
    assert any(expected in problem for problem in forbidden_arrows(graph)), forbidden_arrows(graph)


def test_the_circle_check_finds_a_circle_through_a_lazy_import(tmp_path):
    _write(
        tmp_path / "autograder",
        {
            "__init__.py": "",
            "__main__.py": "from autograder.selftest import run\n",
            "selftest.py": "def run():\n    from autograder.__main__ import main\n",
        },
    )
    graph = import_graph({"autograder": tmp_path / "autograder"})
    assert cycles(graph) == [["autograder.__main__", "autograder.selftest"]]
    assert forbidden_arrows(graph) == [
        "autograder.selftest -> autograder.__main__ (the command line is imported by nothing)"
    ]
