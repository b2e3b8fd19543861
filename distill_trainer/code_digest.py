"""What code and which packages computed a result, as a digest a stored result is keyed on.

    record = code_record(scripts=["recipes/compare.py"])   # library + scripts + numeric packages
    record["digest"]                                        # one hex digest of all of it
    code_changes(record, code_record(record["scripts"]))    # ["distill_trainer/training/losses.py changed"]
    modules_digest("distill_trainer.nli.task_evaluation")   # that module and what it imports, transitively

A result read back (a comparison's method, a cache entry, a published table) is only right while the code
that computed it is unchanged, so everything read back is keyed on it, as datasets' `map` fingerprints its
function and DVC its stage's command. `code_record` covers every source file of the library (and the
recipe or benchmark scripts named): a README or a test changes nothing, any library change reruns, which
is conservative by design. The caches use the narrower `modules_digest`: the files of the modules that
compute their entries, found by following the imports in the source (function-level ones included), so a
change to the loss does not throw away the teacher's stored evaluations.

The versions of the packages that decide numerics (`NUMERIC_PACKAGES`) are part of every digest. Hashing
the library's ~100 files takes a few milliseconds; each digest is computed once per process.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from importlib import metadata
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name
# the repository of a source checkout (an editable install): where recipes/, benchmarks/ and checks/ live
ROOT = PACKAGE_DIR.parent
# what decides the numbers beside our code: kernels, model code, adapters, quantization, data loading
NUMERIC_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "safetensors",
    "numpy",
)
ALL = "*"  # what `_imports` answers for a module that imports public names from the package root
# files of the package that compute results: its code, and the data it ships (architectures, metrics)
SOURCE_SUFFIXES = (".py", ".json")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def package_versions() -> dict[str, str | None]:
    """{package: installed version, or None when it is not installed}."""
    versions = {}
    for name in NUMERIC_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.lru_cache(maxsize=1)
def library_files() -> dict[str, str]:
    """{path from the repository root, e.g. distill_trainer/training/losses.py: sha256} of the library."""
    return {
        str(path.relative_to(ROOT)): _sha256(path)
        for path in sorted(PACKAGE_DIR.rglob("*"))
        if path.suffix in SOURCE_SUFFIXES and path.is_file() and "__pycache__" not in path.parts
    }


def script_files(scripts) -> dict[str, str]:
    """{script path from the repository root: sha256, or "missing"} of recipe or benchmark scripts."""
    files = {}
    for script in scripts:
        path = Path(script)
        path = path if path.is_absolute() else ROOT / path
        try:
            name = str(path.resolve().relative_to(ROOT))
        except ValueError:  # a script outside the repository: named as given
            name = str(script)
        files[name] = _sha256(path) if path.is_file() else "missing"
    return files


def code_record(scripts=()) -> dict:
    """The library's files, the scripts', the numeric packages' versions, and one digest of them all."""
    record = {
        "library": library_files(),
        "scripts": script_files(scripts),
        "packages": package_versions(),
    }
    return {"digest": _digest(record), **record}


def code_digest(scripts=()) -> str:
    """`code_record(scripts)["digest"]`, computed once per process for each set of scripts."""
    return _cached_digest(tuple(sorted(str(s) for s in scripts)))


@functools.lru_cache(maxsize=64)
def _cached_digest(scripts: tuple) -> str:
    return code_record(scripts)["digest"]


def _files_changes(kind: str, before: dict, now: dict) -> list[str]:
    changed = [name for name in sorted(set(before) & set(now)) if before[name] != now[name]]
    added, removed = sorted(set(now) - set(before)), sorted(set(before) - set(now))
    lines = [f"{name} changed" for name in changed]
    lines += [f"{name} added" for name in added] + [f"{name} removed" for name in removed]
    if len(lines) > 4:  # a long list says no more than its size and first entries
        lines = [f"{len(lines)} {kind} files differ ({', '.join(lines[:3])}, ...)"]
    return lines


def code_changes(before: dict, now: dict) -> list[str]:
    """What differs between two `code_record`s, one short phrase each (empty: the same code)."""
    if not before or "digest" not in before:
        return ["no code digest was recorded"]
    if before["digest"] == now["digest"]:
        return []
    lines = _files_changes("library", before.get("library", {}), now.get("library", {}))
    lines += _files_changes("script", before.get("scripts", {}), now.get("scripts", {}))
    old, new = before.get("packages", {}), now.get("packages", {})
    lines += [
        f"{name} {old.get(name)} -> {new.get(name)}"
        for name in sorted(set(old) | set(new))
        if old.get(name) != new.get(name)
    ]
    return lines or ["the code digest differs"]


# ---------------------------------------------------------------- the modules a cache's entries come from


def _module_path(module: str) -> Path | None:
    """The file of a library module (`distill_trainer.nli.tasks`), or None for another package."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (function-level imports count), as absolute names;
    `from a import b` gives `a` and `a.b` (b may be a module or a name)."""
    package = ".".join(Path(path).resolve().relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(Path(path).read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative: climb from this file's package
                parts = package.split(".")
                module = ".".join(parts[: len(parts) - node.level + 1] + ([module] if module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


@functools.lru_cache(maxsize=256)  # each file is parsed once per process, whatever the closures that need it
def _imports(path: Path) -> frozenset[str]:
    """The library modules a file imports, with the packages above each (their `__init__` runs on import),
    or {ALL} when it imports a public name of the package root, which may load any module on use."""
    names = imported_names(path)
    if any(
        name.startswith(PACKAGE + ".") and name.count(".") == 1 and _module_path(name) is None
        for name in names
    ):
        return frozenset({ALL})
    found = set()
    for name in names:
        parts = name.split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(name for name in found if _module_path(name) is not None)


@functools.lru_cache(maxsize=64)
def module_files(*modules: str) -> tuple[str, ...]:
    """The files of `modules` and of every library module they import, transitively (sorted)."""
    seen, todo = set(), list(modules)
    while todo:
        module = todo.pop()
        if module == ALL:
            return tuple(name for name in library_files() if name.endswith(".py"))
        if module in seen or _module_path(module) is None:
            continue
        seen.add(module)
        todo += _imports(_module_path(module))
    return tuple(sorted(str(_module_path(m).relative_to(ROOT)) for m in seen))


def modules_digest(*modules: str) -> str:
    """A digest of the code `modules` run (`module_files`) and of the numeric packages' versions."""
    files = library_files()
    return _digest(
        {"files": {name: files.get(name) for name in module_files(*modules)}, "packages": package_versions()}
    )
