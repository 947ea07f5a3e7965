"""The import graph of ``usgs`` points down and has no circles (shared/DESIGN.md).

Floors: entry points -> ``run`` -> ``methods`` / ``evaluation`` / ``priors`` / ``callbacks`` ->
``nets``, ``data``, ``metrics``, ``visualize``, ``atomic``. Every import counts, the ones inside
functions too: a lazy import is how a circle hides.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "usgs"
FLOORS = {"run": 1, "methods": 2, "evaluation": 2, "priors": 2, "callbacks": 2,
          "nets": 3, "data": 3, "metrics": 3, "visualize": 3, "atomic": 3, "errors": 3}


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            graph[module].update(n for n in names if n.split(".")[0] == "usgs" and n != module)
    return graph


def floor(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    assert part in FLOORS, f"{module}: give usgs.{part} a floor in FLOORS"
    return FLOORS[part]


def test_imports_point_down_or_sideways() -> None:
    upward = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
              if m != "usgs" and d != "usgs" and floor(d) < floor(m)]
    assert not upward, upward


# Leaf modules that import nothing of usgs: any floor may use them (atomic file writes, error types).
LEAVES = ("usgs.atomic", "usgs.errors")


def test_nets_import_only_nets() -> None:
    graph = import_graph()
    assert all(not graph.get(leaf) for leaf in LEAVES if leaf in graph), {leaf: graph[leaf] for leaf in LEAVES}
    outside = [f"{m} -> {d}" for m, deps in graph.items() if m.startswith("usgs.nets")
               for d in deps if not d.startswith("usgs.nets") and d not in LEAVES]
    assert not outside, outside


def test_no_import_circles() -> None:
    graph = import_graph()
    # modules are nodes; a package import (usgs.nets) stands for its __init__
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == 1:
                circles.append([*stack[stack.index(dep):], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, circles


def test_the_checker_sees_a_circle_and_an_upward_import(monkeypatch) -> None:
    fake = {"usgs.nets.a": {"usgs.run.b"}, "usgs.run.b": {"usgs.nets.a"}}
    monkeypatch.setattr(sys.modules[__name__], "import_graph", lambda: fake)
    for check in (test_imports_point_down_or_sideways, test_nets_import_only_nets, test_no_import_circles):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} missed the fake graph's fault")
