"""The output folder: a safe place to write, and one run at a time in it.

    check_output_location(config.output_dir)      # not empty, /, home or the project's own folders; writable
    with OutputLock(config.output_dir):           # a second run into the same folder fails at once
        ...                                       # the whole run

A recipe's outputs replace what is in `output_dir` (and `overwrite_output_dir` removes checkpoints), so
a folder that holds other things (the file system root, a home directory, the library's source) is
refused outright, and an empty setting, which would mean the current directory, too. Two runs writing
into one folder would silently replace each other's results: the first takes an exclusive lock on
`output_dir/.run.lock` for its whole run (released, and the file removed, when it ends; the operating
system releases it if the process dies), and a second one stops with one line naming the first.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from pathlib import Path

from distill_trainer.errors import UsageError
from distill_trainer.integrity import partial_path, remove_stale_partials

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# folders of a source checkout (or of site-packages) that hold the project itself, never a run's outputs
PROJECT_FOLDERS = ("distill_trainer", "recipes", "tests", "benchmarks", "checks", ".git")
LOCK_FILE = ".run.lock"


def check_safe_output_dir(output_dir) -> None:
    """Refuse an output_dir that is empty, the file system root, a home directory (or above one), or the
    project's own folders."""
    text = "" if output_dir is None else str(output_dir)
    fix = "set output_dir to a folder of its own, such as results/my-run"
    if not text.strip():
        raise UsageError(f"output_dir is empty, which means the current directory; {fix}")
    path = Path(text).expanduser().absolute().resolve()
    home = Path.home().absolute().resolve()
    if path == Path(path.anchor):
        raise UsageError(f"output_dir {text} is the file system root; {fix}")
    if path == home or path in home.parents:
        raise UsageError(
            f"output_dir {text} is {'your home directory' if path == home else 'above your home directory'}"
            f", which holds other files; {fix}"
        )
    own = [PROJECT_ROOT / name for name in PROJECT_FOLDERS]
    if path == PROJECT_ROOT or any(path == folder or folder in path.parents for folder in own):
        raise UsageError(f"output_dir {text} is inside the project's own folders ({path}); {fix}")


def check_writable(output_dir) -> None:
    """The nearest existing ancestor of output_dir is a directory we can create files in."""
    path = Path(output_dir).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(
            f"output_dir {output_dir} cannot be created: {existing} is a file, not a directory; "
            "choose another output_dir"
        )
    probe = existing / "write-test"  # written as its partial file: a killed check leaves nothing for long
    remove_stale_partials(probe)
    try:
        partial_path(probe).touch()
        partial_path(probe).unlink()
    except OSError as error:
        raise UsageError(
            f"output_dir {output_dir} is not writable ({error.strerror or error} in {existing}); "
            "choose a directory you can write to"
        ) from None


def check_output_location(output_dir) -> None:
    check_safe_output_dir(output_dir)
    check_writable(output_dir)


class OutputLock:
    """An exclusive lock on `output_dir/.run.lock`, held from `acquire` to `release` (a context manager)."""

    def __init__(self, output_dir):
        self.path = Path(output_dir) / LOCK_FILE
        self._handle = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # no advisory locks on this platform: run unguarded
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 -- held for the whole run
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = " ".join(handle.read().split()) or "holder unknown"
                handle.close()
                raise UsageError(
                    f"output_dir {self.path.parent} is in use by another run ({holder}); wait for it "
                    "to finish, or choose another output_dir"
                ) from None
            try:  # the previous holder may have removed the file between our open and our lock: retry
                same = os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino
            except OSError:
                same = False
            if same:
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv else ""
        handle.write(
            f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: "
            f"{command}\n"
        )
        handle.flush()
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        try:
            self.path.unlink()  # while still holding the lock, so no one locks a file about to vanish
        except OSError:
            pass
        self._handle.close()
        self._handle = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
