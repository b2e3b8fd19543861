"""Knowledge injection, a document into weights: a chat teacher reads a document and answers questions about
it; the student, without the document, learns the teacher's full next-token distribution on those answers
(context distillation, CD). The same student trained with cross-entropy on the gold answers of the same
questions (supervised fine-tuning, SFT) is the baseline; the base student with the document in its prompt,
and the teacher with it, are the ceiling.

    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/distill_document.py \
        --config recipes/configs/embedded/document-self.yaml

Data (`KnowledgeArguments`): a document, training questions with short gold answers, and two held-out
sets: other wordings of the trained facts, and facts never trained (recipes/data/handbook/make_handbook.py
writes all four). Every answer a model writes before training (the teacher's, the base student's with and
without the document, its replies to the forgetting prompts) is generated once and kept in the completion
cache; the teacher's distributions on its training answers are kept in the teacher output cache, so a rerun
never loads a separate teacher. Writes into output_dir: results.md and results.json (closed-book accuracy,
exact and contains, with standard errors, on training wordings, held-out wordings and held-out facts, for
the student before, after CD and after SFT, and open-book for the student and the teacher; forgetting; CD
against SFT with a 95% interval), metrics.json, predictions_answers.jsonl, resolved_config.yaml, the CD
student, and the SFT student in sft/.
"""

from __future__ import annotations

import copy
import shlex
import sys
import time
from pathlib import Path

from distill_trainer import (
    ContextDistillationTrainer,
    DistillationConfig,
    StudentArguments,
    TwoViewCollator,
    parse_config,
)
from distill_trainer.context.completion_cache import teacher_completions
from distill_trainer.context.knowledge_data import (
    HELDOUT_SETS,
    KnowledgeArguments,
    load_forgetting_prompts,
    load_question_sets,
)
from distill_trainer.context.knowledge_eval import (
    LazyTeacher,
    closed_book_answers,
    ensure_teacher_outputs,
    forgetting_kl,
    score_sets,
    split_by_set,
)
from distill_trainer.context.knowledge_report import knowledge_results, write_results
from distill_trainer.context.steps import (
    chat_view_dataset,
    check_reply_settings,
    checked_tokenizer,
    completions,
)
from distill_trainer.memory.peak import release_freed_memory
from distill_trainer.report.hub import save_student
from distill_trainer.run.runner import (
    load_student,
    no_partial_output_dir,
    run_recipe,
    training_metrics,
    write_outputs,
    write_resolved_config,
)
from distill_trainer.teacher.teacher import SELF, Teacher, is_self
from distill_trainer.views.chat import chat_prompt_ids

RECIPE = "distill_document"
CONFIG_TYPES = (StudentArguments, KnowledgeArguments, DistillationConfig)


def train_and_answer(student, views, config, tokenizer, sets, settings, args, teacher, callbacks=None):
    """Train `student` on `views` (CD with a teacher, SFT with alpha=0 and none), save it, and give its
    closed-book answers, its forgetting KL (on the prepared rows) and its training figures."""
    trainer = ContextDistillationTrainer(
        model=student,
        args=config,
        teacher=teacher,
        train_dataset=views,
        processing_class=tokenizer,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        teacher_tokenizer=tokenizer,
        callbacks=callbacks,
    )
    result = trainer.train()
    save_student(trainer, config.output_dir)
    options = dict(placement=args.context_placement, batch_size=args.generation_batch_size)
    answers = closed_book_answers(trainer.model, tokenizer, sets, settings, **options)
    return trainer, answers, training_metrics(trainer, result, len(views))


