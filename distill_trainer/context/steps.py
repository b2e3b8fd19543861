"""The steps of distilling a context away, shared by `recipes/distill_context.py` and
`distill-trainer evaluate-replies`: who the teacher is, its completions, the two-view rows, and the
measurements (rule-following rate, KL to the teacher) of a model without the context.

    teacher = Teacher.for_model(student, "self", student_path)
    replies, info = completions(teacher, tokenizer, rows, settings, placement="system")
    views = chat_view_dataset(tokenizer, rows, replies, placement="system")
    result = measure_student(student, tokenizer, rows, views, settings, checker="python_function",
                             teacher=teacher)
"""

from __future__ import annotations

from datasets import Dataset

from distill_trainer.context.completion_cache import teacher_completions
from distill_trainer.context.generation_eval import completion_kl, generate_for_rows, rule_following
from distill_trainer.teacher.generation import GenerationSettings
from distill_trainer.teacher.teacher import Teacher
from distill_trainer.views.chat import build_chat_views, shared_prefix_length, stop_token_ids
from distill_trainer.views.text import TwoViewCollator


def completions(teacher: Teacher, tokenizer, rows, settings: GenerationSettings, **options):
    """The teacher's replies to `rows` (context in its view), from the completion cache when it has them."""
    with teacher.active() as model:
        return teacher_completions(model, tokenizer, rows, settings, teacher_id=teacher.teacher_id, **options)


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
    teacher: Teacher | None,
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
        result["rule"], result["checks"] = rule_following(
            result["replies"], checker, cut_offs(tokenizer, replies)
        )
    if teacher is not None and views is not None and len(views):
        collator = TwoViewCollator(tokenizer.pad_token_id)
        kl = teacher.answer_logits_fn()
        result["kl"] = completion_kl(student, kl, views, collator, kl_batch_size, progress=f"{label} KL")
        # and on its own replies: what on-policy training sees, and off-policy training never does
        own = chat_view_dataset(tokenizer, rows, replies, placement)
        result["kl_own"] = completion_kl(
            student, kl, own, collator, kl_batch_size, progress=f"{label} KL, own"
        )
    return result


def cut_offs(tokenizer, replies: list[dict]) -> list[bool]:
    """Per reply: it ends without a stop token, so generation hit max_new_tokens."""
    stop = set(stop_token_ids(tokenizer))
    return [not reply["ids"] or reply["ids"][-1] not in stop for reply in replies]
