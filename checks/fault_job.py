"""The job the fault campaign (`checks/faults.py`) kills: the comparison on tiny models, then
distill_context, in this one process, with every write under the campaign's folder counted.

    python -m checks.fault_job ROOT                       # run the job once
    FAULT_EVENTS=events.tsv python -m checks.fault_job ROOT   # ... and log every write event
    FAULT_KILL=17:0.25 python -m checks.fault_job ROOT    # SIGKILL 0.25 s after the 17th write event
    FAULT_KILL=17:0:INT python -m checks.fault_job ROOT   # Ctrl-C (SIGINT) at the 17th write event

A write event is what Python's audit hooks see under ROOT: a file opened for writing, a rename or
replace, a removal, a new folder, a link. The kill is SIGKILL, sent by the process to itself: nothing
of it runs afterwards (no `finally`, no `atexit`), as with the OOM killer or a preempted machine. With a
delay of 0 it strikes before the event's operation, so the file is never opened or the rename never
happens; with a delay, in whatever the job is doing by then (a training step, a teacher pass, a write).
Both recipes run exactly as their command lines run them (`run_recipe`), and a rerun is the same
command; distill_context's, like each method of the comparison, adds the flag that its output folder
asks for (`--resume_from_checkpoint true` after checkpoints, `--overwrite_output_dir true` after partial
results), as its one-line refusal tells a user to.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

# event name -> which argument is the path it changes
WRITE_EVENTS = {
    "os.rename": 0,  # os.rename and os.replace
    "os.remove": 0,
    "os.rmdir": 0,
    "os.mkdir": 0,
    "os.link": 1,
    "os.symlink": 1,
    "os.truncate": 0,
    "shutil.rmtree": 0,
    "shutil.copyfile": 1,
}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def written_path(event: str, args) -> str | None:
    """The path a write event changes, or None when the event writes nothing."""
    if event == "open":
        path, mode, flags = args
        writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & WRITE_FLAGS)
        if not writing:
            return None
    elif event in WRITE_EVENTS:
        path = args[WRITE_EVENTS[event]]
    else:
        return None
    if isinstance(path, int) or path is None:
        return None
    return os.path.abspath(os.fsdecode(path))


def install_hook(
    root: Path, events_file=None, kill_at: int | None = None, delay: float = 0.0, signal_number=signal.SIGKILL
) -> None:
    """Count write events under `root`; log them to `events_file`; signal this process at `kill_at`."""
    prefix = str(root.resolve()) + os.sep
    state = {"count": 0, "busy": False, "start": time.perf_counter()}
    log = open(events_file, "w", encoding="utf-8") if events_file else None  # noqa: SIM115 -- whole run

    def kill_after(seconds: float) -> None:
        time.sleep(seconds)
        os.kill(os.getpid(), signal_number)

    def hook(event, args):
        if state["busy"]:
            return
        path = written_path(event, args)
        if path is None or not path.startswith(prefix):
            return
        state["busy"] = True
        try:
            state["count"] += 1
            if log is not None:
                elapsed = time.perf_counter() - state["start"]
                log.write(f"{state['count']}\t{elapsed:.4f}\t{event}\t{path[len(prefix) :]}\n")
                log.flush()
            if state["count"] == kill_at:
                if delay <= 0:
                    os.kill(os.getpid(), signal_number)
                    return
                threading.Thread(target=kill_after, args=(delay,), daemon=True).start()
        finally:
            state["busy"] = False

    sys.addaudithook(hook)


def run_job(root: Path) -> int:
    """The comparison, then distill_context; the exit status of the first that fails, else 0."""
    from distill_trainer.run.interrupt import resume_flags
    from distill_trainer.run.runner import run_recipe
    from recipes import compare, distill_context

    for module, name in ((compare, "compare"), (distill_context, "distill_context")):
        argv = ["--config", str(root / f"{name}.yaml")]
        if name == "distill_context":  # a run cut short continues as its refusal says (compare does the
            argv += resume_flags(root / "context")  # same for each of its methods)
        sys.argv = [f"recipes/{name}.py", *argv]  # as its command line runs it (Ctrl-C's line names it)
        try:
            run_recipe(module.main, argv)
        except SystemExit as stop:
            if stop.code:
                return stop.code if isinstance(stop.code, int) else 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0])
    kill = os.environ.get("FAULT_KILL")
    kill_at, delay, name = None, 0.0, "KILL"
    if kill:
        at, seconds, *named = kill.split(":")
        kill_at, delay, name = int(at), float(seconds or 0), (named or ["KILL"])[0]
    if name == "INT":  # Ctrl-C as at a terminal, even when started in the background (SIGINT ignored)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    install_hook(root, os.environ.get("FAULT_EVENTS"), kill_at, delay, getattr(signal, f"SIG{name}"))
    return run_job(root)


if __name__ == "__main__":
    sys.exit(main())
