"""Peak memory per phase (CPU and CUDA), an exact breakdown of where training memory goes, and an analytic
model that predicts it.

Recording peaks (recipes put `tracker.as_dict()` into their metrics file):

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
  - CPU RSS also counts checkpoint files mapped while loading (page cache, reclaimable) and freed
    memory glibc keeps in its heap; run with MALLOC_MMAP_THRESHOLD_=131072 in the environment for an
    RSS that tracks live tensors (benchmarks/memory.py does).

Explaining a peak:

    breakdown = memory_breakdown(tracker.peak("train")["cpu_rss"], student=trainer.model,
                                 optimizer=trainer.optimizer, teacher=trainer.teacher,
                                 runtime_bytes=tracker.baseline_cpu_rss)   # on GPU: cuda_allocated, 0
    breakdown.as_dict()   # runtime, parameters, gradients, optimizer_state, teacher_weights, rest

  Parameters, gradients, optimizer state and teacher weights are exact byte counts of the tensors
  (quantization statistics of 8/4-bit teachers included, tied weights counted once); `rest` is what the
  peak holds beyond them: activations, temporary buffers and allocator slack.

Predicting a peak without running it (models may live on the meta device, so nothing is allocated):

    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(architecture_config("opt-125m"))
        teacher = AutoModelForCausalLM.from_config(architecture_config("opt-1.3b"))
    estimate = estimate_peak_memory(prepare_student(student, "lora"), teacher, batch_size=4,
                                    student_tokens=90, teacher_tokens=742, teacher_prefix_tokens=653,
                                    teacher_quantization="8bit")
    estimate.total

`architecture_config("opt-1.3b")` gives the published configuration of a model shipped as JSON in
`distill_trainer/architectures/`, for building random-initialised models of the real size.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .errors import UsageError

MIB = 2**20
ARCHITECTURES_DIR = Path(__file__).parent / "architectures"

# ---------------------------------------------------------------------------------------------------
# meters: the current and peak memory of one kind, with a resettable peak
# ---------------------------------------------------------------------------------------------------

_STATUS_FIELD = re.compile(r"^(VmRSS|VmHWM):\s+(\d+)\s+kB", re.MULTILINE)


def _proc_status() -> dict[str, int]:
    with open("/proc/self/status", encoding="ascii") as status:
        return {name: int(kb) * 1024 for name, kb in _STATUS_FIELD.findall(status.read())}


def _kernel_peak_reset_works() -> bool:
    """True when this process may reset its own RSS high-water mark (Linux >= 4.0, not forbidden)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear_refs:
            clear_refs.write("5")
        status = _proc_status()
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
            raise UsageError(f"cpu memory method {method!r} is not valid; choose auto, kernel_hwm or sampling")
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
            return _proc_status()["VmRSS"]
        return self._process.memory_info().rss

    def peak(self) -> int:
        if self.method == "kernel_hwm":
            return _proc_status()["VmHWM"]
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
        if self.cuda is not None:
            values["cuda_allocated"], values["cuda_reserved"] = self.cuda.current()
        return values

    def _peaks(self) -> dict[str, int]:
        values = {"cpu_rss": self.cpu.peak()}
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
            raise UsageError(f"memory phase {name!r} ended while {running!r} is the innermost open phase; "
                             "end phases in the reverse order of begin()")
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
        """Record the peak since the previous mark under `name` (None: record nothing) and start a new interval."""
        self._fold()
        if name is not None:
            self._store(name, self._interval)
        self._reset_meters()
        self._interval = _PhaseRecord(self._current())

    def peak(self, name: str | None = None) -> dict[str, int]:
        """Peak bytes of a phase (finished or still open), or of the tracker's whole life when name is None."""
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
        return {f"{prefix}{_KEY_NAMES[key]}": round(value / MIB, 1) for key, value in self.peak(name).items()}

    def as_dict(self) -> dict:
        self._fold()
        phases = {}
        for name, record in self.phases.items():
            entry = {_KEY_NAMES[key]: round(value / MIB, 1) for key, value in record.peak.items()}
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
            "peak": {_KEY_NAMES[key]: round(value / MIB, 1) for key, value in self._lifetime.peak.items()},
            "phases": phases,
        }

    def close(self) -> None:
        self.cpu.close()


_KEY_NAMES = {
    "cpu_rss": "cpu_peak_rss_mib",
    "cuda_allocated": "cuda_peak_allocated_mib",
    "cuda_reserved": "cuda_peak_reserved_mib",
}


