"""Reading a comparison method back from an earlier run instead of running it again.

    fingerprint = method_fingerprint(recipe, values)          # values: the method's resolved config
    earlier = find_earlier_result(results_dir, name, fingerprint)
    if earlier: reuse_result(earlier, method_dir)             # hard links, no copy of the weights
    else: ...run it...; record_fingerprint(method_dir, fingerprint)
    why_rerun(results_dir, name, fingerprint)   # ["code (distill_trainer/training/losses.py changed)"]

A method's result depends on its resolved config, the data files it reads, the model files it loads, the
code that runs it and the packages that decide its numerics, so the fingerprint hashes exactly those, as
named parts: `config` (with its output folder left out), `data` (the content of every data file the
config names or resolves to), `model` (each model folder's identity: config, weight files' names, sizes
and modification times, as the teacher output cache keys on), `code` (the method's recipe script and every
module of the repository it imports, transitively, `code_digest.code_record`) and `packages` (the numeric
packages' versions). A change to any code the method imports reruns it; one to code it never imports
(the reply recipes' modules) does not. A result is reused only if the earlier run wrote its fingerprint,
which happens after the method finished: an interrupted method is never read back. When a method has an
earlier result under another fingerprint, `why_rerun` names the parts that differ (and which files).

A comparison over several students keeps each student's methods in a folder of its run: the search
looks there too, so a student's row is read back from a run of that student alone, and the other way
round. It also looks at the learning-rate candidates of a selection run (`<method>-lr<rate>`, trained
and evaluated as the method would be, `learning_rate_selection.py`): the candidate chosen on the dev rows
has the measured run's fingerprint, so the measured run reads it back instead of training it again.

A comparison run again under the same run_name (after a kill, a full disk, Ctrl-C) keeps the methods
that finished in its folder (`finished_here`) and continues the one that was interrupted from its last
complete checkpoint, or starts it over (`interrupt.resume_flags`).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

from distill_trainer.code_digest import code_changes, code_record
from distill_trainer.integrity import sha256_file, sha256_text, write_text_atomically

FINGERPRINT_FILE = "fingerprint.json"
MODEL_KEYS = ("model_name_or_path", "teacher_model_name_or_path")
# keys that name where results go, not what they are
IGNORED_KEYS = ("output_dir", "run_name", "logging_dir")
# a learning-rate candidate's folder: `<method>-lr<rate>` (run/learning_rate_selection.py)
CANDIDATE_MARK = "-lr"


def candidate_folder(method: str, rate: float) -> str:
    return f"{method}{CANDIDATE_MARK}{rate:g}"


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
    if "data_source" in values and values["data_source"] != "hub":  # a NLI recipe's data folder
        directory = resolve_data_dir(values["data_source"], values.get("data_dir"))
        if directory is not None:
            paths += sorted(directory.rglob("*.jsonl"))
    return paths


class Fingerprint(str):
    """The fingerprint (a hex digest), carrying the parts it hashes and the code files (`code_record`)."""

    parts: dict
    code: dict

    def __new__(cls, parts: dict, code: dict):
        fingerprint = super().__new__(cls, sha256_text(json.dumps(parts, sort_keys=True)))
        fingerprint.parts, fingerprint.code = parts, code
        return fingerprint


def recipe_script(recipe: str) -> str:
    """The script that runs `recipe`, from the repository root (see `code_digest.ROOT`)."""
    return f"recipes/{recipe}.py"


def method_fingerprint(recipe: str, values: dict) -> Fingerprint:
    """A digest of what a method's result depends on, by part (see the module docstring)."""
    from distill_trainer.models.loading import resolve_model_path
    from distill_trainer.teacher.teacher import is_self, teacher_source_fingerprint

    config = {k: v for k, v in values.items() if k not in IGNORED_KEYS}
    models = []
    for key in MODEL_KEYS:
        name = values.get(key)
        if name and not is_self(name):
            model = teacher_source_fingerprint(str(resolve_model_path(name)))
            # a Hub id without a local folder: the id (and any revision in the config) is all we know
            models.append(f"{key}={model or name}")
    data = []
    for path in _data_paths(values):
        stat = path.stat()
        data.append(f"{path.name}:{_content_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)}")
    code = code_record([recipe_script(recipe)])
    code_files = {"library": code["library"], "scripts": code["scripts"]}
    parts = {
        "config": sha256_text(json.dumps([recipe, config], sort_keys=True, default=str)),
        "data": sha256_text(json.dumps(data)),
        "model": sha256_text(json.dumps(models)),
        "code": sha256_text(json.dumps(code_files, sort_keys=True)),
        "packages": code["packages"],
    }
    return Fingerprint(parts, code)


