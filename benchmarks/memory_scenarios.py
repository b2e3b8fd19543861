"""The memory benchmark's scenarios: the paper's shapes and claims, each scenario's student, teacher and
optimizer, the random-initialised models and synthetic batches they train on, and the analytic estimate
of each (benchmarks/memory.py runs them; memory_report.py reports them).
"""

from __future__ import annotations

from dataclasses import dataclass

# Shapes of the paper preset (recipes/configs/paper): binary MNLI, minimal pattern, k=16 demonstrations.
# Measured on the MNLI training pool with a GPT-2-style byte-level BPE: the 16 demonstrations and their
# separators average 652 tokens; a batch of 32 queries (with the answer word) pads to ~89 tokens.
PAPER_SHAPES = {"demonstration_tokens": 652, "student_tokens": 90, "paper_batch": 32}
TINY_SHAPES = {"demonstration_tokens": 24, "student_tokens": 10, "paper_batch": 8}

# Tiny stand-ins for the two architectures (same family, shapes that run in a second; multiples of 64,
# which bitsandbytes' 4-bit CPU kernel needs).
TINY_ARCHITECTURES = {
    "opt-1.3b": {
        "hidden_size": 128,
        "ffn_dim": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "word_embed_proj_dim": 128,
    },
    "opt-125m": {
        "hidden_size": 64,
        "ffn_dim": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "word_embed_proj_dim": 64,
    },
}
TINY_VOCAB = 512

# The paper's claims, printed beside our numbers.
PAPER_CLAIMS = {
    "memory_reduction": "up to 60% less memory than pattern-based fine-tuning",
    "model_size": "2.5 GB (OPT-1.3B) -> 0.25 GB (OPT-125M)",
}


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    student: str = "opt-125m"
    student_mode: str = "full"
    teacher: str | None = None  # architecture of a resident teacher
    teacher_dtype: str = "float32"
    teacher_quantization: str = "none"
    teacher_outputs_cached: bool = False  # teacher runs once before training, then is freed
    prefix_cache: bool = True  # the library default (DistillationConfig.teacher_prefix_cache)
    optimizer: str = "adamw"
    batch_size: int | None = None  # None: the run's --micro-batch-size
    accumulation: int | None = None
    validation_only: bool = False  # checks the analytic model; not a method being compared

    @property
    def distills(self) -> bool:
        return self.teacher is not None or self.teacher_outputs_cached


def _scenarios() -> list[Scenario]:
    items = [
        Scenario("pbft-opt-1.3b", "PBFT OPT-1.3B, full, AdamW (reference)", student="opt-1.3b"),
        Scenario("pbft-opt-125m", "PBFT OPT-125M, full, AdamW"),
    ]
    teachers = [
        ("fp32", "float32", "none"),
        ("bf16", "bfloat16", "none"),
        ("8bit", "float32", "8bit"),
        ("4bit", "float32", "4bit"),
    ]
    for short, dtype, quantization in teachers:
        for mode in ("full", "lora", "bitfit"):
            items.append(
                Scenario(
                    f"cd-{short}-{mode}",
                    f"CD, OPT-1.3B {short} teacher -> OPT-125M {mode}",
                    student_mode=mode,
                    teacher="opt-1.3b",
                    teacher_dtype=dtype,
                    teacher_quantization=quantization,
                )
            )
    items.append(
        Scenario(
            "cd-8bit-lora-no-prefix-cache",
            "CD, 8-bit teacher -> LoRA, without the prefix KV cache",
            student_mode="lora",
            teacher="opt-1.3b",
            teacher_quantization="8bit",
            prefix_cache=False,
        )
    )
    for mode in ("full", "lora", "bitfit"):
        items.append(
            Scenario(
                f"cd-cached-{mode}",
                f"CD, cached teacher outputs -> OPT-125M {mode}",
                student_mode=mode,
                teacher_outputs_cached=True,
            )
        )
    items += [
        Scenario(
            "check-opt-1.3b-sgd",
            "check: OPT-1.3B full, plain SGD (no optimizer state)",
            student="opt-1.3b",
            optimizer="sgd",
            validation_only=True,
        ),
        Scenario(
            "check-opt-125m-batch32",
            "check: PBFT OPT-125M at batch 32, no accumulation",
            batch_size=32,
            accumulation=1,
            validation_only=True,
        ),
    ]
    return items


