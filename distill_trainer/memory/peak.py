"""Peak memory per phase (CPU and CUDA), recorded while a recipe or a benchmark runs.

Recording peaks (every recipe does, into metrics.json's "memory"; so do the memory benchmark and
compare.py's in-process mode):

    tracker = MemoryTracker()                 # CUDA device memory when available, host RSS always
    with tracker.phase("model_load"):
        student, teacher = ...
    trainer = ContextDistillationTrainer(..., callbacks=[MemoryCallback(tracker)])
    trainer.train()                           # phases "train", "train_step" and "evaluate" are recorded
    with tracker.phase("final_eval"):
        trainer.evaluate()
    metrics["memory"] = tracker.as_dict()     # {"phases": {"model_load": {"cpu_peak_rss_mib": ...}, ...}}

  - `phase(name)` (or `begin(name)` / `end(name)`) records the peak while the block runs; phases nest,
    and a phase's peak includes its children's. A name used again keeps the maximum.
  - `mark(name)` records the peak since the previous mark (or since the tracker started) under `name`;
    the callback uses it for "train_step" (each optimizer step) and "evaluate".
  - CPU: peak resident set size. On Linux the kernel's high-water mark (VmHWM) is reset per phase by
    writing 5 to /proc/self/clear_refs; where that is not allowed, a thread samples RSS every few ms
    (`cpu_method` in `as_dict()` says which). CUDA: torch's peak allocated and reserved bytes, reset per
    phase. Keys end in `_mib` (2**20 bytes).
  - `MemoryCallback` also adds the running peak of "train" to every log (`mem_cpu_peak_rss_mib`, ...)
    and the evaluation peak to the metrics `evaluate()` returns (`eval_mem_...`).
  - `tracker.peak("train")` gives bytes: {"cpu_rss": ...} plus "cuda_allocated"/"cuda_reserved" on GPU.
  - Resetting the kernel's high-water mark also resets what the process's rusage reports as its peak, so
    a parent reading a child's rusage should take the larger of that and the tracker's lifetime peak
    (`as_dict()["peak"]`), as `report.load_method_result` does.
  - CPU RSS also counts checkpoint files mapped while loading (page cache, reclaimable) and freed
    memory glibc keeps in its heap; run with MALLOC_MMAP_THRESHOLD_=131072 in the environment for an
    RSS that tracks live tensors (benchmarks/memory.py does). `release_freed_memory()` hands the heap's
    free pages back after a large model is dropped (the teacher after its output-cache pass).

Where a peak goes: `memory_breakdown.py`; predicting one without running it: `memory_estimate.py`.
"""

from __future__ import annotations

import contextlib
import threading

import torch
from transformers import TrainerCallback

from distill_trainer.errors import UsageError
from distill_trainer.heap import release_freed_memory  # noqa: F401 (its home before heap.py)
from distill_trainer.memory.needed import NeededMemoryMeter, proc_status
from distill_trainer.memory.units import MIB

# ---------------------------------------------------------------------------------------------------
# meters: the current and peak memory of one kind, with a resettable peak
# ---------------------------------------------------------------------------------------------------


def _kernel_peak_reset_works() -> bool:
    """True when this process may reset its own RSS high-water mark (Linux >= 4.0, not forbidden)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        status = proc_status()
    except OSError:
        return False
    # right after a reset the high-water mark equals the current RSS (a page or two of drift allowed)
    return "VmHWM" in status and status["VmHWM"] - status["VmRSS"] < 8 * MIB


class CpuMemoryMeter:
    """Resident set size of this process and its peak since the last `reset()`.

    method "kernel_hwm" reads the kernel's exact high-water mark; "sampling" polls RSS from a thread every
    `interval` seconds, so a spike shorter than that can be missed.
    """

    def __init__(self, method: str = "auto", interval: float = 0.005):
        if method not in ("auto", "kernel_hwm", "sampling"):
            raise UsageError(
                f"cpu memory method {method!r} is not valid; choose auto, kernel_hwm or sampling"
            )
        if method == "auto":
            method = "kernel_hwm" if _kernel_peak_reset_works() else "sampling"
        elif method == "kernel_hwm" and not _kernel_peak_reset_works():
            raise UsageError("this system does not let a process reset its peak RSS; use method='sampling'")
        self.method = method
        self.interval = interval
        self._sampled_peak = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if method == "sampling":
            import psutil

            self._process = psutil.Process()
            self._sampled_peak = self.current()
            self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)
            self._thread.start()

    def current(self) -> int:
        if self.method == "kernel_hwm":
            return proc_status()["VmRSS"]
        return self._process.memory_info().rss

    def peak(self) -> int:
        if self.method == "kernel_hwm":
            return proc_status()["VmHWM"]
        current = self.current()
        with self._lock:
            self._sampled_peak = max(self._sampled_peak, current)
            return self._sampled_peak

    def reset(self) -> None:
        if self.method == "kernel_hwm":
            with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
                clear_refs.write("5")
        else:
            current = self.current()
            with self._lock:
                self._sampled_peak = current

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            current = self.current()
            with self._lock:
                self._sampled_peak = max(self._sampled_peak, current)

    def close(self) -> None:
        self._stop.set()


class CudaMemoryMeter:
    """torch's allocated and reserved bytes on one CUDA device, and their peaks since the last `reset()`."""

    def __init__(self, device):
        self.device = torch.device(device)

    def current(self) -> tuple[int, int]:
        return torch.cuda.memory_allocated(self.device), torch.cuda.memory_reserved(self.device)

    def peak(self) -> tuple[int, int]:
        return torch.cuda.max_memory_allocated(self.device), torch.cuda.max_memory_reserved(self.device)

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)


