"""Where a measured peak goes: exact byte counts of the tensors training keeps resident.

  breakdown = memory_breakdown(tracker.peak("train")["cpu_rss"], student=trainer.model,
                               optimizer=trainer.optimizer, teacher=teacher.separate_model,
                               runtime_bytes=tracker.baseline_cpu_rss)   # on GPU: cuda_allocated, 0
  breakdown.as_dict()   # runtime, parameters, gradients, optimizer_state, teacher_weights, rest

Parameters, gradients, optimizer state and teacher weights are exact byte counts of the tensors
(quantization statistics of 8/4-bit teachers included, tied weights counted once); `rest` is what the
peak holds beyond them: activations, temporary buffers and allocator slack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from distill_trainer.memory.units import MIB


def _quantization_stats(param) -> list[torch.Tensor]:
    """bitsandbytes keeps scales beside the packed weight: SCB (8-bit) or a QuantState (4-bit)."""
    stats = []
    scb = getattr(param, "SCB", None)
    if isinstance(scb, torch.Tensor):
        stats.append(scb)
    state = getattr(param, "quant_state", None)
    while state is not None:
        stats += [
            t
            for t in (
                getattr(state, "absmax", None),
                getattr(state, "code", None),
                getattr(state, "offset", None),
            )
            if isinstance(t, torch.Tensor)
        ]
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


def unique_parameters(module) -> list[torch.Tensor]:
    # named_parameters() already drops tied duplicates, also on the meta device
    return [p for _, p in module.named_parameters()]


def model_bytes(module) -> int:
    """Resident bytes of a model's weights: parameters, buffers and quantization statistics."""
    if module is None:
        return 0  # no teacher, or "self": the student's own weights
    tensors = []
    for param in unique_parameters(module):
        tensors.append(param)
        tensors += _quantization_stats(param)
    tensors += [b for _, b in module.named_buffers()]
    return _unique_bytes(tensors) + _quantized_layer_bytes(module)


def _quantized_layer_bytes(module) -> int:
    """Bytes of the CPU-quantized layers (models/cpu_quantized.py), which hold their weights outside
    parameters and buffers; each says what it stores."""
    return sum(
        t.numel() * t.element_size()
        for m in module.modules()
        if hasattr(m, "state_tensors") and not any(True for _ in m.parameters(recurse=False))
        for t in m.state_tensors().values()
    )


def gradient_bytes(model) -> int:
    """Bytes of the gradients of every trainable parameter (each is the size of its parameter)."""
    return _unique_bytes([p for p in unique_parameters(model) if p.requires_grad])


def optimizer_state_bytes(optimizer) -> int:
    """Bytes of the tensors in an optimizer's state (AdamW: exp_avg, exp_avg_sq, step); 0 before the first
    step."""
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
        return (
            self.peak
            - self.runtime
            - self.parameters
            - self.gradients
            - self.optimizer_state
            - self.teacher_weights
        )

    def as_dict(self, unit: int = MIB) -> dict[str, float]:
        values = asdict(self)
        values["rest"] = self.rest
        return {key: round(value / unit, 1) for key, value in values.items()}


def memory_breakdown(
    peak_bytes: int, student=None, optimizer=None, teacher=None, runtime_bytes: int = 0
) -> MemoryBreakdown:
    """Split a measured peak into runtime (interpreter and libraries: the RSS before any model existed),
    the student's parameters, its gradients, the optimizer state, the teacher's weights and the rest."""
    return MemoryBreakdown(
        peak=int(peak_bytes),
        runtime=int(runtime_bytes),
        parameters=model_bytes(student),
        gradients=gradient_bytes(student) if student is not None else 0,
        optimizer_state=optimizer_state_bytes(optimizer),
        teacher_weights=model_bytes(teacher),
    )
