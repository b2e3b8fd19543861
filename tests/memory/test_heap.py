"""`reusing_freed_memory`: a large freed tensor stays in the C heap (no page faults for the next one) while
the block runs, and goes back to the OS when it ends; a configured environment is left alone."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from distill_trainer.heap import _libc_function, reusing_freed_memory
from distill_trainer.memory.needed import proc_status
from distill_trainer.memory.units import MIB

pytestmark = pytest.mark.skipif(
    _libc_function("mallopt") is None or "RssAnon" not in proc_status(), reason="needs glibc on Linux"
)
SIZE = 256 * MIB


def _anonymous_after_a_freed_tensor(size: int = SIZE) -> int:
    tensor = torch.ones(size // 4)  # float32: every page written
    del tensor
    return proc_status()["RssAnon"]


def test_a_freed_tensor_stays_in_the_heap_while_reusing_and_leaves_after():
    before = proc_status()["RssAnon"]
    assert _anonymous_after_a_freed_tensor() - before < SIZE // 2  # default: its pages go back at once
    with reusing_freed_memory() as changed:
        assert changed
        kept = _anonymous_after_a_freed_tensor()
        assert kept - before > SIZE * 3 // 4
        # a later tensor that fits in the freed block takes its pages: nothing more is faulted in (the
        # same size would not fit: torch asks for 64-byte aligned blocks, and glibc for a little more)
        assert _anonymous_after_a_freed_tensor(SIZE - MIB) - kept < SIZE // 4
    assert proc_status()["RssAnon"] - before < SIZE // 2  # trimmed on leaving
    assert _anonymous_after_a_freed_tensor() - before < SIZE // 2  # and the defaults are back


def test_an_environment_that_sets_the_thresholds_is_left_alone():
    program = (
        "from distill_trainer.heap import reusing_freed_memory\n"
        "with reusing_freed_memory() as changed: print(changed)"
    )
    for environment, expected in (({"MALLOC_MMAP_THRESHOLD_": "131072"}, "False"), ({}, "True")):
        reply = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, check=True, env=environment
        )
        assert reply.stdout.strip() == expected