# ---------------------------------------------------------------------------------------------------
# the tracker: named phases over the meters
# ---------------------------------------------------------------------------------------------------


class _PhaseRecord:
    """Running maxima of one phase: kept up to date by folding in the meters before every reset."""

    def __init__(self, current: dict[str, int]):
        self.start = dict(current)
        self.end = dict(current)
        self.peak = dict(current)
        self.count = 1

    def fold(self, peaks: dict[str, int]) -> None:
        for key, value in peaks.items():
            self.peak[key] = max(self.peak[key], value)

    def merge(self, later: _PhaseRecord) -> None:
        self.fold(later.peak)
        self.end = later.end
        self.count += later.count


class MemoryTracker:
    """Peak memory per named phase; see the module docstring for the API."""

    def __init__(self, device=None, cpu_method: str = "auto", sampling_interval: float = 0.005):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.cpu = CpuMemoryMeter(cpu_method, sampling_interval)
        self.needed = NeededMemoryMeter(sampling_interval)
        self.cuda = CudaMemoryMeter(device) if device.type == "cuda" else None
        self.phases: dict[str, _PhaseRecord] = {}
        self._open: list[tuple[str, _PhaseRecord]] = []
        self._reset_meters()
        self._interval = _PhaseRecord(self._current())  # since the last mark()
        self._lifetime = _PhaseRecord(self._current())
        self.baseline_cpu_rss = self._lifetime.start["cpu_rss"]

    # -- reading the meters --

    def _current(self) -> dict[str, int]:
        values = {"cpu_rss": self.cpu.current()}
        if self.needed.available:
            values["cpu_anon"], values["cpu_file"] = self.needed.anon_now(), self.needed.file_now()
        if self.cuda is not None:
            values["cuda_allocated"], values["cuda_reserved"] = self.cuda.current()
        return values

    def _peaks(self) -> dict[str, int]:
        values = {"cpu_rss": self.cpu.peak()}
        if self.needed.available:
            values["cpu_anon"], values["cpu_file"] = self.needed.peak(), self.needed.file_now()
        if self.cuda is not None:
            values["cuda_allocated"], values["cuda_reserved"] = self.cuda.peak()
        return values

    def _fold(self) -> None:
        """Push the meters' peaks into every record still running, so that a reset loses nothing."""
        peaks = self._peaks()
        for _, record in self._open:
            record.fold(peaks)
        self._interval.fold(peaks)
        self._lifetime.fold(peaks)

    def _reset_meters(self) -> None:
        self.cpu.reset()
        self.needed.reset()
        if self.cuda is not None:
            self.cuda.reset()

    def _store(self, name: str, record: _PhaseRecord) -> None:
        record.end = self._current()
        if name in self.phases:
            self.phases[name].merge(record)
        else:
            self.phases[name] = record

    # -- public API --

    def begin(self, name: str) -> None:
        self._fold()
        self._reset_meters()
        self._open.append((name, _PhaseRecord(self._current())))

    def end(self, name: str) -> None:
        if not self._open or self._open[-1][0] != name:
            running = self._open[-1][0] if self._open else "none"
            raise UsageError(
                f"memory phase {name!r} ended while {running!r} is the innermost open phase; "
                "end phases in the reverse order of begin()"
            )
        self._fold()
        self._store(*self._open.pop())

    @contextlib.contextmanager
    def phase(self, name: str):
        self.begin(name)
        try:
            yield self
        finally:
            self.end(name)

    def mark(self, name: str | None) -> None:
        """Record the peak since the previous mark under `name` (None: record nothing) and start a new
        interval."""
        self._fold()
        if name is not None:
            self._store(name, self._interval)
        self._reset_meters()
        self._interval = _PhaseRecord(self._current())

    def peak(self, name: str | None = None) -> dict[str, int]:
        """Peak bytes of a phase (finished or still open), or of the tracker's whole life when name is
        None."""
        self._fold()
        if name is None:
            return dict(self._lifetime.peak)
        for open_name, record in reversed(self._open):
            if open_name == name:
                running = dict(record.peak)
                if name in self.phases:  # an earlier run of the same phase
                    running = {k: max(v, self.phases[name].peak[k]) for k, v in running.items()}
                return running
        if name not in self.phases:
            raise UsageError(f"no memory phase named {name!r}; recorded: {', '.join(self.phases) or 'none'}")
        return dict(self.phases[name].peak)

    def log_values(self, name: str | None = None, prefix: str = "mem_") -> dict[str, float]:
        """Flat MiB values for a log line: mem_cpu_peak_rss_mib and, on CUDA, the allocated/reserved peaks."""
        peak = self.peak(name)
        return {
            f"{prefix}{_KEY_NAMES[key]}": round(value / MIB, 1)
            for key, value in peak.items()
            if key in _KEY_NAMES
        }

    def as_dict(self) -> dict:
        self._fold()
        self._lifetime.end = self._current()
        phases = {}
        for name, record in self.phases.items():
            entry = _peak_entry(record.peak, record.end)
            entry["cpu_start_rss_mib"] = round(record.start["cpu_rss"] / MIB, 1)
            entry["cpu_end_rss_mib"] = round(record.end["cpu_rss"] / MIB, 1)
            if "cuda_allocated" in record.end:
                entry["cuda_end_allocated_mib"] = round(record.end["cuda_allocated"] / MIB, 1)
            entry["count"] = record.count
            phases[name] = entry
        return {
            "device": str(self.device),
            "cpu_method": self.cpu.method,
            "baseline_cpu_rss_mib": round(self.baseline_cpu_rss / MIB, 1),
            "peak": _lifetime_entry(self._lifetime, phases),
            "phases": phases,
        }

    def close(self) -> None:
        self.cpu.close()
        self.needed.close()


