"""The analytic estimate of what a comparison's method needs, phase by phase, to set beside the measured
figure (report/columns.py's "x est." column), so that a measured number is one that is explained:

    sizes = TokenSizes(student=51, teacher=196, teacher_prefix=150, eval_student=60, eval_teacher=210)
    estimate = estimate_method(recipe, values, sizes, runtime_bytes)    # {"teacher_pass": ..., "train": ...}

`values` is the method's resolved settings (its method.yaml). Each phase is the sum of the weights
resident in it (in their dtype or quantized form), the optimizer state and gradients, and the
activations of its forward (and backward), from `memory/estimate.py`, plus the runtime the process had
before loading anything. A method needs the largest of its phases.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill_trainer.memory.estimate import (
    estimate_peak_memory,
    quantized_teacher_bytes,
    teacher_forward_bytes,
)


@dataclass(frozen=True)
class TokenSizes:
    """Mean padded tokens per row: the student's view and the teacher's (with its shared demonstrations,
    `teacher_prefix` of them) in training, and the rows scored in evaluation."""

    student: int
    teacher: int
    teacher_prefix: int
    eval_student: int
    eval_teacher: int


def _meta_model(path: str, add_biases: bool = False):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill_trainer.models.loading import bias_switches_to_add, resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(path))
    for switch in bias_switches_to_add(config) if add_biases else []:  # as BitFit loads its student
        setattr(config, switch, True)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _dtype(name: str | None) -> str:
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def _scoring(model, dtype: str, batch: int, tokens: int, quantization: str = "none") -> int:
    """An inference model: its weights and one forward over a batch (no gradients)."""
    resident, transient = teacher_forward_bytes(model.config, batch, tokens, 0, dtype, quantization)
    return quantized_teacher_bytes(model, quantization, dtype) + resident + transient


def estimate_method(recipe: str, values: dict, sizes: TokenSizes, runtime_bytes: int) -> dict[str, int]:
    """Bytes per phase ("teacher_pass", "train", "eval") that the method runs; see the module docstring."""
    from distill_trainer.models.loading import prepare_student

    mode = values.get("student_mode", "full")
    student = _meta_model(values["model_name_or_path"], add_biases=mode == "bitfit")
    student_dtype = _dtype(values.get("dtype"))
    eval_batch = values.get("per_device_eval_batch_size", 8)
    if recipe == "icl_eval":
        tokens = sizes.eval_teacher if values.get("k", 0) else sizes.eval_student
        return {"eval": runtime_bytes + _scoring(student, student_dtype, eval_batch, tokens)}
    student = prepare_student(student, mode, lora_r=values.get("lora_r", 16))
    batch = values.get("per_device_train_batch_size", 8)
    teacher_path = values.get("teacher_model_name_or_path")
    quantization = values.get("teacher_quantization", "none")
    teacher_dtype = _dtype(values.get("teacher_dtype"))
    resident_teacher = teacher_path and teacher_path != "self" and not values.get("teacher_output_cache")
    teacher = _meta_model(teacher_path) if teacher_path and teacher_path != "self" else None
    train = estimate_peak_memory(
        student,
        teacher if resident_teacher else None,
        batch_size=batch,
        student_tokens=sizes.student,
        teacher_tokens=sizes.teacher,
        teacher_prefix_tokens=sizes.teacher_prefix if values.get("teacher_prefix_cache", True) else 0,
        gradient_accumulation_steps=values.get("gradient_accumulation_steps", 1),
        student_dtype=student_dtype,
        teacher_dtype=teacher_dtype,
        teacher_quantization=quantization,
        runtime_bytes=runtime_bytes,
        compute_dtype="bfloat16" if values.get("bf16") else None,
    ).total
    phases = {"train": train}
    if teacher is not None and not resident_teacher:
        # the output cache's pass: the teacher beside the loaded student, one forward per batch
        student_weights = sum(p.numel() for p in student.parameters()) * (
            2 if student_dtype != "float32" else 4
        )
        pass_forward = sum(
            teacher_forward_bytes(teacher.config, batch, sizes.teacher, 0, teacher_dtype, quantization)
        )
        phases["teacher_pass"] = (
            runtime_bytes
            + student_weights
            + quantized_teacher_bytes(teacher, quantization, teacher_dtype)
            + pass_forward
        )
    if values.get("evaluate_after_training", True):
        phases["eval"] = runtime_bytes + _scoring(student, student_dtype, eval_batch, sizes.eval_student)
    return phases
