"""Knowledge injection, a document into weights: a chat teacher reads a document and answers questions about
it; the student, without the document, learns the teacher's full next-token distribution on those answers
(context distillation, CD). The same student trained with cross-entropy on the gold answers of the same
questions (supervised fine-tuning, SFT) is the baseline; the base student with the document in its prompt,
and the teacher with it, are the ceiling.

    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/distill_document.py \
        --config recipes/configs/embedded/document-self.yaml

Data (`KnowledgeArguments`): a document, training questions with short gold answers, and two held-out
sets: other wordings of the trained facts, and facts never trained (recipes/data/handbook/make_handbook.py
writes all four). With `questions: generate` there is no file of training questions: the teacher reads the
document one passage at a time, writes question-answer pairs and confirms each with the passage in view
(`context/question_writing.py`); the pairs it kept are the training questions, every pair written is in
generated_questions.jsonl, and results.md says how much of the document (and of facts_file's facts)
they cover. Every answer a model writes before training (the teacher's, the base student's with and
without the document, its replies to the forgetting prompts) is generated once and kept in the completion
cache; the teacher's distributions on its training answers are kept in the teacher output cache, so a rerun
never loads a separate teacher. Writes into output_dir: results.md and results.json (closed-book accuracy,
exact and contains, with standard errors, on training wordings, held-out wordings and held-out facts, for
the student before, after CD and after SFT, and open-book for the student and the teacher; forgetting; CD
against SFT with a 95% interval), metrics.json, predictions_answers.jsonl, resolved_config.yaml, the CD
student, and the SFT student in sft/. Checked before a model loads as `distill-trainer validate` checks
it; --resume_from_checkpoint true continues a stopped run (CD from its last checkpoint, SFT from sft/'s).
"""

from __future__ import annotations

import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
import copy
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill_trainer import (
    ContextDistillationTrainer,
    DistillationConfig,
    StudentArguments,
    TwoViewCollator,
    parse_config,
)
from distill_trainer.code_digest import code_record
from distill_trainer.code_stamp import stamp_json
from distill_trainer.context.coverage import fact_coverage, passage_coverage, statement_coverage
from distill_trainer.context.knowledge_data import (
    HELDOUT_SETS,
    KnowledgeArguments,
)
from distill_trainer.context.knowledge_eval import (
    closed_book_answers,
    ensure_teacher_outputs,
    forgetting_kl,
    score_sets,
    split_by_set,
)
from distill_trainer.context.knowledge_report import knowledge_results, write_results
from distill_trainer.context.passages import nearest_passage
from distill_trainer.context.question_writing import WrittenQuestions, describe_counts, write_questions
from distill_trainer.context.steps import (
    chat_view_dataset,
    completions,
)
from distill_trainer.errors import UsageError
from distill_trainer.heap import reusing_freed_memory
from distill_trainer.integrity import write_text_atomically
from distill_trainer.memory.peak import release_freed_memory
from distill_trainer.report.hub import save_student
from distill_trainer.run.method_reuse import recipe_script
from distill_trainer.run.runner import (
    load_student,
    no_partial_output_dir,
    run_recipe,
    training_metrics,
    write_outputs,
    write_resolved_config,
)
from distill_trainer.run.validate_document import DOCUMENT_RECIPE
from distill_trainer.run.validate_replies import validate_reply_recipe
from distill_trainer.teacher.teacher import Teacher, is_self
from distill_trainer.training.checkpoints import last_complete_checkpoint, parse_resume_setting
from distill_trainer.training.parsing import GivenSettings, given_or_inferred
from distill_trainer.views.cross_tokenizer import CrossTokenizerReplies

RECIPE = DOCUMENT_RECIPE.name
CONFIG_TYPES = (StudentArguments, KnowledgeArguments, DistillationConfig)


