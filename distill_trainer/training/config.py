"""Configuration: `DistillationConfig` (a `TrainingArguments` plus the distillation settings) and the
student model's arguments (`StudentArguments`). Reading them from a recipe YAML with command-line overrides
is `parsing.parse_config`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from transformers import TrainingArguments

from distill_trainer.errors import UsageError
from distill_trainer.models.loading import QUANTIZATIONS
from distill_trainer.training.cross_tokenizer_loss import UNMATCHED_TERMS
from distill_trainer.training.losses import LOSS_KINDS

DISTILL_VOCABS = ("full", "label_words")
DTYPES = ("auto", "float32", "bfloat16", "float16")
STUDENT_MODES = ("full", "lora", "bitfit")
# not on/off: YAML reads those as booleans
PACKING = {"auto": None, "always": True, "never": False}


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise UsageError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(str, allowed))}")


@dataclass
class StudentArguments:
    """Which student to train and how (full fine-tuning, LoRA or BitFit)."""

    model_name_or_path: str = field(
        default=None, metadata={"help": "Student: a Hub id, a local directory, or an embedded alias."}
    )
    student_mode: str = field(
        default="full", metadata={"help": "full: all weights; lora: peft LoRA adapters; bitfit: biases only."}
    )
    dtype: str = field(default="float32", metadata={"help": f"Student weights dtype: {', '.join(DTYPES)}."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    lora_target_modules: list[str] = field(
        default=None,
        metadata={"help": "Module names to adapt; default: peft's choice for the architecture."},
    )

    def __post_init__(self):
        _choice("student_mode", self.student_mode, STUDENT_MODES)
        _choice("dtype", self.dtype, DTYPES)
        if self.lora_r < 1:
            raise UsageError(f"lora_r must be >= 1, got {self.lora_r}")
        if not self.lora_alpha > 0:
            raise UsageError(
                f"lora_alpha must be > 0, got {self.lora_alpha}; the LoRA scale is lora_alpha / lora_r"
            )
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")


@dataclass
class DistillationConfig(TrainingArguments):
    """`TrainingArguments` plus the context-distillation settings.

    Loss = alpha * T^2 * D(teacher_T || student_T) + (1 - alpha) * CE(student, gold answer), on answer
    tokens only. alpha=0 with no teacher is pattern-based fine-tuning.
    """

    alpha: float = field(default=1.0, metadata={"help": "Weight of the distillation term, in [0, 1]."})
    temperature: float = field(default=1.0, metadata={"help": "Softmax temperature T > 0 for both models."})
    loss: str = field(default="forward_kl", metadata={"help": f"Divergence: {', '.join(LOSS_KINDS)}."})
    beta: float = field(
        default=0.5, metadata={"help": "jsd mixture weight in [0, 1]: 0 = forward KL, 1 = reverse KL."}
    )
    distill_vocab: str = field(
        default="full",
        metadata={
            "help": "full: KL over the whole vocabulary (shared tokenizer required); label_words: over the "
            "verbalizer tokens only, renormalised (works across tokenizers)."
        },
    )
    loss_top_k: int = field(
        default=0,
        metadata={
            "help": "distill_vocab=full with a live teacher: compare over the teacher's top-k tokens plus "
            "the rest of its mass as one outcome (0: the whole vocabulary)."
        },
    )
    cross_tokenizer_unmatched: str = field(
        default="reply_tokens",
        metadata={
            "help": "A teacher with another tokenizer (replies, distill_vocab=full): the term at a reply "
            "token whose span the two tokenizers split differently. reply_tokens: cross-entropy on the "
            "student's tokens of the teacher's reply (the text the teacher chose; on the student's own "
            "rollouts, uld); uld: ULD's sorted-probability distance; both: their sum."
        },
    )
    loss_chunk_size: int = field(
        # python -m benchmarks.loss_memory: at a 152k vocabulary 256 positions are as fast as the naive
        # loss with under half its memory; 64 take a quarter of that memory and 1.3x the time
        default=256,
        metadata={
            "help": "Answer positions whose logits exist at once in the loss (distill_vocab=full): no "
            "(batch, length, vocabulary) tensor is built; 0 computes all positions in one piece."
        },
    )
    share_student_prefix: bool = field(
        # python -m benchmarks.student_step measures what it saves
        default=True,
        metadata={
            "help": "Run the leading tokens every row of a batch shares (a chat template's system prompt) "
            "through the student once per batch instead of once per row; same loss and gradients. Applies "
            "in single-process runs without gradient checkpointing."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "Share of optimizer steps whose replies the student writes itself from its current "
            "weights (on-policy, GKD's lmbda): 0 = the dataset's (the teacher's) replies only, 1 = every "
            "step; in between, a mix at exactly that rate."
        },
    )
    rollout_max_new_tokens: int = field(
        default=128, metadata={"help": "On-policy: longest reply the student writes, in tokens."}
    )
    rollout_do_sample: bool = field(
        default=True,
        metadata={
            "help": "On-policy: sample the student's replies (false: greedy), as do_sample does for the "
            "teacher's replies in the reply recipes."
        },
    )
    rollout_temperature: float = field(
        default=1.0,
        metadata={"help": "On-policy: sampling temperature (> 0) of the student's replies."},
    )
    rollout_top_p: float = field(default=1.0, metadata={"help": "On-policy: nucleus sampling mass."})
    teacher_model_name_or_path: str = field(
        default=None,
        metadata={
            "help": "Teacher: a Hub id, a local directory, an embedded alias, or 'self' (LoRA students)."
        },
    )
    teacher_dtype: str = field(default="float32", metadata={"help": f"Teacher dtype: {', '.join(DTYPES)}."})
    teacher_quantization: str = field(
        default="none", metadata={"help": "Load the teacher in none | 8bit | 4bit (bitsandbytes)."}
    )
    teacher_prefix_cache: bool = field(
        default=True,
        metadata={
            "help": "When a batch's demonstrations are shared, run them through the teacher once and reuse "
            "their key/value cache: the teacher then costs a forward over the query only (same logits)."
        },
    )
    teacher_pack_queries: str = field(
        default="auto",
        metadata={
            "help": "With the prefix cache: run a batch's queries end to end in one row without padding, so "
            "the teacher's matmuls skip the pads (same logits up to rounding). auto: on CPU only, where it "
            "was measured (benchmarks/teacher_pass.py); always; never."
        },
    )
    teacher_output_cache: bool = field(
        default=False,
        metadata={
            "help": "Compute the teacher's answer distributions once before training, store them with the "
            "dataset (reused by later runs with the same teacher, data and settings), and train without the "
            "teacher in memory."
        },
    )
    teacher_cache_top_k: int = field(
        default=64,
        metadata={
            "help": "Output cache, distill_vocab=full: teacher log-probs kept per answer token; the rest is "
            "kept as one tail mass. label_words always keeps the exact distribution."
        },
    )
    teacher_cache_dir: str = field(
        default=None,
        metadata={
            "help": "Where teacher output caches live; default: teacher_outputs in the library's cache "
            "($DISTILL_TRAINER_CACHE, else $HF_HOME/distill-trainer)."
        },
    )
    skip_nonfinite_loss: bool = field(
        default=False,
        metadata={
            "help": "On a NaN/inf loss, skip the batch instead of stopping (default: stop with a message)."
        },
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start over in an output_dir that holds an earlier run's results or checkpoints (its "
            "checkpoints are removed when training starts); without it such a directory is an error, "
            "unless resume_from_checkpoint continues that run."
        },
    )

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(
                f"alpha must be in [0, 1], got {self.alpha}; 1 = distillation only, 0 = gold labels only"
            )
        if not self.temperature > 0:
            raise UsageError(
                f"temperature must be > 0, got {self.temperature}; 1.0 leaves the logits as they are"
            )
        if not 0.0 <= self.beta <= 1.0:
            raise UsageError(f"beta must be in [0, 1], got {self.beta}")
        _choice("loss", self.loss, LOSS_KINDS)
        _choice("distill_vocab", self.distill_vocab, DISTILL_VOCABS)
        _choice("teacher_quantization", self.teacher_quantization, QUANTIZATIONS)
        _choice("teacher_dtype", self.teacher_dtype, DTYPES)
        _choice("teacher_pack_queries", self.teacher_pack_queries, tuple(PACKING))
        if self.teacher_cache_top_k < 1:
            raise UsageError(
                f"teacher_cache_top_k must be >= 1, got {self.teacher_cache_top_k}; a value >= the "
                "vocabulary size keeps the full distribution"
            )
        if not 0.0 <= self.lmbda <= 1.0:
            raise UsageError(
                f"lmbda must be in [0, 1], got {self.lmbda}; 0 = off-policy, 1 = on-policy, between = mixed"
            )
        if self.cross_tokenizer_unmatched not in UNMATCHED_TERMS:
            raise UsageError(
                f"cross_tokenizer_unmatched={self.cross_tokenizer_unmatched!r} is not valid; choose one of: "
                f"{', '.join(UNMATCHED_TERMS)}"
            )
        if self.loss_top_k < 0 or self.loss_chunk_size < 0:
            raise UsageError("loss_top_k and loss_chunk_size must be >= 0 (0: whole vocabulary / one piece)")
        if self.rollout_temperature == 0:  # the way greedy decoding was asked for before rollout_do_sample
            warnings.warn(
                "rollout_temperature: 0 for greedy decoding is deprecated and will stop working; use "
                "rollout_do_sample: false (the name the teacher's replies use: do_sample)",
                FutureWarning,
                stacklevel=2,
            )
            self.rollout_do_sample, self.rollout_temperature = False, 1.0
        if (
            self.rollout_max_new_tokens < 1
            or self.rollout_temperature <= 0
            or not 0 < self.rollout_top_p <= 1
        ):
            raise UsageError(
                "rollout settings out of range: rollout_max_new_tokens >= 1, rollout_temperature > 0 "
                "(greedy: rollout_do_sample: false), 0 < rollout_top_p <= 1 (got "
                f"{self.rollout_max_new_tokens}, {self.rollout_temperature}, {self.rollout_top_p})"
            )
        _check_minimums(self)
        # our collator produces exactly what compute_loss reads; the Trainer must not prune it
        self.remove_unused_columns = False
        super().__post_init__()


# TrainingArguments values that parse but crash later (numpy seeds must be >= 0; a batch needs a row)
# (the training batch size and accumulation steps are checked by validate, for the recipes that train)
MINIMUMS = {
    "seed": 0,
    "data_seed": 0,
    "per_device_eval_batch_size": 1,
    "dataloader_num_workers": 0,
    "save_total_limit": 1,
    "logging_steps": 0,
    "save_steps": 0,
    "eval_steps": 0,
}


def _check_minimums(config) -> None:
    for name, minimum in MINIMUMS.items():
        value = getattr(config, name, None)
        if value is None or isinstance(value, str):
            continue
        if value < minimum or (minimum == 0 and name.endswith("_steps") and value <= 0):
            bound = "> 0" if minimum == 0 and name.endswith("_steps") else f">= {minimum}"
            raise UsageError(
                f"{name} must be {bound}, got {value}; fix it in the recipe file or on the command line"
            )
