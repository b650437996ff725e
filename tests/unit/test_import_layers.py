"""The import structure stays as issue 12 left it: no circles, no private names across modules.

Why a test and not only ``lint-imports``: import-linter has no generic "acyclic" contract, and a
circle is always a function in the wrong file (the layers contracts in pyproject.toml catch only
the layers they name). Imports inside functions count: they are still dependencies, only later.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("agent", "orchestrator", "web")


def _graph() -> grimp.ImportGraph:
    # This checkout's packages, not whatever an editable install elsewhere points at.
    if str(REPO) not in sys.path[:1]:
        sys.path.insert(0, str(REPO))
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) - {m}) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return found


def _describe(graph: grimp.ImportGraph, component: list[str]) -> str:
    members = set(component)
    lines = []
    for module in component:
        for imported in sorted(graph.find_modules_directly_imported_by(module) & members):
            for detail in graph.get_import_details(importer=module, imported=imported):
                lines.append(f"  {module}:{detail['line_number']}: {detail['line_contents']}")
    return "\n".join(lines)


def test_no_import_circles() -> None:
    graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import circles (move the function to the lower module):\n" + "\n".join(
        f"{' <-> '.join(c)}\n{_describe(graph, c)}" for c in cycles)


def test_the_cycle_finder_finds_a_cycle() -> None:
    class Fake:
        modules = {"a", "b", "c", "d"}

        @staticmethod
        def find_modules_directly_imported_by(module: str) -> set[str]:
            return {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}[module]

    assert _cycles(Fake()) == [["a", "b", "c"]]  # type: ignore[arg-type]


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.ImportFrom) or node.module is None:
                    continue
                if node.level == 0 and node.module.split(".")[0] not in PACKAGES:
                    continue
                for alias in node.names:
                    name = alias.name
                    if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}: "
                                         f"from {node.module} import {name}")
    assert not offenders, "private names imported across modules (make them public):\n" + \
        "\n".join(offenders)
