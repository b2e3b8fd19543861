"""The steps of distilling a context away, shared by `recipes/distill_context.py` and
`distill-trainer evaluate-replies`: who the teacher is, its completions, the two-view rows, and the
measurements (rule-following rate, KL to the teacher) of a model without the context.

    teacher = ChatTeacher.for_model(student, "self", student_path)
    replies, info = teacher.completions(tokenizer, rows, settings, placement="system")
    views = chat_view_dataset(tokenizer, rows, replies, placement="system")
    result = measure_student(student, tokenizer, rows, views, settings, checker="python_function",
                             teacher=teacher)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from datasets import Dataset

from distill_trainer.context.completion_cache import teacher_completions
from distill_trainer.context.generation import GenerationSettings
from distill_trainer.context.generation_eval import completion_kl, generate_for_rows, rule_following
from distill_trainer.errors import UsageError
from distill_trainer.teacher.output_cache import teacher_fingerprint, teacher_source_fingerprint
from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits
from distill_trainer.views.chat import build_chat_views, shared_prefix_length
from distill_trainer.views.text import TwoViewCollator


@dataclass
class ChatTeacher:
    """The teacher of a context-distillation run: a model, or a LoRA student's base with the adapters off
    (`is_self`), and the id that keys its cached completions."""

    model: object
    teacher_id: str
    is_self: bool = False

    @classmethod
    def for_model(cls, model, name: str, source: str, dtype: str = "float32", quantization: str = "none"):
        """`name` "self" uses `model` (a LoRA student) with its adapters off; `source` is the path or alias
        the teacher's weights come from (the student's, for "self")."""
        is_self = name == "self"
        if is_self and not hasattr(model, "disable_adapter"):
            raise UsageError(
                "teacher 'self' needs a LoRA student (student_mode: lora): the teacher is the base model "
                "with the adapters switched off"
            )
        teacher_id = teacher_source_fingerprint(source, dtype, quantization) or teacher_fingerprint(model)
        return cls(model=model, teacher_id=teacher_id, is_self=is_self)

    @contextlib.contextmanager
    def active(self):
        """The teacher model, ready to run (for "self": the student with adapters off, in eval mode)."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter() if self.is_self else contextlib.nullcontext():
                yield self.model
        finally:
            self.model.train(was_training)

    def completions(self, tokenizer, rows, settings: GenerationSettings, **options):
        with self.active() as model:
            return teacher_completions(
                model, tokenizer, rows, settings, teacher_id=self.teacher_id, **options
            )

    def logits_fn(self):
        """batch -> the teacher's logits at the answer positions of the teacher view (prefix KV cache on)."""
        runner = TeacherAnswerLogits(use_prefix_cache=True)

        def logits(batch):
            with self.active() as model:
                return runner(model, batch)

        return logits


def chat_view_dataset(tokenizer, rows: list[dict], replies: list[dict | None], placement: str) -> Dataset:
    """Two-view rows: each row's completion from the data when `replies` has None for it, else the
    teacher's reply token ids as generated."""
    prefixes: dict[str, int] = {}
    views = []
    for row, reply in zip(rows, replies):
        context = row["context"]
        if context not in prefixes:
            prefixes[context] = shared_prefix_length(tokenizer, context, placement)
        views.append(
            build_chat_views(
                tokenizer,
                row["prompt"],
                completion=row.get("completion") if reply is None else None,
                context=context,
                placement=placement,
                completion_token_ids=reply["ids"] if reply is not None else None,
                prefix_length=prefixes[context],
            )
        )
    return Dataset.from_list(views)


def measure_student(
    student,
    tokenizer,
    rows: list[dict],
    views: Dataset | None,
    settings: GenerationSettings,
    *,
    checker: str | None,
    teacher: ChatTeacher | None,
    placement: str = "system",
    batch_size: int = 8,
    kl_batch_size: int = 4,
    label: str = "student",
    replies: list[dict] | None = None,
) -> dict:
    """The student's replies without the context (or `replies`, e.g. read from a cache), the checker's
    rate on them, and the KL to `teacher` on the teacher's completions (`views`)."""
    if replies is None:
        replies = generate_for_rows(
            student,
            tokenizer,
            rows,
            settings,
            placement=placement,
            with_context=False,
            batch_size=batch_size,
            progress=f"{label} replies",
        )
    result = {"replies": [reply["text"] for reply in replies]}
    if checker is not None:
        result["rule"], result["checks"] = rule_following(result["replies"], checker)
    if teacher is not None and views is not None and len(views):
        collator = TwoViewCollator(tokenizer.pad_token_id)
        result["kl"] = completion_kl(
            student, teacher.logits_fn(), views, collator, kl_batch_size, progress=f"{label} KL"
        )
    return result
