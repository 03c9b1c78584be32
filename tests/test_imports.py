"""The import graph of kindchat/ (read with `ast`): no circle, and no room imports one above it.

Rooms, lowest first: models and feedback, then retrain, serve, ui, and the command line on top
(nothing imports `kindchat.cli`). A new circle or an upward import fails here with the modules
named. Run it alone: `python -m pytest tests/test_imports.py`.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "kindchat"
RANK = {"models": 0, "feedback": 0, "retrain": 1, "serve": 2, "ui": 3, "cli": 4}


def import_graph() -> dict[str, set[str]]:
    modules = {
        ".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts
    }
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from pkg import mod` imports the module pkg.mod (and runs pkg's __init__)
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                if all(f"{node.module}.{a.name}" in modules for a in node.names):
                    targets = targets[1:] if node.module == name else targets
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                targets = []
            graph[name].update(t for t in targets if t in modules)
    return graph


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in RANK else None


def test_no_room_imports_one_above_it() -> None:
    upward = [
        (a, b)
        for a, targets in import_graph().items()
        for b in targets
        if (ra := room(a)) and (rb := room(b)) and RANK[rb] > RANK[ra]
    ]
    assert upward == []


def test_no_import_circle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                circles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, path)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert circles == []
    assert graph["kindchat.cli"] and graph["kindchat.cli.train"]  # the graph was read