def train_and_answer(
    student, views, config, tokenizer, sets, settings, args, teacher, callbacks=None, teacher_tokenizer=None
):
    """Train `student` on `views` (CD with a teacher, SFT with alpha=0 and none), save it, and give its
    closed-book answers, its forgetting KL (on the prepared rows) and its training figures.
    `teacher_tokenizer`: the teacher's when it differs from `tokenizer` (the cross-tokenizer loss)."""
    trainer = ContextDistillationTrainer(
        model=student,
        args=config,
        teacher=teacher,
        train_dataset=views,
        processing_class=tokenizer,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        teacher_tokenizer=teacher_tokenizer or tokenizer,
        callbacks=callbacks,
    )
    result = trainer.train()
    save_student(trainer, config.output_dir)
    options = dict(placement=args.context_placement, batch_size=args.generation_batch_size)
    answers = closed_book_answers(trainer.model, tokenizer, sets, settings, **options)
    return trainer, answers, training_metrics(trainer, result, len(views))


@dataclass
class Plan:
    """What every stage reads: the question sets, the tokenizer and the decoding and cache settings."""

    sets: dict
    forgetting_rows: list
    tokenizer: object
    cross: CrossTokenizerReplies | None  # a separate teacher with another tokenizer: both replies aligned
    document: str
    document_tokens: int  # the document in the teacher's prompt, chat template and a question included
    teacher_context: dict  # {"mode": "document" or "passage", "limit": its context} (validate_replies)
    settings: object
    cache: dict
    show: bool
    given: GivenSettings  # the settings given explicitly (parse_config), or inferred from the defaults
    passages: list | None = None  # questions: generate, the passages the teacher writes them from
    facts: list | None = None  # facts_file's facts, for the coverage report only
    written: WrittenQuestions | None = None
    seconds: dict = field(default_factory=dict)

    @property
    def teacher_tokenizer(self):
        """The tokenizer the teacher writes and reads in: the student's, or its own (`cross`)."""
        return self.cross.teacher_tokenizer if self.cross is not None else self.tokenizer

    @property
    def heldout(self) -> dict:
        """The sets the trained models are scored on (the teacher's training answers are scored too)."""
        return {name: self.sets[name] for name in HELDOUT_SETS}

    @property
    def scored(self) -> dict:
        """The sets a trained student answers closed book: the held-out ones, and its own training
        questions (did it learn what it was taught, before the question of whether that carries over)."""
        return {"train": self.sets["train"], **self.heldout}

    def lap(self, name: str, since: float) -> float:
        self.seconds[name] = round(time.perf_counter() - since, 1)
        return time.perf_counter()


def plan_run(student_args, args, config, given: GivenSettings | None = None) -> Plan:
    """Checks, questions and tokenizer, before any model loads (`run/validate_replies.py`)."""
    given = given_or_inferred(given, (student_args, args, config))
    checked = validate_reply_recipe(DOCUMENT_RECIPE, student_args, args, config, given=given)
    sets, tokenizer, placement = checked.data["sets"], checked.tokenizer, args.context_placement
    context = checked.data["teacher_context"]
    if context["mode"] == "passage":  # a question without a passage of its own reads the nearest one
        for rows in sets.values():
            for row in rows:
                row["context"] = nearest_passage(row["prompt"], checked.data["passages"]).text
    return Plan(
        sets=sets,
        forgetting_rows=checked.data["forgetting"],
        tokenizer=tokenizer,
        # None unless a separate teacher reads another tokenizer (then the cross-tokenizer loss grades)
        cross=CrossTokenizerReplies(tokenizer, checked.teacher_tokenizer)
        if checked.teacher_tokenizer
        else None,
        document=checked.data["document"],
        document_tokens=context["prompt_tokens"],
        teacher_context=context,
        settings=args.generation_settings(),
        cache=dict(
            placement=placement, cache_dir=args.completion_cache_dir, batch_size=args.generation_batch_size
        ),
        show=not config.disable_tqdm,
        given=given,
        passages=checked.data["passages"],
        facts=checked.data["facts"],
    )


