"""What a process needs, as opposed to what it has resident (see `NeededMemoryMeter`)."""

from __future__ import annotations

import re
import threading

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
        self.interval = interval
        self.available = "RssAnon" in proc_status_or_empty()
        self._peak = self.anon_now() if self.available else 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if self.available:
            self._thread = threading.Thread(target=self._sample, name="anon-sampler", daemon=True)
            self._thread.start()

    def anon_now(self) -> int:
        status = proc_status()
        return status.get("RssAnon", 0) + status.get("RssShmem", 0)

    def file_now(self) -> int:
        return proc_status().get("RssFile", 0) if self.available else 0

    def peak(self) -> int:
        if not self.available:
            return 0
        current = self.anon_now()
        with self._lock:
            self._peak = max(self._peak, current)
            return self._peak

    def reset(self) -> None:
        if self.available:
            current = self.anon_now()
            with self._lock:
                self._peak = current

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            current = self.anon_now()
            with self._lock:
                self._peak = max(self._peak, current)

    def close(self) -> None:
        self._stop.set()


def proc_status_or_empty() -> dict[str, int]:
    try:
        return proc_status()
    except OSError:
        return {}
