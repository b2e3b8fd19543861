"""`ContextDataArguments`: the data, prompt layout, teacher generation and checker settings of the
`recipes/distill_context.py` recipe (context distillation of any context: a system prompt, a document, a
privileged hint), next to `StudentArguments` and `DistillationConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distill_trainer.context.reply_checks import CHECKERS
from distill_trainer.errors import UsageError
from distill_trainer.teacher.generation import GenerationSettings
from distill_trainer.views.chat import CONTEXT_PLACEMENTS


@dataclass
class ContextDataArguments:
    """Where the rows come from, how the teacher's prompt carries the context, and how replies are written
    and checked."""

    data_file: str = field(
        default=None,
        metadata={"help": "Training rows: a JSONL/JSON file, a save_to_disk folder, or a Hub dataset id."},
    )
    eval_data_file: str = field(
        default=None, metadata={"help": "Held-out rows (same formats); none: no evaluation."}
    )
    data_split: str = field(default="train", metadata={"help": "Split of a Hub dataset or DatasetDict."})
    prompt_column: str = field(default=None, metadata={"help": "Prompt column; default: prompt."})
    context_column: str = field(
        default=None, metadata={"help": "Context column; default: privileged_context (SDFT) or context."}
    )
    completion_column: str = field(
        default=None, metadata={"help": "Completion column; default: completion, when present."}
    )
    messages_column: str = field(
        default=None,
        metadata={
            "help": "Chat messages column (system = context, user = prompt, last assistant = completion)."
        },
    )
    context: str = field(
        default=None, metadata={"help": "The context of every row that has none (e.g. a system prompt)."}
    )
    context_placement: str = field(
        default="system",
        metadata={
            "help": "Teacher prompt: system (the context as the system message) or user (before the "
            "prompt in the user turn)."
        },
    )
    num_train_examples: int = field(default=None, metadata={"help": "Use the first N training rows."})
    num_eval_examples: int = field(default=None, metadata={"help": "Use the first N held-out rows."})
    teacher_writes_completions: bool = field(
        default=False,
        metadata={"help": "Let the teacher write every completion, even where the data has one."},
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Longest reply generated, in tokens."})
    do_sample: bool = field(default=False, metadata={"help": "Sample replies (default: greedy)."})
    generation_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    generation_seed: int = field(default=0, metadata={"help": "Seed of sampled replies."})
    generation_batch_size: int = field(default=8, metadata={"help": "Prompts per generation batch."})
    completion_cache_dir: str = field(
        default=None,
        metadata={
            "help": "Where teacher completions are kept; default: teacher_completions in the cache home."
        },
    )
    checker: str = field(
        default=None, metadata={"help": f"Rule checked on held-out replies: {', '.join(CHECKERS)}."}
    )
    kl_batch_size: int = field(default=4, metadata={"help": "Rows per batch when measuring the KL."})

    def __post_init__(self):
        if not self.data_file:
            raise UsageError(
                "data_file is not set; give a JSONL file, a save_to_disk folder or a Hub dataset id"
            )
        if self.context_placement not in CONTEXT_PLACEMENTS:
            raise UsageError(
                f"context_placement={self.context_placement!r} is not valid; choose one of: "
                f"{', '.join(CONTEXT_PLACEMENTS)}"
            )
        if self.checker is not None and self.checker not in CHECKERS:
            raise UsageError(f"checker={self.checker!r} is not known; choose one of: {', '.join(CHECKERS)}")
        for name in ("num_train_examples", "num_eval_examples", "generation_batch_size", "kl_batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be >= 1, got {value}")
        self.generation_settings()  # checks max_new_tokens, the temperature and top_p

    def generation_settings(self) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.generation_temperature,
            top_p=self.top_p,
            seed=self.generation_seed,
        )

    def column_settings(self) -> dict:
        return {
            "prompt_column": self.prompt_column,
            "context_column": self.context_column,
            "completion_column": self.completion_column,
            "messages_column": self.messages_column,
            "context": self.context,
            "split": self.data_split,
        }