def teacher_questions(plan: Plan, teacher: Teacher, args) -> None:
    """questions: generate: the teacher writes and checks the training questions, passage by passage (both
    through the completion cache); they become the training set, and only they do."""

    def ask(rows, settings):
        # the teacher reads the passages and writes in its own tokenizer's chat template
        return completions(
            teacher, plan.teacher_tokenizer, rows, settings, show_progress=plan.show, **plan.cache
        )

    heldout = [row["prompt"] for name in HELDOUT_SETS for row in plan.sets[name]]
    by_passage = plan.teacher_context["mode"] == "passage"
    plan.written = write_questions(
        plan.passages, plan.document, ask, args, plan.settings, heldout, by_passage=by_passage
    )
    if not plan.written.rows:
        raise UsageError(
            f"the teacher kept no training question ({describe_counts(plan.written.counts)}); give a larger "
            "teacher, or raise question_max_new_tokens if its pairs were cut off"
        )
    plan.sets["train"] = plan.written.rows


def teacher_answers(plan: Plan, teacher: Teacher, config) -> dict:
    """The teacher's open-book answers to every set (cached), the training views made of them and, for a
    separate teacher, its distributions on them (output cache) before it is dropped."""
    rows = [row for part in plan.sets.values() for row in part]
    replies, info = completions(  # the teacher writes in its own tokenizer's chat template
        teacher, plan.teacher_tokenizer, rows, plan.settings, show_progress=plan.show, **plan.cache
    )
    train = plan.sets["train"]
    views = chat_view_dataset(
        plan.tokenizer, train, replies[: len(train)], plan.cache["placement"], plan.cross
    )
    outputs_info = None
    if not teacher.is_self and config.teacher_output_cache:
        collator = TwoViewCollator(plan.tokenizer.pad_token_id)
        outputs_info = ensure_teacher_outputs(teacher, views, collator, config)
    loaded = teacher.loaded
    teacher.release()
    release_freed_memory()
    return {
        "replies": split_by_set([r["text"] for r in replies], plan.sets),
        "views": views,
        "completions": info,
        "output_cache": outputs_info,
        "loaded": loaded,
    }


def base_student_answers(plan: Plan, base: Teacher, open_teacher: dict, self_teacher: bool, args) -> dict:
    """The base student's closed-book answers, its open-book ones (the teacher's, for a self teacher) and
    its replies to the forgetting prompts, all cached."""
    heldout = plan.heldout
    heldout_rows = [row for part in heldout.values() for row in part]
    options = dict(show_progress=plan.show, **plan.cache)
    bare = [dict(row, context="") for row in heldout_rows]
    before, info = completions(base, plan.tokenizer, bare, plan.settings, **options)
    open_book = {name: open_teacher[name] for name in heldout}
    if not self_teacher:
        opened, _ = completions(base, plan.tokenizer, heldout_rows, plan.settings, **options)
        open_book = split_by_set([r["text"] for r in opened], heldout)
    forgetting = []
    if plan.forgetting_rows:
        long = args.generation_settings(args.forgetting_max_new_tokens)
        forgetting, _ = completions(base, plan.tokenizer, plan.forgetting_rows, long, **options)
    closed = split_by_set([r["text"] for r in before], heldout)
    return {"closed": closed, "open": open_book, "forgetting": forgetting, "completions": info}


def sft_baseline(plan: Plan, student_args, args, config, base_forgetting) -> tuple[list, dict, dict]:
    """A fresh student trained with cross-entropy on the gold answers (alpha 0, no teacher), in sft/:
    (its closed-book answers, its forgetting KL, its training figures)."""
    sft_config = copy.deepcopy(config)
    sft_config.alpha, sft_config.teacher_model_name_or_path = 0.0, None
    sft_config.teacher_output_cache = False
    sft_config.output_dir = str(Path(config.output_dir) / "sft")
    # a resumed run continues the SFT student only if it had got as far as a checkpoint of its own
    resumes = parse_resume_setting(config.resume_from_checkpoint) is not None
    sft_config.resume_from_checkpoint = (
        resumes and last_complete_checkpoint(sft_config.output_dir) is not None
    )
    gold = [dict(row, context="", completion=row["answer"]) for row in plan.sets["train"]]
    views = chat_view_dataset(plan.tokenizer, gold, [None] * len(gold), plan.cache["placement"])
    student = load_student(student_args, seed=config.seed)
    trainer, answers, metrics = train_and_answer(
        student, views, sft_config, plan.tokenizer, plan.scored, plan.settings, args, None
    )
    kl = forgetting_kl(
        trainer.model,
        plan.tokenizer,
        plan.forgetting_rows,
        base_forgetting,
        **forgetting_options(plan, student_args, args),
    )
    del trainer, student
    release_freed_memory()
    return answers, kl, metrics