class MemoryCallback(TrainerCallback):
    """Records "train" (the whole `train()` call), "train_step" (the worst optimizer step, evaluation
    excluded) and "evaluate" into a `MemoryTracker`, and puts the peaks into the logs."""

    def __init__(self, tracker: MemoryTracker | None = None):
        self.tracker = tracker if tracker is not None else MemoryTracker()

    def on_init_end(self, args, state, control, **kwargs):
        self.tracker.mark(None)  # an evaluate() before any training measures from here, not from model loading

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


# ---------------------------------------------------------------------------------------------------
# exact byte counts of the tensors training keeps resident
# ---------------------------------------------------------------------------------------------------


def _quantization_stats(param) -> list[torch.Tensor]:
    """bitsandbytes keeps scales beside the packed weight: SCB (8-bit) or a QuantState (4-bit)."""
    stats = []
    scb = getattr(param, "SCB", None)
    if isinstance(scb, torch.Tensor):
        stats.append(scb)
    state = getattr(param, "quant_state", None)
    while state is not None:
        stats += [t for t in (getattr(state, "absmax", None), getattr(state, "code", None),
                              getattr(state, "offset", None)) if isinstance(t, torch.Tensor)]
        state = getattr(state, "state2", None)
    return stats


def _unique_bytes(tensors) -> int:
    """Bytes of distinct tensors (by storage address), so tied or shared weights count once."""
    seen, total = set(), 0
    for tensor in tensors:
        if tensor.device.type == "meta":
            total += tensor.numel() * tensor.element_size()
            continue
        key = (tensor.device, tensor.data_ptr())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
    return total


def _unique_parameters(module) -> list[torch.Tensor]:
    # named_parameters() already drops tied duplicates, also on the meta device
    return [p for _, p in module.named_parameters()]


def model_bytes(module) -> int:
    """Resident bytes of a model's weights: parameters, buffers and quantization statistics."""
    if module is None or isinstance(module, str):
        return 0  # no teacher, or "self": the student's own weights
    tensors = []
    for param in _unique_parameters(module):
        tensors.append(param)
        tensors += _quantization_stats(param)
    tensors += [b for _, b in module.named_buffers()]
    return _unique_bytes(tensors)


def gradient_bytes(model) -> int:
    """Bytes of the gradients of every trainable parameter (each is the size of its parameter)."""
    return _unique_bytes([p for p in _unique_parameters(model) if p.requires_grad])


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the tensors in an optimizer's state (AdamW: exp_avg, exp_avg_sq, step); 0 before the first step."""
    if optimizer is None:
        return 0
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
    tensors = [v for state in inner.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
    return _unique_bytes(tensors)


@dataclass
class MemoryBreakdown:
    """Where a peak goes, in bytes. All terms but `rest` are exact counts; `rest` = peak minus the others."""

    peak: int
    runtime: int
    parameters: int
    gradients: int
    optimizer_state: int
    teacher_weights: int

    @property
    def rest(self) -> int:
        return self.peak - self.runtime - self.parameters - self.gradients - self.optimizer_state - self.teacher_weights

    def as_dict(self, unit: int = MIB) -> dict[str, float]:
        values = asdict(self)
        values["rest"] = self.rest
        return {key: round(value / unit, 1) for key, value in values.items()}


def memory_breakdown(peak_bytes: int, student=None, optimizer=None, teacher=None, runtime_bytes: int = 0) -> MemoryBreakdown:
    """Split a measured peak into runtime (interpreter and libraries: the RSS before any model existed),
    the student's parameters, its gradients, the optimizer state, the teacher's weights and the rest."""
    return MemoryBreakdown(
        peak=int(peak_bytes), runtime=int(runtime_bytes), parameters=model_bytes(student),
        gradients=gradient_bytes(student) if student is not None else 0,
        optimizer_state=optimizer_state_bytes(optimizer), teacher_weights=model_bytes(teacher),
    )


# ---------------------------------------------------------------------------------------------------
# the analytic model
# ---------------------------------------------------------------------------------------------------

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def architecture_config(name: str):
    """The published configuration of an architecture shipped in `distill_trainer/architectures/`."""
    from transformers import AutoConfig

    path = ARCHITECTURES_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in ARCHITECTURES_DIR.glob("*.json")))
        raise UsageError(f"no architecture named {name!r}; shipped: {known}")
    # the published name stays in the file as a record, but a random-initialised model is not those weights
    skipped = ("_source", "_name_or_path")
    values = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items() if k not in skipped}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def _dims(config) -> tuple[int, int, int]:
    hidden = config.hidden_size
    ffn = getattr(config, "ffn_dim", None) or getattr(config, "intermediate_size", None) or 4 * hidden
    return hidden, ffn, config.num_hidden_layers


