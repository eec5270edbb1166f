"""Import contracts: the layers of DESIGN.md and no import cycles, checked by import-linter.

The contracts live in pyproject.toml (``[tool.importlinter]``). import-linter builds its graph with
grimp, which reads every ``import`` statement of the source, the ones inside functions included
(imports under ``if TYPE_CHECKING:`` are left out: they only serve annotations and never run).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]
#: the only modules that may import the package root (``import experimat as em``): the facades above every layer
ROOT_IMPORTERS = {"experimat.cli", "experimat.demo"}


def _graph() -> grimp.ImportGraph:
    return grimp.build_graph("experimat", cache_dir=None, exclude_type_checking_imports=True)


def test_import_contracts():
    """Runs ``lint-imports`` on pyproject.toml's contracts (layers, acyclic packages, forbidden imports)."""
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    report = proc.stdout + proc.stderr
    assert "KEPT" in report, f"lint-imports did not check any contract:\n{report}"
    assert proc.returncode == 0, f"an import contract is broken:\n{report}"


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph.modules):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.find_modules_directly_imported_by(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.append(m)
                    if m == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_level_cycles():
    """No cycle between any two modules, packages' ``__init__`` included (a finer check than
    import-linter's acyclic_siblings, which compares sibling packages as wholes)."""
    graph = _graph()
    assert len(graph.modules) > 50  # the graph really covers the package
    problems = []
    for component in _cycles(graph):
        edges = [f"  {a} -> {b} (line {', '.join(str(d['line_number']) for d in graph.get_import_details(importer=a, imported=b))})"
                 for a in component for b in sorted(graph.find_modules_directly_imported_by(a)) if b in component]
        problems.append("cycle among " + ", ".join(component) + ":\n" + "\n".join(edges))
    assert not problems, "import cycles:\n" + "\n".join(problems)


def test_cycle_finder_sees_function_level_imports():
    """The cycle check itself: an import inside a function closes a cycle that the check reports."""
    graph = _graph()
    assert not graph.direct_import_exists(importer="experimat.io.manifest", imported="experimat.io.project")
    graph.add_import(importer="experimat.io.manifest", imported="experimat.io.project", line_number=1,
                     line_contents="from .project import ProjectStore")
    assert any({"experimat.io.manifest", "experimat.io.project"} <= set(c) for c in _cycles(graph))


def test_only_facades_import_the_package_root():
    importers = _graph().find_modules_that_directly_import("experimat")
    assert importers <= ROOT_IMPORTERS, (
        f"{sorted(importers - ROOT_IMPORTERS)} import the package root `experimat`; import the module that "
        "defines the name instead (e.g. `from .._version import __version__`)")