SCENARIOS = {s.name: s for s in _scenarios()}
REFERENCE = "pbft-opt-1.3b"
# The teacher that builds the cached outputs (any would do: training never sees it); --cache-teacher bf16
# where bitsandbytes is missing.
CACHE_TEACHERS = {
    "8bit": {"teacher": "opt-1.3b", "teacher_dtype": "float32", "teacher_quantization": "8bit"},
    "bf16": {"teacher": "opt-1.3b", "teacher_dtype": "bfloat16", "teacher_quantization": "none"},
    "fp32": {"teacher": "opt-1.3b", "teacher_dtype": "float32", "teacher_quantization": "none"},
}
CACHE_TEACHER = CACHE_TEACHERS["8bit"]


# ---------------------------------------------------------------------------------------------------
# models and data (shared by the parent, for estimates on the meta device, and by the workers)
# ---------------------------------------------------------------------------------------------------


def model_config(architecture: str, tiny: bool):
    from distill_trainer.memory.estimate import architecture_config

    config = architecture_config(architecture)
    if tiny:
        for key, value in TINY_ARCHITECTURES[architecture].items():
            setattr(config, key, value)
        config.vocab_size = TINY_VOCAB
        config.max_position_embeddings = 256
    return config


def build_student(scenario: Scenario, tiny: bool):
    import torch
    from transformers import AutoModelForCausalLM

    from distill_trainer.models.loading import prepare_student

    # fp32 explicitly: the published configs say float16 (the checkpoints' dtype), which from_config follows
    model = AutoModelForCausalLM.from_config(model_config(scenario.student, tiny), dtype=torch.float32)
    return prepare_student(model, scenario.student_mode)


def synthetic_views(
    n: int, vocab: int, student_tokens: int, demonstration_tokens: int, seed: int = 0
) -> list[dict]:
    """`build_views` rows of the paper's shapes from random token ids: BOS + demonstrations (shared) + query +
    a one-token answer for the teacher, BOS + query + answer for the student."""
    import random

    from distill_trainer.views.text import answer_positions

    rng = random.Random(seed)
    bos = 2
    demonstrations = [rng.randrange(4, vocab) for _ in range(demonstration_tokens)]
    rows = []
    for _ in range(n):
        query = [rng.randrange(4, vocab) for _ in range(student_tokens - 2)]
        answer = [rng.randrange(4, vocab)]
        student_prefix, teacher_prefix = [bos] + query, [bos] + demonstrations + query
        rows.append(
            {
                "input_ids": student_prefix + answer,
                "answer_positions": answer_positions(len(student_prefix), 1),
                "teacher_input_ids": teacher_prefix + answer,
                "teacher_answer_positions": answer_positions(len(teacher_prefix), 1),
                "answer_ids": answer,
                "teacher_prefix_length": 1 + demonstration_tokens,
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------------
# the analytic model, per scenario
# ---------------------------------------------------------------------------------------------------


def estimate(scenario: Scenario, settings: dict, batch_size: int | None = None, runtime_bytes: int = 0):
    """The analytic peak of a scenario; `batch_size` given: that batch without gradient accumulation."""
    import torch
    from transformers import AutoModelForCausalLM

    from distill_trainer.memory.estimate import estimate_peak_memory

    with torch.device("meta"):
        student = build_student(scenario, settings["tiny"])
        teacher = (
            AutoModelForCausalLM.from_config(model_config(scenario.teacher, settings["tiny"]))
            if scenario.teacher
            else None
        )
    demonstrations = settings["demonstration_tokens"]
    student_tokens = settings["student_tokens"]
    batch, accumulation = (batch_size, 1) if batch_size else scenario_batch(scenario, settings)
    return estimate_peak_memory(
        student,
        teacher,
        batch_size=batch,
        gradient_accumulation_steps=accumulation,
        student_tokens=student_tokens,
        teacher_tokens=1 + demonstrations + student_tokens - 1,
        teacher_prefix_tokens=(1 + demonstrations) if scenario.prefix_cache else 0,
        optimizer=scenario.optimizer,
        teacher_dtype=scenario.teacher_dtype,
        teacher_quantization=scenario.teacher_quantization,
        runtime_bytes=runtime_bytes,
    )


def scenario_batch(scenario: Scenario, settings: dict) -> tuple[int, int]:
    return (
        scenario.batch_size or settings["micro_batch_size"],
        scenario.accumulation or settings["gradient_accumulation_steps"],
    )