def quantized_teacher_bytes(teacher, quantization: str = "none", dtype: str = "float32") -> int:
    """Resident bytes of a teacher once loaded in `dtype` with bitsandbytes `quantization`, computed from its
    modules (a meta-device model is enough). Linear layers other than the output head are quantized:
    8-bit keeps int8 weights plus one fp32 scale per output row, 4-bit (nf4) packs two weights per byte plus
    one fp32 absmax per block of 64 and a 16-entry code; everything else stays in `dtype`."""
    if quantization not in ("none", "8bit", "4bit"):
        raise UsageError(f"quantization={quantization!r} is not valid; choose none, 8bit or 4bit")
    element = _DTYPE_BYTES[dtype]
    head = teacher.get_output_embeddings() if hasattr(teacher, "get_output_embeddings") else None
    quantized_weights = set()
    total = 0
    if quantization != "none":
        for module in teacher.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                quantized_weights.add(id(module.weight))
                rows, n = module.weight.shape[0], module.weight.numel()
                total += n + 4 * rows if quantization == "8bit" else (n + 1) // 2 + 4 * -(-n // 64) + 4 * 16
    for param in _unique_parameters(teacher):
        if id(param) not in quantized_weights:
            total += param.numel() * element
    total += sum(b.numel() * element for _, b in teacher.named_buffers())
    return total


def student_activation_bytes(config, tokens: int, dtype: str = "float32") -> int:
    """Activations a decoder layer stack keeps for backward, for `tokens` = batch x padded length.

    Per layer and token (pre-LayerNorm block, PyTorch SDPA that stores no attention matrix): the block
    input and LayerNorm output of both sub-blocks (4 h), q, k, v and the attention output (4 h), the
    out-projection input (h), the MLP activation (ffn), plus one byte per element for each of the two
    residual dropout masks when dropout is on; the embedding output and final LayerNorm add about 3 h.
    This counts a fully trained model; frozen weights (LoRA, BitFit) keep a little less.
    """
    hidden, ffn, layers = _dims(config)
    element = _DTYPE_BYTES[dtype]
    masks = 2 if getattr(config, "dropout", 0.0) else 0
    per_layer = element * (9 * hidden + ffn) + masks * hidden
    return tokens * (layers * per_layer + 3 * hidden * element)


def _kv_width(config) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def teacher_forward_bytes(config, batch_size: int, teacher_tokens: int, prefix_tokens: int = 0,
                          dtype: str = "float32", quantization: str = "none") -> tuple[int, int]:
    """(resident, transient) bytes of the teacher's no-grad forward beyond its weights.

    Only one layer's tensors live at a time. Its MLP is the widest point: the block input and the
    LayerNorm output, the embedding outputs the decoder's forward keeps to its end, and the
    up-projection with its activation (4 h + 2 ffn per token). bitsandbytes' int8/4-bit matmuls on CPU
    add about two ffn-wide fp32 buffers per token (measured: 986 MiB against 566 MiB in fp32 for an
    OPT-1.3B forward over 8 x 742 tokens; the model says 927 and 556). Without a prefix cache
    (`prefix_tokens=0`) that runs over the whole teacher view and nothing stays resident.
    With the prefix KV cache (prefix_cache.py) the shared prefix's keys and values stay resident
    (2 x kv width per prefix token and layer, built once by a batch-1 forward over the prefix), and each
    forward runs the suffix only; its attention concatenates the prefix's keys and values with the
    suffix's, one layer at a time (2 x kv width per teacher token and batch row).
    """
    hidden, ffn, layers = _dims(config)
    element = 4 if quantization != "none" and dtype == "float32" else _DTYPE_BYTES[dtype]
    per_token = element * (4 * hidden + 2 * ffn) + (8 * ffn if quantization != "none" else 0)
    if prefix_tokens <= 0:
        return 0, batch_size * teacher_tokens * per_token
    kv_per_token = 2 * _kv_width(config) * element
    suffix_tokens = teacher_tokens - prefix_tokens
    attention = batch_size * (teacher_tokens * kv_per_token + suffix_tokens * 2 * hidden * element)
    mlp = batch_size * suffix_tokens * per_token
    build = prefix_tokens * per_token  # the one-off prefix pass
    return prefix_tokens * kv_per_token * layers, max(attention, mlp, build)


