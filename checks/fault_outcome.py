"""What a run of the fault job produced, comparable digit for digit between runs, and the files it left
(`checks/faults.py` compares a killed-then-rerun job with an uninterrupted one through these)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

# what a run writes, under the campaign's folder (the models and configs are written once, before)
OUTPUTS = ("results", "cache", "context")
# fields that measure time or memory: they differ between any two runs, killed or not
MEASURED = ("seconds", "runtime", "per_second", "mib", "memory", "peak", "rss", "started", "flos")
CACHE_INFO = ("teacher_output_cache", "teacher_completions")
PROVENANCE = ("reused", "generated", "when_built")
# a method whose scores a rerun reads back from the evaluation cache the killed run filled says so
READ_BACK = ("scores_read_back",)


def _strip_measured(value, cache_info=False):
    """`value` without the fields that measure time or memory, the sentences that quote memory, and a
    cache's account of what it reused or generated or read back (a rerun reads what the killed run
    stored)."""
    if isinstance(value, dict):
        return {
            k: _strip_measured(v, cache_info or k in CACHE_INFO)
            for k, v in value.items()
            if not any(m in k.lower() for m in MEASURED)
            and not (cache_info and k in PROVENANCE)
            and k not in READ_BACK
        }
    if isinstance(value, list):
        return [_strip_measured(v, cache_info) for v in value if not (isinstance(v, str) and "GiB" in v)]
    return value


def outcome(root: Path) -> dict:
    """What the job produced, comparable digit for digit between runs (see the module docstring)."""
    result = {}
    for folder in (root / "results" / "tiny", root / "context"):
        for path in sorted(folder.rglob("*")):
            rel = str(path.relative_to(root))
            if "checkpoint" in rel or not path.is_file():
                continue
            if path.suffix == ".safetensors" or path.name.startswith("predictions_"):
                result[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.name in ("summary.json", "metrics.json"):
                result[rel] = _strip_measured(json.loads(path.read_text()))
    return result


def file_listing(root: Path) -> set[str]:
    return {
        str(p.relative_to(root))
        for name in OUTPUTS
        for p in (root / name).rglob("*")
        if p.is_file() or p.is_symlink()
    }


def partial_files(root: Path, reference: set[str]) -> list[str]:
    """Files the uninterrupted run does not have, and JSON files that do not parse."""
    found = sorted(file_listing(root) - reference)
    for rel in sorted(file_listing(root) & reference):
        if rel.endswith(".json"):
            try:
                json.loads((root / rel).read_text())
            except ValueError:
                found.append(f"{rel} (does not parse)")
    return found


def differences(got: dict, want: dict) -> list[str]:
    keys = sorted(set(got) | set(want))
    return [k for k in keys if got.get(k) != want.get(k)]
