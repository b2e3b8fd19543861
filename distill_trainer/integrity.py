"""What every on-disk store uses to prove its content is the content it wrote.

    records = file_records(directory, skip=("manifest.json",))   # size and sha256 of every file
    problem = files_problem(directory, records)                  # None, or what is missing or changed
    key = sha256_text(json.dumps(settings, sort_keys=True))      # a cache key
    write_text_atomically(path, text)                            # never a half-written file
    with disk_space_checked(path, needed_bytes):                 # disk full -> one line, see below
        ...

A writer that writes beside its target and renames into place (`partial_path`) leaves the partial file
behind when it is killed (SIGKILL, the OOM killer, a lost machine): the next writer of the same target
removes those of processes that no longer run (`remove_stale_partials`), so a rerun leaves none. A full
disk (ENOSPC, a quota) in any writer becomes a `DiskFullError`, one line naming the path, the bytes it
needed and the space free there; the target keeps what it held before, and the same command completes
once space is freed.

A store writes `file_records` once its files are complete and checks `files_problem` before trusting
them: a file truncated, replaced, or damaged in place at the same size then shows as a checksum
mismatch instead of loading silently. Hashing reads about 1 GB/s on one CPU core with the file in the
page cache (0.35-0.7 s for 540 MB, depending on what else runs); from a cold disk the read dominates,
and loading the file pays that read anyway.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from pathlib import Path

from distill_trainer.errors import UsageError

BLOCK = 1 << 20  # read in 1 MiB blocks: flat memory for files of any size


def sha256_text(text: str) -> str:
    """The hex digest of `text` (UTF-8): every cache key and stored-content check is one of these."""
    return hashlib.sha256(text.encode()).hexdigest()


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def file_records(directory, skip=()) -> dict:
    """{relative path: {"size", "sha256"}} of every file under `directory`, except the names in `skip`."""
    directory = Path(directory)
    return {
        str(p.relative_to(directory)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def files_problem(directory, records: dict) -> str | None:
    """The first file of `records` that is missing, of another size or with another checksum (None: all
    unchanged). Sizes are compared first: a truncated file is reported without reading it."""
    directory = Path(directory)
    for name, record in records.items():
        file = directory / name
        if not file.is_file():
            return f"{name} is missing"
        size = file.stat().st_size
        if size != record["size"]:
            return f"{name} is {size} bytes, {record['size']} when saved (truncated or replaced)"
        if sha256_file(file) != record["sha256"]:
            return f"{name} has changed since it was saved (checksum mismatch)"
    return None


class DiskFullError(UsageError):
    """A write failed for lack of space (or quota): the message names the path, the bytes and the space."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _is_no_space(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return True
    # torch's and safetensors' writers report a full disk as their own errors, with the system's text
    return isinstance(error, (RuntimeError, OSError)) and "No space left on device" in str(error)


def _megabytes(n: int | None) -> str:
    return "an unknown amount" if n is None else f"{n / 1e6:,.1f} MB"


def free_bytes(path) -> int | None:
    """Space free to this user on the file system that holds `path` (its nearest existing ancestor)."""
    existing = Path(path).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def disk_full_error(path, needed: int | None, error: BaseException) -> DiskFullError:
    reason = getattr(error, "strerror", None) or "No space left on device"
    return DiskFullError(
        f"cannot write {path}: {reason}; it needs {_megabytes(needed)} and {_megabytes(free_bytes(path))} "
        "is free there; what was there before is kept: free some space (or write elsewhere) and run again"
    )


@contextlib.contextmanager
def disk_space_checked(path, needed: int | None = None, cleanup=None):
    """Turn a full disk while writing `path` (`needed` bytes, when known) into one `DiskFullError` line;
    `cleanup()` first removes what the failed write left (a partial file or folder)."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as error:
        if not _is_no_space(error):
            raise
        if cleanup is not None:
            cleanup()
        raise disk_full_error(path, needed, error) from None


def partial_path(path) -> Path:
    """Where `path` is written before it is renamed into place: beside it, named after this process."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.partial")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(path) -> list[Path]:
    """Remove the partial files (or folders) of `path` that processes no longer running left beside it."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    head, tail = f".{path.name}.", ".partial"
    for candidate in path.parent.iterdir():
        name = candidate.name
        pid = name[len(head) : -len(tail)] if name.startswith(head) and name.endswith(tail) else ""
        if not pid.isdigit() or int(pid) == os.getpid() or _running(int(pid)):
            continue
        if candidate.is_dir() and not candidate.is_symlink():
            shutil.rmtree(candidate, ignore_errors=True)
        else:
            candidate.unlink(missing_ok=True)
        removed.append(candidate)
    return removed


def write_bytes_atomically(path, data: bytes) -> Path:
    """Write beside `path` under a name unique to this process, then rename into place: a reader (or a
    crash) sees the old file or the new one, never part of one. A full disk is one `DiskFullError`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    partial = partial_path(path)
    try:
        with disk_space_checked(path, len(data)):
            partial.write_bytes(data)
            os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_text_atomically(path, text: str) -> Path:
    """`write_bytes_atomically` of `text` in UTF-8."""
    return write_bytes_atomically(path, text.encode("utf-8"))