def forgetting_options(plan: Plan, student_args, args) -> dict:
    return dict(
        placement=plan.cache["placement"],
        batch_size=args.kl_batch_size,
        source=student_args.model_name_or_path,
    )


def run_distill_document(
    student_args, args, config, callbacks=None, command: str = "", given: GivenSettings | None = None
) -> dict:
    """`given`: the settings given explicitly (`parse_config`); None for configs built in Python."""
    start = time.perf_counter()
    plan = plan_run(student_args, args, config, given)
    self_teacher = is_self(config.teacher_model_name_or_path)

    # ---- the teacher's answers with the document, then the base student's (all cached)
    mark = time.perf_counter()
    student = load_student(student_args, seed=config.seed)
    source = student_args.model_name_or_path
    base = Teacher.for_model(student, "self", source, student_args.dtype)  # the student's base model
    teacher = (  # a separate teacher loads only if some answer or distribution is not cached yet
        base
        if self_teacher
        else Teacher.from_source(
            config.teacher_model_name_or_path, config.teacher_dtype, config.teacher_quantization
        )
    )
    mark = plan.lap("load_student", mark)
    if plan.passages is not None:
        teacher_questions(plan, teacher, args)
        mark = plan.lap("questions", mark)
    taught = teacher_answers(plan, teacher, config)
    mark = plan.lap("teacher", mark)
    base_answers = base_student_answers(plan, base, taught["replies"], self_teacher, args)
    mark = plan.lap("base_student", mark)

    # ---- CD: the teacher's distribution on its answers; SFT: cross-entropy on the gold answers
    write_resolved_config(config.output_dir, (student_args, args, config), RECIPE, plan.given)
    trainer, cd_answers, cd_metrics = train_and_answer(
        student,
        taught["views"],
        config,
        plan.tokenizer,
        plan.scored,
        plan.settings,
        args,
        teacher,
        callbacks,
        teacher_tokenizer=plan.teacher_tokenizer,
    )
    options = forgetting_options(plan, student_args, args)
    kls = {
        "cd": forgetting_kl(
            trainer.model, plan.tokenizer, plan.forgetting_rows, base_answers["forgetting"], **options
        )
    }
    teacher.release()  # a separate teacher the trainer loaded (without its output cache)
    del trainer, student, base, teacher
    release_freed_memory()
    mark = plan.lap("cd", mark)
    answers = {"before": base_answers["closed"], "cd": cd_answers}
    sft_metrics = None
    if args.sft_baseline:
        answers["sft"], kls["sft"], sft_metrics = sft_baseline(
            plan, student_args, args, config, base_answers["forgetting"]
        )
        mark = plan.lap("sft", mark)
    answers.update(open_student=base_answers["open"], open_teacher=taught["replies"])
    plan.seconds["total"] = round(time.perf_counter() - start, 1)
    return report(
        plan,
        answers,
        kls,
        taught,
        base_answers,
        (cd_metrics, sft_metrics),
        (student_args, args, config),
        command,
    )


def passage_reading(context: dict, passages: int) -> str:
    """Why, and how, the teacher answers with one passage in view (teacher_context: passage)."""
    why = (
        "teacher_context: passage"
        if context["fits"]
        else f"the document is longer than the teacher reads at once ({context['limit']} tokens)"
    )
    return (
        f"{why}: each question is answered, open book, with one of {passages} passages in view: the one it "
        "was written from, else the one that shares the most words with it"
    )


