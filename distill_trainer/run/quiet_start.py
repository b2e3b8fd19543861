"""Imported first by every command line (the recipes' scripts): Ctrl-C while the rest of the program loads
(torch and transformers take seconds) is the one line and exit status 130 that `interrupt.interruptible`
gives once it runs, never a traceback; one during the interpreter's teardown, once everything is written,
is ignored. It also drops the known noise lines of peft and bitsandbytes (`quiet_logs`), before those
packages are imported. It needs nothing but the standard library, `interrupt` and `quiet_logs`.

    import distill_trainer.run.quiet_start  # noqa: F401  (first: before the imports that take seconds)

    # isort: split
    import torch
"""

import atexit
import os
import signal
import sys

from distill_trainer.quiet_logs import install_quiet_logs
from distill_trainer.run.interrupt import (
    CHILD_ENV,
    EXIT_STATUS,
    default_program,
    interruption_line,
    stopped_by_ctrl_c,
)

_previous = sys.excepthook


def _quiet_ctrl_c(kind, error, trace):
    """A KeyboardInterrupt that reached the top (outside `interruptible`): one line, status 130."""
    if not issubclass(kind, KeyboardInterrupt):
        return _previous(kind, error, trace)
    if not os.environ.get(CHILD_ENV):  # a comparison's method process: its parent says it
        print(interruption_line(default_program(), sys.argv[1:]), file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(EXIT_STATUS)  # the status a shell gives Ctrl-C; nothing is left to clean up this early


def _ignore_ctrl_c_at_exit() -> None:
    """The program has ended: a Ctrl-C now, while the interpreter tears down (after it has put back the
    default action, which ends a process by the signal, without a word), changes nothing and is ignored.

    Registered first, so it runs last of the exit handlers. After a Ctrl-C that `interruptible` handled,
    it ends the process here with status 130: a Ctrl-C landing while torch imports was seen to end the
    interpreter by the signal later in its teardown (2 of 40 interrupts 1.2-3.2 s into `distill-trainer
    validate`; none of 40 since), and what follows the exit handlers has nothing of ours to write."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if stopped_by_ctrl_c():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_STATUS)


sys.excepthook = _quiet_ctrl_c
atexit.register(_ignore_ctrl_c_at_exit)
install_quiet_logs()