def run_distill_document(student_args, args, config, callbacks=None, command: str = "") -> dict:
    start, seconds = time.perf_counter(), {}

    def lap(name, since):
        seconds[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()

    # ---------------------------------------------------- checks, questions and tokenizer (no model yet)
    check_reply_settings(student_args, config, RECIPE)
    sets = load_question_sets(args)
    forgetting_rows = load_forgetting_prompts(args)
    student_path, teacher_name = student_args.model_name_or_path, config.teacher_model_name_or_path
    placement, self_teacher = args.context_placement, is_self(teacher_name)
    tokenizer = checked_tokenizer(student_args, config, sets["train"][0], placement)
    first = sets["train"][0]
    document_ids = chat_prompt_ids(tokenizer, first["prompt"], first["context"], placement)
    settings = args.generation_settings()
    cache = dict(
        placement=placement, cache_dir=args.completion_cache_dir, batch_size=args.generation_batch_size
    )
    show = not config.disable_tqdm
    rows = [row for part in sets.values() for row in part]
    # the trained models are scored on the held-out sets; the teacher's training answers are scored too
    heldout = {name: sets[name] for name in HELDOUT_SETS}
    heldout_rows = [row for part in heldout.values() for row in part]

    # ------------------------------------------------------------ the teacher's answers, open book (cached)
    mark = time.perf_counter()
    student = load_student(student_args, seed=config.seed)
    base = Teacher.for_model(student, "self", student_path, student_args.dtype)  # the student's base model
    teacher = (
        base if self_teacher else LazyTeacher(teacher_name, config.teacher_dtype, config.teacher_quantization)
    )
    mark = lap("load_student", mark)
    if self_teacher:
        replies, teacher_info = completions(base, tokenizer, rows, settings, show_progress=show, **cache)
    else:
        replies, teacher_info = teacher_completions(
            teacher, tokenizer, rows, settings, teacher_id=teacher.teacher_id, show_progress=show, **cache
        )
    teacher_replies = split_by_set([r["text"] for r in replies], sets)
    train_views = chat_view_dataset(tokenizer, sets["train"], replies[: len(sets["train"])], placement)
    outputs_info = None
    if not self_teacher and config.teacher_output_cache:  # its distributions, before it is dropped
        outputs_info = ensure_teacher_outputs(
            teacher, train_views, TwoViewCollator(tokenizer.pad_token_id), config
        )
    teacher_loaded = not self_teacher and teacher.loaded
    if not self_teacher:
        teacher.release()
    mark = lap("teacher", mark)

    # ---------------------------------------------------- the base student: closed and open book (cached)
    bare = [dict(row, context="") for row in heldout_rows]
    before, before_info = completions(base, tokenizer, bare, settings, show_progress=show, **cache)
    open_student = {name: teacher_replies[name] for name in heldout}
    if not self_teacher:
        opened, _ = completions(base, tokenizer, heldout_rows, settings, show_progress=show, **cache)
        open_student = split_by_set([r["text"] for r in opened], heldout)
    base_forgetting = []
    if forgetting_rows:
        long = args.generation_settings(args.forgetting_max_new_tokens)
        base_forgetting, _ = completions(base, tokenizer, forgetting_rows, long, show_progress=show, **cache)
    mark = lap("base_student", mark)
    forgetting = dict(placement=placement, batch_size=args.kl_batch_size, source=student_path)

    # ---------------------------------------------------- CD: the teacher's distribution on its answers
    write_resolved_config(config.output_dir, (student_args, args, config), RECIPE)
    cd_teacher = SELF if self_teacher else teacher_name
    trainer, cd_answers, cd_metrics = train_and_answer(
        student, train_views, config, tokenizer, heldout, settings, args, cd_teacher, callbacks
    )
    cd_forgetting = forgetting_kl(trainer.model, tokenizer, forgetting_rows, base_forgetting, **forgetting)
    del trainer, student, base
    release_freed_memory()
    mark = lap("cd", mark)

    # ------------------------------------------------------------ SFT: cross-entropy on the gold answers
    answers = {"before": split_by_set([r["text"] for r in before], heldout), "cd": cd_answers}
    kls = {"cd": cd_forgetting}
    sft_metrics = None
    if args.sft_baseline:
        sft_config = copy.deepcopy(config)
        sft_config.alpha, sft_config.teacher_model_name_or_path = 0.0, None
        sft_config.teacher_output_cache = False
        sft_config.output_dir = str(Path(config.output_dir) / "sft")
        gold = [dict(row, context="", completion=row["answer"]) for row in sets["train"]]
        sft_views = chat_view_dataset(tokenizer, gold, [None] * len(gold), placement)
        sft_student = load_student(student_args, seed=config.seed)
        trainer, answers["sft"], sft_metrics = train_and_answer(
            sft_student, sft_views, sft_config, tokenizer, heldout, settings, args, None
        )
        kls["sft"] = forgetting_kl(trainer.model, tokenizer, forgetting_rows, base_forgetting, **forgetting)
        del trainer, sft_student
        release_freed_memory()
        mark = lap("sft", mark)
    answers.update(open_student=open_student, open_teacher=teacher_replies)
    scores = {model: score_sets(texts, sets) for model, texts in answers.items()}

    # ------------------------------------------------------------ results
    seconds["total"] = round(time.perf_counter() - start, 1)
    results = knowledge_results(scores, kls)
    counts = ", ".join(f"{name} {len(part)}" for name, part in sets.items())
    header = [
        f"# Knowledge injection: {student_path} (LoRA) <- teacher {teacher_name}",
        "",
        f"- command: `{command}`" if command else "- command: (called from Python)",
        f"- document: {args.document_file} ({len(document_ids)} tokens in the teacher's prompt, "
        f"{placement} placement); questions: {counts}",
        f"- answers: greedy, at most {settings.max_new_tokens} new tokens; teacher answers "
        f"{teacher_info['generated']} generated, {teacher_info['reused']} read from the completion cache; "
        f"base student {before_info['generated']} generated, {before_info['reused']} reused; separate "
        f"teacher loaded: {'yes' if teacher_loaded else 'no'}",
        f"- training (CD and SFT alike): {cd_metrics['train']['global_step']} steps, learning rate "
        f"{config.learning_rate}, {config.num_train_epochs} epochs, "
        f"batch {config.per_device_train_batch_size}",
        "- seconds: " + ", ".join(f"{name} {value}" for name, value in seconds.items()),
    ]
    metrics = {
        "recipe": RECIPE,
        "student": student_path,
        "teacher": teacher_name,
        "command": command,
        "questions": {name: len(part) for name, part in sets.items()},
        "document_tokens": len(document_ids),
        "teacher_completions": teacher_info,
        "base_completions": before_info,
        "teacher_loaded": teacher_loaded,
        "teacher_output_cache": outputs_info,
        "decoding": settings.as_dict(),
        "seconds": seconds,
        "cd": cd_metrics,
        "sft": sft_metrics,
        "results": results,
    }
    records = [
        {"set": name, "prompt": row["prompt"], "gold": row["answer"], "fact": row["fact"]}
        | {model: texts[name][i] for model, texts in answers.items() if name in texts}
        for name, part in sets.items()
        for i, row in enumerate(part)
    ]
    paths = write_results(config.output_dir, results, header)
    configs = (student_args, args, config)
    paths += write_outputs(config.output_dir, metrics, {"answers": records}, configs, RECIPE)
    print("\n" + paths[0].read_text() + "outputs: " + "  ".join(map(str, paths)), flush=True)
    return metrics


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    configs = parse_config(CONFIG_TYPES, argv)
    command = shlex.join(["python", "recipes/distill_document.py", *argv])
    with no_partial_output_dir(configs[-1].output_dir):
        return run_distill_document(*configs, command=command)


if __name__ == "__main__":
    run_recipe(main)
