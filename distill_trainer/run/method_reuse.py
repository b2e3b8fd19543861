"""Reading a comparison method back from an earlier run instead of running it again.

    fingerprint = method_fingerprint(recipe, values)          # values: the method's resolved config
    earlier = find_earlier_result(results_dir, name, fingerprint)
    if earlier: reuse_result(earlier, method_dir)             # hard links, no copy of the weights
    else: ...run it...; record_fingerprint(method_dir, fingerprint)

A method's result depends on its resolved config, the data files it reads and the model files it loads
(and the library's version), so the fingerprint hashes exactly those: the config with its output folder
left out, the content of every data file the config names or resolves to, and each model folder's
identity (config, weight files' names, sizes and modification times, as the teacher output cache keys
on). A result is reused only if the earlier run wrote its fingerprint, which happens after the method
finished: an interrupted method is never read back.

A comparison run again under the same run_name (after a kill, a full disk, Ctrl-C) keeps the methods
that finished in its folder (`finished_here`) and continues the one that was interrupted from its last
complete checkpoint, or starts it over (`interrupt.resume_flags`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

from distill_trainer.integrity import sha256_file, write_text_atomically

FINGERPRINT_FILE = "fingerprint.json"
MODEL_KEYS = ("model_name_or_path", "teacher_model_name_or_path")
# keys that name where results go, not what they are
IGNORED_KEYS = ("output_dir", "run_name", "logging_dir")


@functools.lru_cache(maxsize=256)
def _content_digest(path: str, size: int, mtime_ns: int) -> str:
    # every method of a run reads the same data files: hash each once per process (size and modification
    # time in the key, so a file rewritten in place is hashed again)
    return sha256_file(path)


def _data_paths(values: dict) -> list[Path]:
    """Every data file the method reads: files its config names, and the JSONL files of its data folder."""
    from distill_trainer.nli.tasks import resolve_data_dir

    paths = []
    for key, value in sorted(values.items()):
        if key in MODEL_KEYS or key in IGNORED_KEYS or not isinstance(value, str):
            continue
        if Path(value).is_file():
            paths.append(Path(value))
    if values.get("data_source", "auto") != "hub":
        directory = resolve_data_dir(values.get("data_source", "auto"), values.get("data_dir"))
        if directory is not None:
            paths += sorted(directory.rglob("*.jsonl"))
    return paths


def method_fingerprint(recipe: str, values: dict) -> str:
    """A digest of what a method's result depends on (see the module docstring)."""
    from distill_trainer.models.loading import resolve_model_path
    from distill_trainer.teacher.teacher import is_self, teacher_source_fingerprint

    digest = hashlib.sha256()
    config = {k: v for k, v in values.items() if k not in IGNORED_KEYS}
    digest.update(json.dumps([recipe, metadata.version("distill-trainer"), config], sort_keys=True).encode())
    for key in MODEL_KEYS:
        name = values.get(key)
        if name and not is_self(name):
            model = teacher_source_fingerprint(str(resolve_model_path(name)))
            # a Hub id without a local folder: the id (and any revision in the config) is all we know
            digest.update(f"{key}={model or name};".encode())
    for path in _data_paths(values):
        stat = path.stat()
        digest.update(
            f"{path.name}:{_content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)};".encode()
        )
    return digest.hexdigest()


def record_fingerprint(method_dir: Path, fingerprint: str, measured: dict | None = None) -> None:
    """Mark a finished method's folder as reusable (written last, atomically), with what its run measured
    (peak memory, wall time), so that a row read back reports the costs of the run that made it."""
    record = {"fingerprint": fingerprint, "measured": measured or {}}
    write_text_atomically(Path(method_dir) / FINGERPRINT_FILE, json.dumps(record, indent=1) + "\n")


def _read_record(method_dir: Path) -> dict:
    try:
        record = json.loads((Path(method_dir) / FINGERPRINT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _recorded(method_dir: Path) -> str | None:
    return _read_record(method_dir).get("fingerprint")


def recorded_costs(method_dir: Path) -> dict:
    """What the run that made this result measured (see `record_fingerprint`)."""
    return dict(_read_record(method_dir).get("measured") or {})


def find_earlier_result(results_dir: Path, name: str, fingerprint: str, exclude: Path | None = None):
    """The newest earlier run's folder of method `name` with this fingerprint, or None."""
    candidates = (
        [
            run / name
            for run in Path(results_dir).iterdir()
            if run.is_dir()
            and not run.is_symlink()
            and (exclude is None or run.resolve() != exclude.resolve())
        ]
        if Path(results_dir).is_dir()
        else []
    )
    matches = [c for c in candidates if _recorded(c) == fingerprint and (c / "metrics.json").is_file()]
    return max(matches, key=lambda c: (c / FINGERPRINT_FILE).stat().st_mtime, default=None)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)  # same file system: no second copy of a student's weights
    except OSError:
        shutil.copy2(source, target)


def reuse_result(earlier: Path, method_dir: Path) -> None:
    """Fill `method_dir` with the earlier result's files; its own method.yaml (this run's config) stays."""
    staging = method_dir.with_name(method_dir.name + ".reusing")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(earlier, staging, copy_function=_link_or_copy)
    if (method_dir / "method.yaml").is_file():
        shutil.copy2(method_dir / "method.yaml", staging / "method.yaml")
    (staging / "reused_from.txt").write_text(f"{earlier.resolve()}\n", encoding="utf-8")
    shutil.rmtree(method_dir, ignore_errors=True)
    os.replace(staging, method_dir)


def finished_here(method_dir: Path, fingerprint: str) -> bool:
    """The method finished in this very folder, with these settings (an earlier invocation of the run)."""
    return _recorded(method_dir) == fingerprint and (Path(method_dir) / "metrics.json").is_file()