def record_fingerprint(method_dir: Path, fingerprint: str, measured: dict | None = None) -> None:
    """Mark a finished method's folder as reusable (written last, atomically), with what its run measured
    (peak memory, wall time), so that a row read back reports the costs of the run that made it, and the
    parts of its fingerprint, so that a later run can say what changed."""
    record = {"fingerprint": fingerprint, "measured": measured or {}}
    if isinstance(fingerprint, Fingerprint):
        record.update(parts=fingerprint.parts, code=fingerprint.code)
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


def _run_folders(results_dir: Path):
    """Every run's folder under results_dir, and the student folders of a run over several students (see
    `CompareArguments.students`), where the methods sit one level deeper; never the `latest` link."""
    for run in sorted(Path(results_dir).iterdir()) if Path(results_dir).is_dir() else []:
        if run.is_dir() and not run.is_symlink():
            yield run
            yield from (sub for sub in sorted(run.iterdir()) if sub.is_dir() and not sub.is_symlink())


def _earlier_results(results_dir: Path, name: str, exclude: Path | None) -> list[Path]:
    """Every earlier run's folder of method `name` that finished (whatever its fingerprint), learning-rate
    candidates of it included."""
    candidates = []
    for run in _run_folders(results_dir):
        if exclude is None or run.resolve() != exclude.resolve():
            candidates += [run / name, *sorted(run.glob(f"{name}{CANDIDATE_MARK}*"))]
    return [c for c in candidates if _recorded(c) and (c / "metrics.json").is_file()]


def _newest(folders: list[Path]) -> Path | None:
    return max(folders, key=lambda c: (c / FINGERPRINT_FILE).stat().st_mtime, default=None)


def find_earlier_result(results_dir: Path, name: str, fingerprint: str, exclude: Path | None = None):
    """The newest earlier run's folder of method `name` with this fingerprint, or None."""
    return _newest([c for c in _earlier_results(results_dir, name, exclude) if _recorded(c) == fingerprint])


def differences(record: dict, fingerprint: Fingerprint) -> list[str]:
    """The parts of `fingerprint` that differ from an earlier run's `record`, the code's with its files."""
    before = record.get("parts")
    if not isinstance(before, dict):
        return ["the earlier result has no fingerprint parts (made by an older version)"]
    changed = []
    for part, now in fingerprint.parts.items():
        if before.get(part) == now:
            continue
        if part == "code":
            changed.append(f"code ({'; '.join(code_changes(record.get('code') or {}, fingerprint.code))})")
        elif part == "packages":
            old = before.get(part) or {}
            moved = [f"{k} {old.get(k)} -> {now.get(k)}" for k in sorted(now) if old.get(k) != now.get(k)]
            changed.append(f"package versions ({', '.join(moved)})")
        else:
            changed.append(part)
    return changed or ["the fingerprint differs"]


def why_rerun(results_dir: Path, name: str, fingerprint: Fingerprint, exclude: Path | None = None):
    """What changed since the newest earlier result of `name` (a list of phrases), or None when there is
    none to compare with (a first run)."""
    newest = _newest(_earlier_results(results_dir, name, exclude))
    return None if newest is None else differences(_read_record(newest), fingerprint)


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
