"""Ctrl-C: one line saying what was kept and the command that resumes, exit status 130, no traceback.

    with interruptible(argv, program="python recipes/compare.py"):   # run_recipe and the CLI
        main(argv)
    note_run(output_dir)        # the folder a run writes (no_partial_output_dir does it for every recipe)
    resume_command(program, argv)   # also closes a full disk's error line (run_recipe)

On SIGINT the outermost noted folder is described (a comparison's run folder, not the method it was
running): its finished results, its last complete checkpoint, and the flags that continue it, which are
added to the command exactly as it was typed. The caches (teacher outputs, evaluations, completions)
keep every entry that was complete, so a rerun does not redo them; the line names the caches this run
wrote to (`cache_paths.caches_written_since`), and none when it wrote nothing. A process started by a
comparison for one method (`CHILD_ENV` set) stops silently with the same status: its parent prints the
line. Before `interruptible` runs (while a script's imports load), `quiet_start` gives the same line.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
import time
from pathlib import Path

from distill_trainer.cache_paths import caches_written_since

EXIT_STATUS = 130  # 128 + SIGINT, as shells report it
CHILD_ENV = "DISTILL_TRAINER_METHOD_PROCESS"
_stopped_by_ctrl_c = False  # set once `interruptible` has said its line and is exiting

_runs: list[dict] = []  # the folders being written, outermost first
_STARTED = time.time()  # this process's start, near enough: caches written since were written by this run


def note_run(folder, resume_args=None) -> None:
    """Record that `folder` is being written; `resume_args`: flags that continue it (default: from what
    the folder holds, see `resume_flags`)."""
    _runs.append({"folder": Path(folder), "resume_args": resume_args})


def forget_run(folder) -> None:
    """The run in `folder` ended (finished or failed with its own message): no longer described."""
    for entry in reversed(_runs):
        if entry["folder"] == Path(folder):
            _runs.remove(entry)
            return


def resume_flags(folder) -> list[str]:
    """Continue from the last complete checkpoint; else replace a partial result; else nothing."""
    from distill_trainer.training.checkpoints import last_complete_checkpoint, run_results

    if last_complete_checkpoint(folder) is not None:
        return ["--resume_from_checkpoint", "true"]
    if run_results(folder):
        return ["--overwrite_output_dir", "true"]
    return []


def kept_in(folder: Path) -> str:
    """What `folder` holds that a rerun keeps: finished methods and checkpoints (of each method, for a
    comparison's folder)."""
    from distill_trainer.training.checkpoints import last_complete_checkpoint

    if not folder.is_dir():
        return "no results yet"
    methods = sorted(p for p in folder.iterdir() if (p / "method.yaml").is_file())
    parts = []
    for directory in methods or [folder]:
        label = f"{directory.name} " if methods else ""
        checkpoint = last_complete_checkpoint(directory)
        if (directory / "metrics.json").is_file():
            parts.append(f"{label}finished")
        elif checkpoint is not None:
            parts.append(f"{label}at {checkpoint.name}")
    return ", ".join(parts) or "no finished result or checkpoint yet"


def resume_command(program: str, argv: list[str]) -> str:
    """The command as typed, plus the flags that continue the outermost noted run."""
    if not _runs:
        return shlex.join([*shlex.split(program), *argv])
    entry = _runs[0]
    flags = entry["resume_args"] if entry["resume_args"] is not None else resume_flags(entry["folder"])
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    extra = []
    for index in range(0, len(flags), 2):
        if flags[index] not in given:
            extra += flags[index : index + 2]
    return shlex.join([*shlex.split(program), *argv, *extra])


def interruption_line(program: str, argv: list[str]) -> str:
    command = resume_command(program, argv)
    caches = caches_written_since(_STARTED)
    entries = f"the complete entries it wrote to the {' and '.join(caches)} cache" if caches else ""
    if not _runs:
        kept = f"kept {entries}" if entries else "nothing was written yet"
        return f"interrupted: {kept}; rerun with: {command}"
    folder = _runs[0]["folder"]
    kept = f"kept {folder} ({kept_in(folder)})" + (f" and {entries}" if entries else "")
    return f"interrupted: {kept}; resume with: {command}"


def default_program() -> str:
    script = sys.argv[0] if sys.argv and sys.argv[0] else "the same command"
    return script if script.endswith("distill-trainer") else f"python {script}"


@contextlib.contextmanager
def interruptible(argv=None, program: str | None = None):
    """Run the body; Ctrl-C prints `interruption_line` on stderr and exits with status 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    del _runs[:]
    try:
        yield
    except KeyboardInterrupt:
        global _stopped_by_ctrl_c
        if not os.environ.get(CHILD_ENV):
            print(interruption_line(program or default_program(), argv), file=sys.stderr, flush=True)
        _stopped_by_ctrl_c = True
        sys.exit(EXIT_STATUS)


def stopped_by_ctrl_c() -> bool:
    """Whether `interruptible` handled a Ctrl-C and the program is exiting with `EXIT_STATUS`."""
    return _stopped_by_ctrl_c


def clear_ctrl_c() -> None:
    """Forget a handled Ctrl-C, for a caller that catches `interruptible`'s exit and goes on (a test
    runner, a notebook): the process's exit status is then its own again, not `EXIT_STATUS`."""
    global _stopped_by_ctrl_c
    _stopped_by_ctrl_c = False
