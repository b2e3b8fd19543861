"""The steps of knowledge injection that `recipes/distill_document.py` strings together: the teacher's
answer distributions on the training answers (its output cache, computed only when not cached), a model's
answers with or without the document, their scores, and forgetting (the KL of a trained student to its own
base model on unrelated prompts).

    teacher = Teacher.from_source("embedded:qwen2.5-coder-1.5b", "bfloat16")   # loaded when first needed
    replies, info = completions(teacher, tokenizer, rows, settings)
    ensure_teacher_outputs(teacher, views, collator, config)    # the trainer then finds them cached
    scores = score_sets({"heldout_wordings": replies}, sets)
    kl = forgetting_kl(student, tokenizer, rows, base_replies)
"""

from __future__ import annotations

import time

from distill_trainer.context.generation_eval import completion_kl, generate_for_rows
from distill_trainer.context.short_answers import score_answers
from distill_trainer.context.steps import chat_view_dataset
from distill_trainer.teacher.generation import GenerationSettings
from distill_trainer.teacher.output_cache import cached_teacher_outputs, load_or_build_teacher_outputs
from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits
from distill_trainer.teacher.teacher import Teacher
from distill_trainer.views.text import TwoViewCollator


def output_cache_options(config) -> dict:
    """The teacher output cache's key settings, exactly as `ContextDistillationTrainer` looks them up."""
    return dict(
        distill_vocab=config.distill_vocab,
        temperature=config.temperature,
        top_k=config.teacher_cache_top_k,
        label_token_ids=None,
        cache_dir=config.teacher_cache_dir,
    )


def ensure_teacher_outputs(teacher: Teacher, views, collator, config) -> dict:
    """Computes and stores the teacher's distributions on `views` unless they are cached, keyed on the
    teacher's files, so that the trainer (given the teacher's name) reads them without loading it."""
    start = time.perf_counter()
    options = output_cache_options(config)
    cached, path = cached_teacher_outputs(views, teacher_id=teacher.teacher_id, **options)
    if cached is not None:
        return {"path": str(path), "reused": True, "seconds": 0.0}
    teacher.runner = TeacherAnswerLogits(use_prefix_cache=config.teacher_prefix_cache)
    _, path, reused = load_or_build_teacher_outputs(
        teacher.model,
        views,
        collator,
        **options,
        batch_size=config.per_device_eval_batch_size,
        logits_fn=teacher.answer_logits,
        show_progress=not config.disable_tqdm,
        teacher_id=teacher.teacher_id,
    )
    return {"path": str(path), "reused": reused, "seconds": round(time.perf_counter() - start, 2)}


def closed_book_answers(model, tokenizer, sets: dict, settings: GenerationSettings, **options) -> dict:
    """{set name: answer texts} of `model` WITHOUT the document, one generation pass over all sets."""
    names = list(sets)
    rows = [row for name in names for row in sets[name]]
    replies = generate_for_rows(model, tokenizer, rows, settings, with_context=False, **options)
    return split_by_set([r["text"] for r in replies], sets)


def split_by_set(values: list, sets: dict) -> dict:
    """Cut a list made over the sets' rows, in order, back into one list per set."""
    out, start = {}, 0
    for name, rows in sets.items():
        out[name] = values[start : start + len(rows)]
        start += len(rows)
    if start != len(values):
        raise ValueError(f"{len(values)} values for {start} rows")
    return out


def score_sets(replies: dict[str, list[str]], sets: dict[str, list[dict]]) -> dict:
    """{set name: score_answers(...)} for each set `replies` has."""
    return {
        name: score_answers(texts, [row["answer"] for row in sets[name]]) for name, texts in replies.items()
    }


def forgetting_kl(
    student,
    tokenizer,
    rows: list[dict],
    base_replies: list[dict],
    *,
    source: str,
    placement: str = "system",
    batch_size: int = 4,
) -> dict | None:
    """KL(base ‖ student) per token on the base model's own replies to unrelated prompts: how far
    training moved the student away from its base where the document has nothing to say. The base is the
    LoRA student with its adapters off (`source` names its weights); 0 before training, by definition."""
    if not rows:
        return None
    views = chat_view_dataset(tokenizer, rows, base_replies, placement)
    base = Teacher.for_model(student, "self", source)
    collator = TwoViewCollator(tokenizer.pad_token_id)
    return completion_kl(student, base, views, collator, batch_size)
