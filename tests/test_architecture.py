"""The layering of docs/architecture.md, checked on the source: every import (including the
ones inside functions, which still tie modules together) is read with `ast`, without importing.

- no import cycles between the project's modules;
- the functional core (posterior, acquisition, metrics, cvp) imports no adapter, use case or CLI;
- adapters (storage, embedding, retrieval, labelstudio) never import use cases or the CLI;
- nothing in `alkit` imports the CLI;
- no module over MAX_MODULE_LINES lines;
- every package directory is listed in pyproject's `packages` (an unlisted one is missing from installs).
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = {"alkit": ROOT / "alkit", "alkit_cli": ROOT / "cli"}  # import name -> directory
MAX_MODULE_LINES = 400

CORE = ("alkit.posterior", "alkit.acquisition", "alkit.metrics", "alkit.cvp")
ADAPTERS = ("alkit.storage", "alkit.embedding", "alkit.retrieval", "alkit.labelstudio")
USE_CASES = ("alkit.workflows",)
CLI = ("alkit_cli",)


def _in(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == package or module.startswith(package + ".") for package in packages)


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of alkit and the CLI."""
    modules = {}
    for top, directory in SOURCE_PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = path.relative_to(directory).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((top, *parts))] = path
    return modules


def _imported_names(module: str, path: Path, tree: ast.AST) -> list[str]:
    """Every dotted name an import statement in `tree` may refer to (relative imports resolved)."""
    is_package = path.name == "__init__.py"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


@cache
def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports (a name is resolved to its longest module prefix)."""
    modules = project_modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        for name in _imported_names(module, path, ast.parse(path.read_text(encoding="utf-8"))):
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != module:
                graph[module].add(name)
    return {module: graph[module] for module in modules}


def strongly_connected_components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; components of more than one module are cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_cycle_finder_against_brute_force_reachability():
    """The cycle finder agrees with a naive check: a and b share a component iff each reaches the other."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}, "f": {"a"}, "g": set()}

    def reachable(start):
        seen, frontier = set(), [start]
        while frontier:
            for nxt in graph[frontier.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        return seen

    naive = {frozenset(b for b in graph if b == a or (b in reachable(a) and a in reachable(b))) for a in graph}
    assert {frozenset(component) for component in strongly_connected_components(graph)} == naive


def test_import_walk_sees_imports_inside_functions(tmp_path):
    source = "import os\n\ndef f():\n    from . import sibling\n    from ..other import thing\n"
    path = tmp_path / "mod.py"
    path.write_text(source)
    names = _imported_names("pkg.sub.mod", path, ast.parse(source))
    assert {"os", "pkg.sub", "pkg.sub.sibling", "pkg.other", "pkg.other.thing"} <= set(names)


def test_no_import_cycles():
    cycles = [component for component in strongly_connected_components(import_graph()) if len(component) > 1]
    assert cycles == [], f"import cycles (break them by moving the shared piece down a layer): {cycles}"


@pytest.mark.parametrize(
    ("layer", "forbidden", "why"),
    [
        (CORE, ADAPTERS + USE_CASES + CLI, "the core is pure maths over arrays"),
        (ADAPTERS, USE_CASES + CLI, "adapters are called by use cases, never the reverse"),
        (("alkit",), CLI, "the CLI only parses and renders"),
    ],
)
def test_layering(layer, forbidden, why):
    graph = import_graph()
    breaches = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        if _in(module, layer)
        for target in targets
        if _in(target, forbidden)
    )
    assert breaches == [], f"{why}: {breaches}"


def test_no_module_over_the_size_limit():
    sizes = {module: len(path.read_text(encoding="utf-8").splitlines()) for module, path in project_modules().items()}
    too_big = {module: lines for module, lines in sizes.items() if lines > MAX_MODULE_LINES}
    assert too_big == {}, f"split these by concept (limit {MAX_MODULE_LINES} lines): {too_big}"


def test_every_package_is_installed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {module for module, path in project_modules().items() if path.name == "__init__.py"}
    assert packages - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
