"""What code and which packages computed a result, as a digest a stored result is keyed on.

    record = code_record(scripts=["recipes/compare.py"])   # library + scripts + numeric packages
    record["digest"]                                        # one hex digest of all of it
    code_changes(record, code_record(record["scripts"]))    # ["distill_trainer/training/losses.py changed"]
    modules_digest("distill_trainer.nli.task_evaluation")   # that module and what it imports, transitively

A result read back (a comparison's method, a cache entry, a published table) is only right while the code
that computed it is unchanged, so everything read back is keyed on it, as datasets' `map` fingerprints its
function and DVC its stage's command. `code_record(scripts)` covers the scripts named (recipes, benchmarks)
and every module of the repository they import, transitively: the imports are read from the source
(function-level ones included, a public name of the package root followed to the module that defines it),
so an edit to the reply recipes leaves the NLI comparison's tables current, and any edit to code a result
ran reruns it. The closure is sound for static imports: code that starts importing another module changes,
so the digest changes with it. The caches use the same closure of the modules that fill them
(`modules_digest`), so a change to the loss does not throw away the teacher's stored evaluations. The
library's data files (architectures, metrics) are in every record.

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
# the packages whose imports a record follows: the library and the scripts' own helper modules
REPOSITORY_PACKAGES = (PACKAGE, "recipes", "benchmarks", "checks")
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


def _script_path(script) -> tuple[str, Path]:
    """(the name a record gives a script: its path from the repository root, or as given; its path)."""
    path = Path(script)
    path = path if path.is_absolute() else ROOT / path
    try:
        return str(path.resolve().relative_to(ROOT)), path
    except ValueError:  # a script outside the repository: named as given
        return str(script), path


def script_files(scripts) -> dict[str, str]:
    """{script path from the repository root: sha256, or "missing"} of recipe or benchmark scripts."""
    files = {}
    for script in scripts:
        name, path = _script_path(script)
        files[name] = _sha256(path) if path.is_file() else "missing"
    return files


def scripts_closure(scripts) -> tuple[str, ...]:
    """The files of every repository module the scripts import, transitively (sorted; the scripts apart)."""
    modules = set()
    for script in scripts:
        _, path = _script_path(script)
        if path.is_file():
            modules |= _imports(path.resolve())
    return module_files(*sorted(modules))


def code_record(scripts=()) -> dict:
    """The code that `scripts` run, the numeric packages' versions, and one digest of them all:
    `library` holds the library's files they import (all of it when no script is named) and its data
    files, `scripts` the scripts and the helper modules beside them that they import."""
    everything = library_files()
    if scripts:
        closure = scripts_closure(scripts)
        library = {name: everything[name] for name in closure if name in everything}
        library.update({name: h for name, h in everything.items() if not name.endswith(".py")})
        helpers = {name: _sha256(ROOT / name) for name in closure if name not in everything}
    else:
        library, helpers = everything, {}
    record = {
        "entry": sorted(script_files(scripts)),
        "library": dict(sorted(library.items())),
        "scripts": {**script_files(scripts), **helpers},
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
    """The file of a repository module (`distill_trainer.nli.tasks`, `benchmarks.pairs`), or None for
    another package's."""
    parts = module.split(".")
    if parts[0] not in REPOSITORY_PACKAGES:
        return None
    base = ROOT.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=1)
def _root_names() -> dict[str, str]:
    """{name the package root offers: the module to follow for it}: a public name, the module that
    defines it (the root loads it on use); a name the root itself imports, the root."""
    import distill_trainer

    own = {name: PACKAGE for name in vars(distill_trainer) if not name.startswith("__")}
    return own | dict(distill_trainer._PUBLIC)


def imported_names(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (function-level imports count), as absolute names;
    `from a import b` gives `a` and `a.b` (b may be a module or a name)."""
    try:
        package = ".".join(Path(path).resolve().relative_to(ROOT).with_suffix("").parts[:-1])
    except ValueError:  # a script outside the repository: its relative imports name no module of ours
        package = ""
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
    """The repository modules a file imports, with the packages above each (their `__init__` runs on
    import); a public name of the package root counts as the module that defines it, and {ALL} answers
    for a name of the root that is neither a module nor public (it may load any module)."""
    found = set()
    for name in imported_names(path):
        parts = name.split(".")
        if parts[0] == PACKAGE and len(parts) == 2 and _module_path(name) is None:
            if parts[1] not in _root_names():
                return frozenset({ALL})
            parts = _root_names()[parts[1]].split(".")
        found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return frozenset(name for name in found if _module_path(name) is not None)


@functools.lru_cache(maxsize=64)
def module_files(*modules: str) -> tuple[str, ...]:
    """The files of `modules` and of every repository module they import, transitively (sorted)."""
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
