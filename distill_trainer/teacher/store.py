"""The teacher output cache on disk: each cache directory verifies itself before it is trusted.

    save_atomically(dataset, path, {"key": key, ...})   # written under a temporary name, then renamed
    dataset, problem = load_verified(path)             # (None, "what is wrong") for a damaged cache

The key record (`teacher_cache_key.json`) holds the key's components and every file's size and sha256; a
load checks them, then the stored distributions' invariants (finite log-probabilities <= 0 whose mass
sums to 1), so a truncated or corrupted cache is rebuilt instead of training on garbage.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from distill_trainer.integrity import (
    disk_space_checked,
    file_records,
    files_problem,
    partial_path,
    remove_stale_partials,
    write_text_atomically,
)

KEY_FILE = "teacher_cache_key.json"
BUILD_FILE = "teacher_cache_build.json"  # how the pass that built the cache went; not part of its contents
MASS_TOLERANCE = 1e-3  # |log(total mass)| allowed: float32 rounding of top-k log-probs and the tail


def stored_key(path: Path) -> str | None:
    try:
        return json.loads((path / KEY_FILE).read_text())["key"]
    except (OSError, ValueError, KeyError):
        return None


def _files_problem(path: Path) -> str | None:
    """A file the key record lists that is missing or changed (a cache without the record: None)."""
    try:
        files = json.loads((path / KEY_FILE).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    return files_problem(path, files)


def values_problem(dataset) -> str | None:
    """The stored distributions' invariants: finite log-probabilities <= 0 whose mass sums to 1."""
    columns = dataset.column_names
    if "teacher_label_logprobs" in columns:
        rows = dataset.with_format("arrow")["teacher_label_logprobs"].combine_chunks()
        width = len(rows[0]) if len(rows) else 0
        logprobs = np.asarray(rows.flatten().to_numpy(zero_copy_only=False), dtype=np.float64).reshape(
            -1, width
        )
        tail = np.full(len(logprobs), -np.inf)
        row_of = np.arange(len(logprobs))
    elif "teacher_topk_logprobs" in columns:
        table = dataset.with_format("arrow")
        per_row = table["teacher_topk_logprobs"].combine_chunks()
        tokens = per_row.flatten()
        offsets = np.asarray(per_row.offsets, dtype=np.int64)
        row_of = np.repeat(np.arange(len(per_row)), np.diff(offsets))  # the row of each answer token
        width = len(tokens[0]) if len(tokens) else 0
        logprobs = np.asarray(tokens.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
        if width == 0 or logprobs.size % width:
            return "the top-k log-probabilities have uneven lengths"
        logprobs = logprobs.reshape(-1, width)
        tail = np.asarray(
            table["teacher_tail_logprob"].combine_chunks().flatten().to_numpy(zero_copy_only=False),
            dtype=np.float64,
        )
        if len(tail) != len(logprobs):
            return "the tail masses do not match the answer tokens"
    else:
        return "it holds no teacher outputs"
    if logprobs.size == 0:
        return None
    # NaN and +inf come from a broken teacher or damage: count the rows, so the warning says how much
    invalid = np.isnan(logprobs).any(-1) | np.isposinf(logprobs).any(-1) | np.isnan(tail) | np.isposinf(tail)
    if invalid.any():
        bad_rows = np.unique(row_of[invalid])
        return f"{len(bad_rows)} of its {len(dataset)} rows hold NaN or infinite log-probabilities"
    if not np.isfinite(logprobs).all() or (logprobs > MASS_TOLERANCE).any() or (tail > MASS_TOLERANCE).any():
        return "log-probabilities above 0 or not finite"
    mass = np.logaddexp(np.logaddexp.reduce(logprobs, axis=-1), tail)
    worst = float(np.abs(mass).max())
    if worst > MASS_TOLERANCE:
        return f"a distribution's mass is {np.exp(mass[np.abs(mass).argmax()]):.4g}, not 1"
    return None


def load_verified(path: Path):
    """(the cached dataset, None) or (None, what is wrong with it)."""
    from datasets import load_from_disk

    problem = _files_problem(path)
    if problem is not None:
        return None, problem
    remove_stale_partials(path / BUILD_FILE)  # a build record a killed run did not finish writing
    try:
        dataset = load_from_disk(str(path))
    except Exception as error:  # noqa: BLE001 -- truncated Arrow files fail in many ways; all mean "rebuild"
        return None, f"it cannot be read: {type(error).__name__}"
    problem = values_problem(dataset)
    return (None, problem) if problem else (dataset, None)


def save_atomically(dataset, path: Path, key_record: dict) -> None:
    """Write to a folder beside `path`, then rename: a crash never leaves a half-written cache that matches,
    and the next save removes the partial folders of killed processes. A full disk is one
    `DiskFullError` line; a cache already there stays as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = partial_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    needed = dataset.data.nbytes if hasattr(dataset, "data") else None
    with disk_space_checked(path, needed, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
        dataset.save_to_disk(str(tmp))
        key_record = {**key_record, "files": file_records(tmp, skip=(KEY_FILE, BUILD_FILE))}
        (tmp / KEY_FILE).write_text(json.dumps(key_record, indent=1, sort_keys=True))
    if path.exists():  # a stale or corrupt cache under the same name (or another process won the race)
        shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(tmp, path)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if stored_key(path) != key_record["key"]:
            raise


def record_build(path: Path, stats: dict) -> None:
    """Keep what building the cache cost (seconds, peak memory), so that runs reusing it can report it."""
    write_text_atomically(path / BUILD_FILE, json.dumps(stats, indent=1, sort_keys=True))


def build_record(path: Path) -> dict | None:
    try:
        return json.loads((Path(path) / BUILD_FILE).read_text())
    except (OSError, ValueError):
        return None
