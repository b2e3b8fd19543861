"""What a process needs, as opposed to what it has resident (see `NeededMemoryMeter`)."""

from __future__ import annotations

import re
import threading
import time
import weakref

_STATUS_FIELD = re.compile(r"^(VmRSS|VmHWM|RssAnon|RssFile|RssShmem):\s+(\d+)\s+kB", re.MULTILINE)


def proc_status() -> dict[str, int]:
    with open("/proc/self/status", encoding="ascii") as status:
        return {name: int(kb) * 1024 for name, kb in _STATUS_FIELD.findall(status.read())}


class NeededMemoryMeter:
    """The memory a process needs, as opposed to what it has resident: anonymous (and shared-memory) pages,
    sampled from a thread, whose peak since `reset()` this meter keeps; plus the resident pages of files
    still mapped, read when a phase ends (`file_now()`).

    Why not the resident set: it counts the clean page cache of every memory-mapped file. Loading a
    checkpoint stored in another dtype maps the file and reads each page once for the conversion; those
    pages stay resident (and counted) until the mapping goes, though the kernel can drop them at any time.
    Once a load is over its mappings are closed, so the file pages still resident at a phase's end are
    the ones live tensors map (a float32 model that aliases its checkpoint) and the runtime's libraries:
    memory the method does need. So a phase needs its anonymous peak plus the file pages mapped at its
    end. Where /proc/self/status has no RssAnon (not Linux), the meter reports nothing.
    """

    def __init__(self, interval: float = 0.005):
        self.available = "RssAnon" in proc_status_or_empty()
        self._peak = self.anon_now() if self.available else 0
        self._lock = threading.Lock()
        if self.available:
            _SAMPLER.add(self, interval)

    def anon_now(self) -> int:
        status = proc_status()
        return status.get("RssAnon", 0) + status.get("RssShmem", 0)

    def file_now(self) -> int:
        return proc_status().get("RssFile", 0) if self.available else 0

    def observe(self, current: int) -> None:
        with self._lock:
            self._peak = max(self._peak, current)

    def peak(self) -> int:
        if not self.available:
            return 0
        self.observe(self.anon_now())
        return self._peak

    def reset(self) -> None:
        if self.available:
            current = self.anon_now()
            with self._lock:
                self._peak = current

    def close(self) -> None:
        _SAMPLER.discard(self)


class _Sampler:
    """One thread for every meter of the process: each read of /proc/self/status is shared, and a meter
    nobody closed stops being sampled once it is garbage (a thread per meter, never stopped, slowed every
    later step of a long-lived process through the interpreter lock)."""

    def __init__(self):
        self._meters = weakref.WeakSet()
        self._lock = threading.Lock()
        self._interval = 0.005
        self._thread = None

    def add(self, meter, interval: float) -> None:
        with self._lock:
            self._meters.add(meter)
            self._interval = min(self._interval, interval)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="anon-sampler", daemon=True)
                self._thread.start()

    def discard(self, meter) -> None:
        with self._lock:
            self._meters.discard(meter)

    def _run(self) -> None:
        while True:
            time.sleep(self._interval)
            with self._lock:
                meters = list(self._meters)
            if not meters:
                continue
            status = proc_status()
            current = status.get("RssAnon", 0) + status.get("RssShmem", 0)
            for meter in meters:
                meter.observe(current)
            del meters


_SAMPLER = _Sampler()


def proc_status_or_empty() -> dict[str, int]:
    try:
        return proc_status()
    except OSError:
        return {}
