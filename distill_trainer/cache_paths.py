"""Where the library keeps its caches (embedded models, teacher outputs).

`$DISTILL_TRAINER_CACHE`, else `distill-trainer` under the Hugging Face home (`$HF_HOME`, else
`$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`).
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "DISTILL_TRAINER_CACHE"


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
