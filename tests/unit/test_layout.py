"""The package's shape: no import cycles anywhere (function-level and type-only imports included), and the
layers point one way (the domain imports nothing of ours but the domain; nothing in production imports the
dev launchers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "couponrush"


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module of ours that ``name`` imports, at any depth of its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else base)
    ours: set[str] = set()
    for target in targets:
        while target and target not in modules:  # `import a.b.c` names a.b.c, or an attribute of a module
            target = target.rpartition(".")[0]
        if target and target != name:
            ours.add(target)
    return ours


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component: list[str] = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_there_is_no_import_cycle_in_the_package() -> None:
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(
    ("layer", "may_import"),
    [
        ("couponrush.domain", ("couponrush.domain",)),
        ("couponrush.service", ("couponrush.domain", "couponrush.service")),
    ],
)
def test_inner_layers_import_only_inward(layer: str, may_import: tuple[str, ...]) -> None:
    graph = _graph()
    outward = {
        (module, target)
        for module, targets in graph.items()
        if module.startswith(layer)
        for target in targets
        if not target.startswith(may_import)
    }
    assert outward == set()


def test_production_code_never_imports_the_dev_launchers() -> None:
    graph = _graph()
    users = {
        module
        for module, targets in graph.items()
        if any(t.startswith("couponrush.dev") for t in targets)
        and not module.startswith(("couponrush.dev", "couponrush.entrypoints.cli.dev"))
    }
    assert users == set()
