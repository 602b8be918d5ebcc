"""The import graph keeps its layers: core ← tables ← domain services ← routers/api/worker ←
main/cli, and no two folders import each other (directly or round a longer loop).

Every `import` counts, including those inside functions (lazy imports of TensorFlow-heavy
modules are still dependencies)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "worker")
DOMAINS = ("specs", "datasets", "registry", "predict", "jobs", "training", "plots", "ui",
           "auth")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer(module: str) -> int:
    parts = module.split(".")
    if parts == ["app"]:
        return 0  # the package itself holds only __version__
    if parts[0] == "worker":
        return 3
    if len(parts) == 1 or parts[1] in ("main", "cli"):
        return 4
    if parts[1] == "core":
        return 0
    if parts[1] == "tables":
        return 1
    if parts[1] == "api":
        return 3
    if parts[1] in DOMAINS:  # a domain's HTTP routes: `router`, or `<protocol>_router`
        return 3 if parts[-1] == "router" or parts[-1].endswith("_router") else 2
    raise AssertionError(f"{module}: a new top-level folder needs a layer in this test")


def folder(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "app" and len(parts) > 2 else module


def own_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project's modules that `path` imports (a `from pkg import mod` names the module)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.split(".")[0] in PACKAGES and modules[name] != path:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = own_modules()
    return {name: imports(path, modules) for name, path in modules.items()}


def test_no_import_from_a_lower_layer_to_a_higher_one() -> None:
    upward = sorted(f"{src} (layer {layer(src)}) imports {dst} (layer {layer(dst)})"
                    for src, targets in graph().items() for dst in targets
                    if layer(dst) > layer(src))
    assert not upward, "\n".join(upward)


def find_folder_loops(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one folder (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                loops.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return loops


def test_no_loop_between_folders() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for src, targets in graph().items():
        for dst in targets:
            if folder(src) != folder(dst):
                edges[folder(src)].add(folder(dst))
    assert find_folder_loops(edges) == []


def test_the_checks_can_fail() -> None:
    """The two checks see what they are meant to see (guards against a walker that finds
    nothing): a loop is found, and the real graph has edges in every layer."""
    assert find_folder_loops({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    g = graph()
    assert "app.core.config" in g["app.core.db"]
    assert "app.registry.service" in g["app.predict.service"]
    assert layer("app.predict.router") == 3 and layer("app.predict.service") == 2
    assert layer("app.predict.v2_router") == 3