_KEY_NAMES = {
    "cpu_rss": "cpu_peak_rss_mib",
    "cpu_anon": "cpu_peak_anon_mib",
    "cuda_allocated": "cuda_peak_allocated_mib",
    "cuda_reserved": "cuda_peak_reserved_mib",
}


def _peak_entry(peak: dict[str, int], end: dict[str, int]) -> dict[str, float]:
    """MiB figures of one record: the peaks, and what it needed (`NeededMemoryMeter`): the anonymous peak
    plus the file pages still mapped when it ended."""
    entry = {_KEY_NAMES[key]: round(value / MIB, 1) for key, value in peak.items() if key in _KEY_NAMES}
    if "cpu_anon" in peak:
        entry["cpu_end_file_mib"] = round(end["cpu_file"] / MIB, 1)
        needed = peak["cpu_anon"] + end["cpu_file"]
        # never more than was resident: the two are read at slightly different moments
        entry["cpu_needed_mib"] = round(min(needed, peak.get("cpu_rss", needed)) / MIB, 1)
    return entry


def _lifetime_entry(lifetime: _PhaseRecord, phases: dict) -> dict[str, float]:
    """The whole life's peaks; what it needed is the most any phase needed (or, with no phases, the
    anonymous peak plus the file pages mapped now)."""
    entry = _peak_entry(lifetime.peak, lifetime.end)
    needed = [p["cpu_needed_mib"] for p in phases.values() if "cpu_needed_mib" in p]
    if needed:
        entry["cpu_needed_mib"] = max(needed)
    return entry


class MemoryCallback(TrainerCallback):
    """Records "train" (the whole `train()` call), "train_step" (the worst optimizer step, evaluation
    excluded) and "evaluate" into a `MemoryTracker`, and puts the peaks into the logs."""

    def __init__(self, tracker: MemoryTracker | None = None):
        self.tracker = tracker if tracker is not None else MemoryTracker()

    def on_init_end(self, args, state, control, **kwargs):
        self.tracker.mark(
            None
        )  # an evaluate() before any training measures from here, not from model loading

    def on_train_begin(self, args, state, control, **kwargs):
        self.tracker.mark(None)  # the first "train_step" interval starts here
        self.tracker.begin("train")

    def on_step_end(self, args, state, control, **kwargs):
        self.tracker.mark("train_step")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        # evaluation runs right after on_step_end (or alone), so the interval since the last mark is it
        self.tracker.mark("evaluate")
        if metrics is not None:
            metrics.update(self.tracker.log_values("evaluate", prefix="eval_mem_"))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not any(name == "train" for name, _ in self.tracker._open):
            return
        values = self.tracker.log_values("train")
        if logs is not None:
            logs.update(values)
        # Trainer.log appended its copy of `logs` to the history just before calling us
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        self.tracker.end("train")
        self.tracker.mark(None)


def peak_mib_by_phase(memory: dict) -> dict[str, float]:
    """{phase: peak resident MiB} from `MemoryTracker.as_dict()` (the model card's memory table)."""
    return {
        name: entry["cpu_peak_rss_mib"]
        for name, entry in (memory.get("phases") or {}).items()
        if "cpu_peak_rss_mib" in entry
    }
