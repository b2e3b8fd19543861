"""The package's shape: data flows one way through the layers (a module imports only from its own layer or
lower ones, never a higher one), no import circle inside a layer, no library module importing the recipes,
the tests, the benchmarks or the checks, no module over MAX_LINES lines (a sign it holds several topics),
and the tests mirror the package."""

from __future__ import annotations

from pathlib import Path

from distill_trainer.code_digest import imported_names

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "distill_trainer"
MAX_LINES = 400
OUTSIDE = ("recipes", "tests", "benchmarks", "checks", "conftest", "helpers")
# Lowest first: a module may import from its own layer and the ones before it. The top-level modules
# (errors, integrity, ...) are the floor every layer stands on; `__init__` (the public API) is the roof.
LAYERS = ("", "models", "teacher", "views", "memory", "training", "nli", "context", "report", "run")


def library_modules() -> dict[str, Path]:
    """Every library module by dotted name below the package, e.g. `teacher.store`."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> str:
    return module.split(".")[0] if "." in module else ""


def import_graph() -> dict[str, set[str]]:
    """Library module -> the library modules it imports (a package import counts as its `__init__`)."""
    modules = library_modules()
    graph = {}
    for name, path in modules.items():
        targets = {n.removeprefix("distill_trainer.") for n in imported_names(path)}
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


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for each import of a higher layer (the subpackages' own `__init__` files hold no code)."""
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if rank[layer_of(target)] > rank[layer_of(name)]
    )


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_upward_imports_are_found():
    assert upward_imports({"models.loading": {"training.config"}, "training.config": {"models.loading"}}) == [
        "models.loading -> training.config"
    ]


def test_imports_are_resolved_in_subpackages():
    graph = import_graph()
    assert "teacher.store" in graph  # modules below the top are looked at
    assert "integrity" in graph["teacher.store"]


def test_every_subpackage_is_a_layer():
    found = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert found == set(LAYERS) - {""}, "a subpackage without a place in LAYERS, or a layer without a folder"


def test_no_import_reaches_a_higher_layer():
    graph = {name: targets for name, targets in import_graph().items() if name}
    assert not upward_imports(graph), "imports of a higher layer: " + "; ".join(upward_imports(graph))


def test_no_import_cycle_between_library_modules():
    graph = {name: targets - {""} for name, targets in import_graph().items() if name}
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_data_preparation_imports_no_evaluation():
    """Rows become views and datasets without knowing how they are scored: data flows one way."""
    preparing = (
        "nli.data",
        "nli.tasks",
        "nli.demonstrations",
        "nli.patterns",
        "nli.row_checks",
        "context.data",
    )
    graph = import_graph()
    reached = {name: sorted(t for t in graph[name] if "evaluation" in t) for name in preparing}
    assert not any(reached.values()), f"data preparation importing evaluation: {reached}"


def test_library_imports_no_recipe_test_or_benchmark():
    offenders = {
        name: sorted(n for n in imported_names(path) if n.split(".")[0] in OUTSIDE)
        for name, path in library_modules().items()
    }
    offenders = {name: found for name, found in offenders.items() if found}
    assert not offenders, f"library modules importing recipes/tests/benchmarks/checks: {offenders}"


def test_no_module_over_the_line_limit():
    paths = PACKAGE.rglob("*.py")
    lengths = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines()) for path in paths
    }
    over = {name: n for name, n in sorted(lengths.items()) if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines (split them by topic): {over}"


def test_tests_mirror_the_package():
    folders = {path.name for path in (ROOT / "tests").iterdir() if path.is_dir() and path.name != "data"}
    layers = set(LAYERS) - {""}
    outside = {"benchmarks", "checks", "__pycache__"}  # the tests of the top-level folders beside the package
    assert folders - outside <= layers, "a test folder with no subpackage to mirror"
    top = {path.name for path in (ROOT / "tests").glob("test_*.py")}
    # test_package.py: the package's own `__init__` (its public API), which no subpackage holds
    assert top == {"test_layout.py", "test_package.py"}, "tests belong in the folder of the subpackage tested"


def test_readme_lists_the_layers_in_order():
    text = (ROOT / "README.md").read_text(encoding="utf-8").split("## Layout", 1)[1].split("\n## ", 1)[0]
    listed = [
        line.split()[0].rstrip("/") for line in text.splitlines() if line.startswith("  ") and "/" in line
    ]
    assert listed == list(LAYERS[1:]), "README's Layout lists the subpackages, lowest layer first"
