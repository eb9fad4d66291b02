"""The import rules, checked from the source: the domain core is pure, ``frontend`` depends only
on the domain core and the wire types, and no module-level import cycle exists anywhere in
``node_agent``, ``hub`` and ``frontend`` (see docs/architecture.md)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("node_agent", "hub", "frontend")
# what the domain core may never import itself
DOMAIN_FORBIDDEN = (
    "starlette",
    "jinja2",
    "markupsafe",
    "sqlite3",
    "uvicorn",
    "websockets",
    "prometheus_client",
    "asyncio",
    "frontend",
)
# nor load through the wire types (which take their close codes from websockets.frames, a pure
# module): no web framework, templates, database, network client or server, event loop
DOMAIN_NEVER_LOADED = (
    *tuple(m for m in DOMAIN_FORBIDDEN if m != "websockets"),
    "websockets.asyncio",
    "websockets.sync",
    "websockets.legacy",
    "websockets.server",
    "websockets.client",
)
DOMAIN_ALLOWED_PROJECT = ("hub.domain", "node_agent.protocol")
FRONTEND_ALLOWED_PROJECT = ("frontend", "hub.domain", "node_agent.protocol")


def module_files(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: not in functions, not under TYPE_CHECKING."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _module_level(node.body)
            yield from _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _module_level(block)
        elif isinstance(node, ast.With | ast.ClassDef):
            yield from _module_level(node.body)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules ``name`` imports at module level: project modules by their full name (and
    the packages above them, which run first), others by the name imported."""
    is_package = path.name == "__init__.py"
    targets: set[str] = set()
    for node in _module_level(ast.parse(path.read_text(), str(path)).body):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "__future__":
                continue
            candidates = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
            ]
        for candidate in candidates:
            parts = candidate.split(".")
            if parts[0] in PACKAGES:
                targets.update(
                    ".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in modules
                )
            else:
                targets.add(candidate)
    targets.discard(name)
    return targets


def import_graph(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> dict[str, set[str]]:
    modules = module_files(root, packages)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.get(module, ()):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Everything ``start`` imports, following the project's own modules."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _project(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _within(name: str, allowed: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in allowed)


def test_no_module_level_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_domain_core_is_pure() -> None:
    graph = import_graph()
    domain = [name for name in graph if _within(name, ("hub.domain",))]
    assert {"hub.domain", "hub.domain.nodes", "hub.domain.gpus", "hub.domain.events"} <= set(domain)
    for name in domain:
        direct = graph[name]
        assert not {
            t for t in direct if _project(t) and t not in PACKAGES and not _within(t, DOMAIN_ALLOWED_PROJECT)
        }, name
        assert not {t for t in direct if t.split(".")[0] in DOMAIN_FORBIDDEN}, name
        everything = reachable(graph, name)
        assert not {t for t in everything if _within(t, DOMAIN_NEVER_LOADED)}, name


def test_the_frontend_uses_only_the_domain_core_and_the_wire_types() -> None:
    graph = import_graph()
    for name, targets in graph.items():
        if _within(name, ("frontend",)):
            outside = {
                t
                for t in targets
                if _project(t) and t not in PACKAGES and not _within(t, FRONTEND_ALLOWED_PROJECT)
            }
            assert not outside, f"{name} imports {outside}"


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """The checker itself, on a small tree that breaks every rule."""
    (tmp_path / "hub" / "domain").mkdir(parents=True)
    (tmp_path / "frontend").mkdir()
    (tmp_path / "node_agent").mkdir()
    for package in ("hub", "hub/domain", "frontend", "node_agent"):
        (tmp_path / package / "__init__.py").write_text('"""A package."""\n')
    (tmp_path / "hub" / "domain" / "rules.py").write_text("import sqlite3\nfrom hub import registry\n")
    (tmp_path / "hub" / "registry.py").write_text("from frontend.views import x\n")
    (tmp_path / "frontend" / "views.py").write_text(
        "from typing import TYPE_CHECKING\nfrom ..hub.registry import y\nif TYPE_CHECKING:\n    import hub.app\n"
    )
    (tmp_path / "hub" / "app.py").write_text("def later():\n    import frontend.views\n")
    graph = import_graph(tmp_path)
    assert graph["hub.domain.rules"] == {"sqlite3", "hub", "hub.registry"}
    assert "hub.app" not in graph["frontend.views"], "TYPE_CHECKING imports do not run"
    assert graph["hub.app"] == set(), "an import inside a function does not run at import time"
    assert cycles(graph) == [["frontend.views", "hub.registry"]]
    assert "sqlite3" in reachable(graph, "hub.domain.rules")


@pytest.mark.parametrize("module", ["hub.domain.nodes", "hub.domain.gpus", "hub.domain.events"])
def test_the_domain_modules_import_alone(module: str) -> None:
    """Importing a domain module in a fresh interpreter loads none of the hub's I/O modules."""
    import subprocess
    import sys

    code = (
        f"import sys, {module}\n"
        f"never = {DOMAIN_NEVER_LOADED!r}\n"
        "bad = sorted(m for m in sys.modules if any(m == n or m.startswith(n + '.') for n in never)"
        " or (m.startswith('hub.') and not m.startswith('hub.domain')))\n"
        "print(bad)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
