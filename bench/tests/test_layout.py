"""The bench package's shape: no import cycle (function-level imports included), and the product never
imports the bench (the bench is built on the product's public pieces, not the other way round)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _modules(src: Path, package: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in (src / package).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path) -> set[str]:
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
            targets.update(f"{base}.{alias.name}" for alias in node.names)
            targets.add(base)
    return targets


def _graph(src: Path, package: str) -> dict[str, set[str]]:
    modules = _modules(src, package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        ours: set[str] = set()
        for target in _imports(name, path):
            while target and target not in modules:  # `from a.b import c` names a.b.c, or an attribute of a.b
                target = target.rpartition(".")[0]
            if target and target != name:
                ours.add(target)
        graph[name] = ours
    return graph


def _in_a_cycle(graph: dict[str, set[str]]) -> set[str]:
    """Modules from which an import path leads back to themselves."""

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), list(graph[start])
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(graph.get(node, ()))
        return False

    return {name for name in graph if reaches(name, name)}


def test_there_is_no_import_cycle_in_the_bench() -> None:
    assert _in_a_cycle(_graph(ROOT / "bench" / "src", "couponrush_bench")) == set()


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _in_a_cycle({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == {"a", "b"}


def test_the_product_never_imports_the_bench() -> None:
    product = _modules(ROOT / "src", "couponrush")
    users = {
        name for name, path in product.items() if any(t.startswith("couponrush_bench") for t in _imports(name, path))
    }
    assert users == set()
