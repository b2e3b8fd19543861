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

import contextlib

from datasets import Dataset

from distill_trainer.context.completion_cache import cut_offs, teacher_completions
from distill_trainer.context.generation_eval import completion_kl, generate_for_rows, rule_following
from distill_trainer.errors import UsageError
from distill_trainer.models.loading import load_tokenizer
from distill_trainer.teacher.generation import GenerationSettings
from distill_trainer.teacher.teacher import Teacher, check_self_teacher, is_self
from distill_trainer.training.cross_tokenizer import check_cross_tokenizer_settings
from distill_trainer.views.chat import build_chat_views, chat_prompt_ids, shared_prefix_length
from distill_trainer.views.cross_tokenizer import build_cross_tokenizer_chat_views, tokenizers_differ
from distill_trainer.views.text import TwoViewCollator


def check_reply_settings(student_args, config, recipe: str) -> None:
    """A recipe that distils whole replies needs a teacher, the full-vocabulary loss and, for a self
    teacher, a LoRA student."""
    if not config.teacher_model_name_or_path:
        raise UsageError(
            "teacher_model_name_or_path is not set; give a chat model, or 'self' with a LoRA student"
        )
    if config.distill_vocab != "full":
        raise UsageError(f"{recipe} matches whole replies: set distill_vocab: full")
    mode = student_args.student_mode
    check_self_teacher(
        config.teacher_model_name_or_path,
        student_is_lora=mode == "lora",
        fix=f"it needs student_mode: lora (got {mode})",
    )


def checked_tokenizers(student_args, config, row: dict, placement: str):
    """(the student's tokenizer, a separate teacher's tokenizer when it differs from the student's, else
    None), after checking that each chat template takes `row`, before any weights load. A teacher with
    another tokenizer is graded through the cross-tokenizer loss, whose settings are checked here."""
    tokenizer = load_tokenizer(student_args.model_name_or_path)
    chat_prompt_ids(tokenizer, row["prompt"], row["context"], placement)  # the template takes it?
    if is_self(config.teacher_model_name_or_path):
        return tokenizer, None
    teacher_tokenizer = load_tokenizer(config.teacher_model_name_or_path)
    if not tokenizers_differ(tokenizer, teacher_tokenizer):
        return tokenizer, None
    check_cross_tokenizer_settings(config)
    chat_prompt_ids(teacher_tokenizer, row["prompt"], row["context"], placement)
    return tokenizer, teacher_tokenizer


def completions(teacher: Teacher, tokenizer, rows, settings: GenerationSettings, **options):
    """The teacher's replies to `rows` (context in its view), from the completion cache when it has them; a
    teacher on disk is loaded only if some reply is not cached yet."""
    with contextlib.ExitStack() as running:

        def model():
            return running.enter_context(teacher.active())

        return teacher_completions(model, tokenizer, rows, settings, teacher_id=teacher.teacher_id, **options)


def chat_view_dataset(
    tokenizer, rows: list[dict], replies: list[dict | None], placement: str, cross_tokenizer=None
) -> Dataset:
    """Two-view rows: each row's completion from the data when `replies` has None for it, else the
    teacher's reply token ids as generated. With `cross_tokenizer` (a `CrossTokenizerReplies`), the
    teacher reads its own tokenizer: each view is its model's tokenization of the reply's text."""
    if cross_tokenizer is not None:
        return _cross_tokenizer_dataset(cross_tokenizer, rows, replies, placement)
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


def _cross_tokenizer_dataset(cross_tokenizer, rows, replies, placement) -> Dataset:
    prefixes: dict[str, int] = {}
    views = []
    for row, reply in zip(rows, replies):
        context = row["context"]
        if context not in prefixes:
            prefixes[context] = shared_prefix_length(cross_tokenizer.teacher_tokenizer, context, placement)
        text = row.get("completion") if reply is None else reply["text"]
        if text is None:
            raise UsageError("a chat example needs a completion (text or token ids)")
        views.append(
            build_cross_tokenizer_chat_views(
                cross_tokenizer, row["prompt"], text, context, placement, prefixes[context]
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
        result["kl"] = completion_kl(student, teacher, views, collator, kl_batch_size, progress=f"{label} KL")
        # and on its own replies: what on-policy training sees, and off-policy training never does
        own = chat_view_dataset(tokenizer, rows, replies, placement)
        result["kl_own"] = completion_kl(
            student, teacher, own, collator, kl_batch_size, progress=f"{label} KL, own"
        )
    return result