def report(plan: Plan, answers, kls, taught, base_answers, trained, configs, command) -> dict:
    """results.md/.json, metrics.json and every answer, printed and written into output_dir."""
    student_args, args, config = configs
    cd_metrics, sft_metrics = trained
    scores = {model: score_sets(texts, plan.sets) for model, texts in answers.items()}
    results = knowledge_results(scores, kls)
    coverage = {}
    if plan.written is not None:
        coverage["passages"] = passage_coverage(plan.passages, plan.written.records)
        coverage["statements"] = statement_coverage(plan.written.statements, plan.written.records)
    if plan.facts is not None:
        coverage["facts"] = fact_coverage(plan.facts, plan.sets["train"], plan.heldout)
    if coverage:
        results["coverage"] = coverage
    teacher_info, before_info = taught["completions"], base_answers["completions"]
    counts = ", ".join(f"{name} {len(part)}" for name, part in plan.sets.items())
    passage_mode = plan.teacher_context["mode"] == "passage"
    header = [
        f"# Knowledge injection: {student_args.model_name_or_path} (LoRA) <- teacher "
        f"{config.teacher_model_name_or_path}",
        "",
        f"- command: `{command}`" if command else "- command: (called from Python)",
        f"- document: {args.document_file} ({plan.document_tokens} tokens in the teacher's prompt, "
        f"{plan.cache['placement']} placement); questions: {counts}",
        *([f"- {passage_reading(plan.teacher_context, len(plan.passages))}"] if passage_mode else []),
        *(
            [
                "- training questions written by the teacher from the document: "
                + describe_counts(plan.written.counts)
                + " (every pair: generated_questions.jsonl)"
            ]
            if plan.written is not None
            else []
        ),
        f"- answers: greedy, at most {plan.settings.max_new_tokens} new tokens; teacher answers "
        f"{teacher_info['generated']} generated, {teacher_info['reused']} read from the completion cache, "
        f"{teacher_info['cut_off']} cut off at that limit; base student {before_info['generated']} "
        f"generated, {before_info['reused']} reused, {before_info['cut_off']} cut off; separate "
        f"teacher loaded: {'yes' if taught['loaded'] else 'no'}",
        f"- training (CD and SFT alike): {cd_metrics['train']['global_step']} steps, learning rate "
        f"{config.learning_rate}, {config.num_train_epochs} epochs, "
        f"batch {config.per_device_train_batch_size}",
        "- seconds: " + ", ".join(f"{name} {value}" for name, value in plan.seconds.items()),
    ]
    metrics = {
        "recipe": RECIPE,
        "student": student_args.model_name_or_path,
        "teacher": config.teacher_model_name_or_path,
        "cross_tokenizer": plan.cross is not None,
        "command": command,
        "questions": {name: len(part) for name, part in plan.sets.items()},
        "document_tokens": plan.document_tokens,
        "teacher_context": plan.teacher_context,
        "teacher_completions": teacher_info,
        "base_completions": before_info,
        "teacher_loaded": taught["loaded"],
        "teacher_output_cache": taught["output_cache"],
        "decoding": plan.settings.as_dict(),
        "seconds": plan.seconds,
        "cd": cd_metrics,
        "sft": sft_metrics,
        "results": results,
    }
    if plan.written is not None:
        metrics["generated_questions"] = dict(plan.written.counts, completions=plan.written.completions)
    records = [
        {"set": name, "prompt": row["prompt"], "gold": row["answer"], "fact": row["fact"]}
        | {model: texts[name][i] for model, texts in answers.items() if name in texts}
        for name, part in plan.sets.items()
        for i, row in enumerate(part)
    ]
    # the tables name the code that made them (`distill-trainer stale-results` reads it)
    metrics["code"] = stamp_json(code_record([recipe_script(RECIPE)]))
    paths = write_results(config.output_dir, results, header, metrics["code"])
    if plan.written is not None:
        lines = (json.dumps(record, ensure_ascii=False) + "\n" for record in plan.written.records)
        paths.append(
            write_text_atomically(Path(config.output_dir) / "generated_questions.jsonl", "".join(lines))
        )
    paths += write_outputs(config.output_dir, metrics, {"answers": records}, configs, RECIPE, plan.given)
    print("\n" + paths[0].read_text() + "outputs: " + "  ".join(map(str, paths)), flush=True)
    return metrics


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    configs, given = parse_config(CONFIG_TYPES, argv)
    command = shlex.join(["python", "recipes/distill_document.py", *argv])
    # freed tensors stay in the heap for the next step: this recipe's tables report time, not memory
    with no_partial_output_dir(configs[-1].output_dir), reusing_freed_memory():
        return run_distill_document(*configs, command=command, given=given)


if __name__ == "__main__":
    run_recipe(main)
