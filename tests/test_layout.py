"""The package's shape: no import circle between library modules, no library module importing the recipes,
the tests or the benchmarks, and no library module over MAX_LINES lines (a sign it holds several topics)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distill_trainer"
MAX_LINES = 400
OUTSIDE = ("recipes", "tests", "benchmarks", "conftest", "helpers")
# over the limit and waiting for their split (data loading, patterns and demonstrations; recipe checks)


def library_modules() -> dict[str, Path]:
    return {path.stem: path for path in sorted(PACKAGE.glob("*.py")) if path.stem != "__init__"}


def imported_names(path: Path) -> set[str]:
    """Every module this file imports, anywhere in it (function-level imports count), as absolute names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y, or from . import x
                base = "distill_trainer" + (f".{node.module}" if node.module else "")
                names.add(base)
                if not node.module:
                    names.update(f"distill_trainer.{alias.name}" for alias in node.names)
            elif node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = library_modules()
    graph = {}
    for name, path in modules.items():
        targets = {n.split(".")[1] for n in imported_names(path) if n.startswith("distill_trainer.")}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_library_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_library_imports_no_recipe_test_or_benchmark():
    offenders = {
        name: sorted(n for n in imported_names(path) if n.split(".")[0] in OUTSIDE)
        for name, path in library_modules().items()
    }
    offenders = {name: found for name, found in offenders.items() if found}
    assert not offenders, f"library modules importing recipes/tests/benchmarks: {offenders}"


def test_no_library_module_over_the_line_limit():
    lengths = {path.name: len(path.read_text(encoding="utf-8").splitlines()) for path in PACKAGE.glob("*.py")}
    over = {name: n for name, n in sorted(lengths.items()) if n > MAX_LINES}
    assert not over, f"library modules over {MAX_LINES} lines (split them by topic): {over}"