@dataclass
class MemoryEstimate:
    """An analytic peak in bytes. The first five terms match `MemoryBreakdown`; the others are what its
    `rest` holds. `total` is not their sum: they do not all peak at the same moment (see
    `estimate_peak_memory`)."""

    runtime: int
    parameters: int
    gradients: int
    optimizer_state: int
    teacher_weights: int
    activations: int
    teacher_prefix_cache: int
    teacher_forward: int
    backward_workspace: int
    gradients_held_in_forward: bool = True

    @property
    def total(self) -> int:
        static = self.runtime + self.parameters + self.optimizer_state + self.teacher_weights + self.teacher_prefix_cache
        held = self.gradients if self.gradients_held_in_forward else 0
        dynamic = max(held + self.activations + max(self.teacher_forward, self.backward_workspace), self.gradients)
        return static + dynamic

    def as_dict(self, unit: int = MIB) -> dict[str, float]:
        values = {k: v for k, v in asdict(self).items() if k != "gradients_held_in_forward"}
        values["total"] = self.total
        return {key: round(value / unit, 1) for key, value in values.items()}


def estimate_peak_memory(student, teacher=None, *, batch_size: int, student_tokens: int, teacher_tokens: int = 0,
                         teacher_prefix_tokens: int = 0, gradient_accumulation_steps: int = 1,
                         optimizer: str = "adamw", student_dtype: str = "float32", teacher_dtype: str = "float32",
                         teacher_quantization: str = "none", runtime_bytes: int = 0) -> MemoryEstimate:
    """Predicted peak of a training step with `ContextDistillationTrainer`, for models that may sit on the
    meta device (nothing is allocated).

    Resident all along: runtime, the student's weights, the optimizer state (from the first step on), the
    teacher's weights and its prefix KV cache. On top, at the worst moment of a step:
      - the student's forward has stored its activations, then the teacher runs its forward, then the
        backward starts with the output head's weight gradient, a whole (vocab x hidden) tensor made
        before it is added to `.grad` (when the head trains);
      - with gradient accumulation, the gradients of earlier micro-batches are held during all of that;
        without it they only build up as the backward frees activations, so the step's peak is the larger
        of the two phases.
    `optimizer`: "adamw" (two moments per trainable weight, in its dtype, and a step counter per tensor) or
    "sgd" (no state). `teacher` None: no resident teacher (pattern-based fine-tuning, cached teacher
    outputs, or teacher="self"). Token counts are padded lengths per row; `teacher_prefix_tokens` > 0
    means the teacher prefix KV cache runs (that many shared demonstration tokens, part of
    `teacher_tokens`).
    """
    if optimizer not in ("adamw", "sgd"):
        raise UsageError(f"optimizer={optimizer!r} is not modelled; choose adamw or sgd")
    element = _DTYPE_BYTES[student_dtype]
    trainable = [p for p in _unique_parameters(student) if p.requires_grad]
    grads = sum(p.numel() for p in trainable) * element
    states = 2 * grads + 4 * len(trainable) if optimizer == "adamw" else 0
    params = sum(p.numel() for p in _unique_parameters(student)) * element
    params += sum(b.numel() for _, b in student.named_buffers()) * element
    head = student.get_output_embeddings()
    workspace = head.weight.numel() * element if head is not None and head.weight.requires_grad else 0
    teacher_weights = prefix_cache = teacher_forward = 0
    if teacher is not None and not isinstance(teacher, str):
        teacher_weights = quantized_teacher_bytes(teacher, teacher_quantization, teacher_dtype)
        prefix_cache, teacher_forward = teacher_forward_bytes(teacher.config, batch_size, teacher_tokens,
                                                              teacher_prefix_tokens, teacher_dtype, teacher_quantization)
    activations = student_activation_bytes(student.config, batch_size * student_tokens, student_dtype)
    return MemoryEstimate(runtime=int(runtime_bytes), parameters=params, gradients=grads, optimizer_state=states,
                          teacher_weights=teacher_weights, activations=activations, teacher_prefix_cache=prefix_cache,
                          teacher_forward=teacher_forward, backward_workspace=workspace,
                          gradients_held_in_forward=gradient_accumulation_steps > 1)
