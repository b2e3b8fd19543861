"""Where the library keeps its caches (embedded models, teacher outputs, evaluations, completions).

`$DISTILL_TRAINER_CACHE`, else `distill-trainer` under the Hugging Face home (`$HF_HOME`, else
`$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DISTILL_TRAINER_CACHE"


# the caches' folders under cache_home(), as a line names them
CACHE_NAMES = {
    "evaluations": "evaluation",
    "teacher_outputs": "teacher output",
    "teacher_completions": "completion",
    "quantized": "quantized teacher",
}


def cache_home() -> Path:
    """The root of this library's cache (see the module docstring for the lookup order)."""
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    hf_home = os.environ.get("HF_HOME")
    if not hf_home:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        hf_home = Path(xdg).expanduser() / "huggingface"
    return Path(hf_home).expanduser() / "distill-trainer"


def caches_written_since(start: float) -> list[str]:
    """The caches (by name) with a file written at `start` (a `time.time()`) or later, under cache_home()."""
    written = []
    for folder, name in CACHE_NAMES.items():
        directory = cache_home() / folder
        if directory.is_dir() and any(_modified_since(path, start) for path in directory.rglob("*")):
            written.append(name)
    return written


def _modified_since(path: Path, start: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime >= start
    except OSError:  # removed while we looked (another run replacing its entry)
        return False
