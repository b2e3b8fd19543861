"""An analytic model of a training step's peak memory, used by the memory benchmark to decide what fits
and to check the measurements. Models may live on the meta device, so nothing is allocated:

    with torch.device("meta"):
        student = AutoModelForCausalLM.from_config(architecture_config("opt-125m"))
        teacher = AutoModelForCausalLM.from_config(architecture_config("opt-1.3b"))
    estimate = estimate_peak_memory(prepare_student(student, "lora"), teacher, batch_size=4,
                                    student_tokens=90, teacher_tokens=742, teacher_prefix_tokens=653,
                                    teacher_quantization="8bit")
    estimate.total

`architecture_config("opt-1.3b")` gives the published configuration of a model shipped as JSON in
`distill_trainer/memory/architectures/`, for building random-initialised models of the real size.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from distill_trainer.errors import UsageError
from distill_trainer.memory.breakdown import unique_parameters
from distill_trainer.memory.units import MIB
from distill_trainer.models.loading import QUANTIZATIONS

ARCHITECTURES_DIR = Path(__file__).parent / "architectures"

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def architecture_config(name: str):
    """The published configuration of an architecture shipped in `distill_trainer/memory/architectures/`."""
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
    8-bit keeps int8 weights plus one fp32 scale per output row; 4-bit packs two weights per byte plus 4 bytes
    per group of 64 weights of a row (the CPU layers' float16 scale and minimum, models/cpu_quantized.py;
    bitsandbytes' nf4 on a GPU has one fp32 absmax per block of 64 and a 64-byte code per layer more);
    everything else stays in `dtype`."""
    if quantization not in QUANTIZATIONS:
        raise UsageError(f"quantization={quantization!r} is not valid; choose {', '.join(QUANTIZATIONS)}")
    element = _DTYPE_BYTES[dtype]
    head = teacher.get_output_embeddings() if hasattr(teacher, "get_output_embeddings") else None
    quantized_weights = set()
    total = 0
    if quantization != "none":
        for module in teacher.modules():
            if isinstance(module, torch.nn.Linear) and module is not head:
                quantized_weights.add(id(module.weight))
                rows, n = module.weight.shape[0], module.weight.numel()
                groups = rows * (module.weight.shape[1] // math.gcd(module.weight.shape[1], 64))
                total += n + 4 * rows if quantization == "8bit" else (n + 1) // 2 + 4 * groups
    for param in unique_parameters(teacher):
        if id(param) not in quantized_weights:
            total += param.numel() * element
    total += sum(b.numel() * element for _, b in teacher.named_buffers())
    return total


def student_activation_bytes(config, tokens: int, dtype: str = "float32", trains_weights: bool = True) -> int:
    """Activations a decoder layer stack keeps for backward, for `tokens` = batch x padded length, in the
    compute `dtype` (bfloat16 under bf16 autocast, whatever the weights' dtype).

    OPT-style layers (LayerNorm, one MLP activation), per layer and token (pre-LayerNorm block, PyTorch
    SDPA that stores no attention matrix): the block input and LayerNorm output of both sub-blocks (4 h),
    q, k, v and the attention output (4 h), the out-projection input (h), the MLP activation (ffn), plus
    one byte per element for each of the two residual dropout masks when dropout is on; the embedding
    output and final LayerNorm add about 3 h. This counts a fully trained model.

    Llama-style layers (RMSNorm, gated MLP: SmolLM2, Qwen2, Gemma) keep more, as counted with
    `torch.autograd.graph.saved_tensors_hooks` on SmolLM2-135M (within 3%): each RMSNorm computes in
    float32 whatever the compute dtype and keeps a float32 copy of its input (2 h per layer), and when its
    weight trains, its normalized output for that weight's gradient (2 h more); the gated MLP keeps its
    gate, up and activation outputs (3 ffn); attention keeps q, k, v, its output and the projections'
    inputs (6 h), and when the weight matrices train (not LoRA or BitFit: `trains_weights`), the inputs
    their gradients need (3 h and one ffn more).
    """
    hidden, ffn, layers = _dims(config)
    element = _DTYPE_BYTES[dtype]
    if _llama_style(config):
        norms = 4 * (4 if trains_weights else 2) * hidden
        kept = 9 * hidden + 4 * ffn if trains_weights else 6 * hidden + 3 * ffn
        per_layer = norms + element * kept
        return tokens * (layers * per_layer + 4 * hidden)
    masks = 2 if getattr(config, "dropout", 0.0) else 0
    per_layer = element * (9 * hidden + ffn) + masks * hidden
    return tokens * (layers * per_layer + 3 * hidden * element)


def _llama_style(config) -> bool:
    """RMSNorm and a gated MLP (an `intermediate_size` and an `rms_norm_eps`), as opposed to OPT's
    LayerNorm and single activation (`ffn_dim`)."""
    return hasattr(config, "rms_norm_eps") and hasattr(config, "intermediate_size")


def _kv_width(config) -> int:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return (getattr(config, "num_key_value_heads", None) or heads) * head_dim


def teacher_forward_bytes(
    config,
    batch_size: int,
    teacher_tokens: int,
    prefix_tokens: int = 0,
    dtype: str = "float32",
    quantization: str = "none",
) -> tuple[int, int]:
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
        static = (
            self.runtime
            + self.parameters
            + self.optimizer_state
            + self.teacher_weights
            + self.teacher_prefix_cache
        )
        held = self.gradients if self.gradients_held_in_forward else 0
        dynamic = max(
            held + self.activations + max(self.teacher_forward, self.backward_workspace), self.gradients
        )
        return static + dynamic

    def as_dict(self, unit: int = MIB) -> dict[str, float]:
        values = {k: v for k, v in asdict(self).items() if k != "gradients_held_in_forward"}
        values["total"] = self.total
        return {key: round(value / unit, 1) for key, value in values.items()}


def estimate_peak_memory(
    student,
    teacher=None,
    *,
    batch_size: int,
    student_tokens: int,
    teacher_tokens: int = 0,
    teacher_prefix_tokens: int = 0,
    gradient_accumulation_steps: int = 1,
    optimizer: str = "adamw",
    student_dtype: str = "float32",
    teacher_dtype: str = "float32",
    teacher_quantization: str = "none",
    runtime_bytes: int = 0,
    compute_dtype: str | None = None,
) -> MemoryEstimate:
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
    `teacher_tokens`). `compute_dtype`: the activations' dtype (bfloat16 under bf16 autocast); the
    student's dtype when not given.
    """
    if optimizer not in ("adamw", "sgd"):
        raise UsageError(f"optimizer={optimizer!r} is not modelled; choose adamw or sgd")
    element = _DTYPE_BYTES[student_dtype]
    trainable = [p for p in unique_parameters(student) if p.requires_grad]
    grads = sum(p.numel() for p in trainable) * element
    states = 2 * grads + 4 * len(trainable) if optimizer == "adamw" else 0
    params = sum(p.numel() for p in unique_parameters(student)) * element
    params += sum(b.numel() for _, b in student.named_buffers()) * element
    head = student.get_output_embeddings()
    workspace = head.weight.numel() * element if head is not None and head.weight.requires_grad else 0
    teacher_weights = prefix_cache = teacher_forward = 0
    if teacher is not None and not isinstance(teacher, str):
        teacher_weights = quantized_teacher_bytes(teacher, teacher_quantization, teacher_dtype)
        prefix_cache, teacher_forward = teacher_forward_bytes(
            teacher.config,
            batch_size,
            teacher_tokens,
            teacher_prefix_tokens,
            teacher_dtype,
            teacher_quantization,
        )
    # LoRA and BitFit freeze the weight matrices: their inputs need not be kept for weight gradients
    full_weights_train = all(p.requires_grad for p in unique_parameters(student) if p.dim() > 1)
    activations = student_activation_bytes(
        student.config, batch_size * student_tokens, compute_dtype or student_dtype, full_weights_train
    )
    if compute_dtype and compute_dtype != student_dtype:
        # autocast casts each weight matrix once per forward and the backward keeps the copy (to reach
        # the inputs' gradients through it), so until the backward ends the weights exist twice
        activations += _DTYPE_BYTES[compute_dtype] * sum(
            p.numel() for p in unique_parameters(student) if p.dim() > 1
        )
    return MemoryEstimate(
        runtime=int(runtime_bytes),
        parameters=params,
        gradients=grads,
        optimizer_state=states,
        teacher_weights=teacher_weights,
        activations=activations,
        teacher_prefix_cache=prefix_cache,
        teacher_forward=teacher_forward,
        backward_workspace=workspace,
        gradients_held_in_forward=gradient_accumulation_steps > 1,
    )
