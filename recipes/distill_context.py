"""Context distillation of any context on your own data: a chat teacher reads a context (a system
prompt, a document, a hint) and a prompt; the student reads the prompt alone and learns the teacher's
full next-token distribution over every token of the teacher's reply.

    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/distill_context.py \
        --config recipes/configs/embedded/system-prompt.yaml [--num_train_epochs 3]

Data (`ContextDataArguments`): any JSONL file or dataset with a prompt, a context (or one `context` for
every row) and an optional completion; TRL's SDFT rows (prompt + privileged_context) and chat `messages`
(system message = the context) are read as they are. Rows without a completion get the teacher's,
generated once with the context and kept in the completion cache. Writes into output_dir: the student,
metrics.json, report.md (held-out rule-following rates with standard errors, KL to the teacher before and
after), predictions_replies.jsonl (every held-out reply and its check) and resolved_config.yaml.

Everything is checked before a model loads (`distill-trainer validate` runs the same checks). An output_dir
holding an earlier run's results is refused unless overwrite_output_dir says so; a run stopped mid-training
continues from its last checkpoint with --resume_from_checkpoint true (same settings; the teacher's
replies come back from the cache).
"""

from __future__ import annotations

import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
import json
import time
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
from distill_trainer.context.completion_cache import cut_offs
from distill_trainer.context.config import ContextDataArguments
from distill_trainer.context.generation_eval import reply_records, rule_following
from distill_trainer.context.report import format_report, write_report
from distill_trainer.context.steps import (
    chat_view_dataset,
    completions,
    measure_student,
)
from distill_trainer.report.hub import save_student, ship_student
from distill_trainer.report.model_card import StudentCard, reply_source
from distill_trainer.run.method_reuse import (
    finished_here,
    method_fingerprint,
    recipe_script,
    record_fingerprint,
)
from distill_trainer.run.runner import (
    load_student,
    no_partial_output_dir,
    resolved_config,
    run_recipe,
    training_metrics,
    write_outputs,
    write_resolved_config,
)
from distill_trainer.run.validate_replies import CONTEXT_RECIPE, validate_reply_recipe
from distill_trainer.teacher.teacher import Teacher, is_self
from distill_trainer.training.parsing import given_or_inferred
from distill_trainer.views.cross_tokenizer import CrossTokenizerReplies

RECIPE = CONTEXT_RECIPE.name
CONFIG_TYPES = (StudentArguments, ContextDataArguments, DistillationConfig)


def load_models(student_args, config):
    """(student, its `Teacher`: the student's base model for "self", else the teacher on disk, loaded only
    when something is not cached)."""
    student = load_student(student_args, seed=config.seed)
    name = config.teacher_model_name_or_path
    if is_self(name):
        return student, Teacher.for_model(student, name, student_args.model_name_or_path, student_args.dtype)
    return student, Teacher.from_source(name, config.teacher_dtype, config.teacher_quantization)


def teacher_views(teacher, tokenizers, train_rows, eval_rows, data_args, config, cache: dict):
    """The two-view datasets (training, held-out) with the teacher's replies where the data has none, the
    teacher's held-out replies, and what the completion cache did. Fully on-policy, the student writes
    every training reply: the teacher writes the held-out ones only. `tokenizers`: (the student's, the
    teacher's, the `CrossTokenizerReplies` of both when they differ, else None)."""
    tokenizer, teacher_tokenizer, cross = tokenizers
    if config.lmbda == 1:
        train_rows = [dict(row, completion=row["completion"] or "") for row in train_rows]
    to_write = [
        i
        for i, row in enumerate(train_rows)
        if config.lmbda < 1 and (row["completion"] is None or data_args.teacher_writes_completions)
    ]
    rows = [train_rows[i] for i in to_write] + eval_rows
    settings, placement = data_args.generation_settings(), data_args.context_placement
    replies, info = completions(  # the teacher writes in its own tokenizer's chat template
        teacher, teacher_tokenizer, rows, settings, show_progress=not config.disable_tqdm, **cache
    )
    train_replies = [None] * len(train_rows)
    for index, reply in zip(to_write, replies):
        train_replies[index] = reply
    eval_replies = replies[len(to_write) :]
    train_views = chat_view_dataset(tokenizer, train_rows, train_replies, placement, cross)
    eval_views = (
        chat_view_dataset(tokenizer, eval_rows, eval_replies, placement, cross) if eval_rows else None
    )
    return train_views, eval_views, eval_replies, info


def evaluate_before(
    student, tokenizers, eval_rows, eval_views, eval_replies, student_args, data_args, config, cache, measure
):
    """The teacher with the context and the untrained student without it, on the held-out prompts."""
    tokenizer, teacher_tokenizer, _ = tokenizers
    settings = data_args.generation_settings()
    evaluation = {"teacher": {"replies": [reply["text"] for reply in eval_replies]}}
    if data_args.checker:
        cut_off = cut_offs(teacher_tokenizer, eval_replies)
        rule, checks = rule_following(evaluation["teacher"]["replies"], data_args.checker, cut_off)
        evaluation["teacher"].update(rule=rule, checks=checks)
    # the untrained student's replies are those of its base model: cached like the teacher's
    base = Teacher.for_model(
        student,
        "self" if student_args.student_mode == "lora" else "student",
        student_args.model_name_or_path,
        student_args.dtype,
    )
    bare_rows = [dict(row, context="") for row in eval_rows]
    before, _ = completions(
        base, tokenizer, bare_rows, settings, show_progress=not config.disable_tqdm, **cache
    )
    evaluation["before"] = measure_student(
        student, tokenizer, eval_rows, eval_views, settings, label="before", replies=before, **measure
    )
    return evaluation


def run_metrics(student_args, data_args, config, rows, reports, trainer, train_result, info, evaluation):
    """metrics.json's content: settings, data, training and the held-out measurements."""
    train_rows, eval_rows = rows
    contexts = sorted({row["context"] for row in train_rows})
    return {
        "recipe": RECIPE,
        "student": student_args.model_name_or_path,
        "student_mode": student_args.student_mode,
        "teacher": config.teacher_model_name_or_path,
        "cross_tokenizer": trainer.cross_tokenizer is not None,
        "context_placement": data_args.context_placement,
        "context_summary": repr(contexts[0][:160])
        if len(contexts) == 1
        else f"{len(contexts)} different contexts",
        "train_rows": len(train_rows),
        "eval_rows": len(eval_rows),
        "teacher_completions": info,
        "checker": data_args.checker,
        "decoding": data_args.generation_settings().as_dict(),
        "loss": config.loss,
        "temperature": config.temperature,
        "replies": reply_source(config.lmbda),
        "rollouts": {
            "lmbda": config.lmbda,
            "temperature": config.rollout_temperature,
            "top_p": config.rollout_top_p,
            "max_new_tokens": config.rollout_max_new_tokens,
            "steps_on_policy": sum(source == "student" for _, source in trainer.rollout_steps),
        },
        **training_metrics(trainer, train_result, len(trainer.train_dataset)),
        "teacher_output_cache": trainer.teacher_output_cache_info,
        "eval": {
            key: {k: v for k, v in value.items() if k in ("rule", "kl", "kl_own")}
            for key, value in evaluation.items()
        },
        "data": {report.where: report.as_dict() for report in reports},
    }


def write_run(trainer, configs, given, metrics, train_rows, eval_rows, reports, evaluation) -> None:
    """The model card and recipe beside the weights, report.md, the predictions, and metrics.json last
    (its presence marks a finished run)."""
    student_args, _, config = configs
    contexts = sorted({row["context"] for row in train_rows})
    card = StudentCard.from_run(
        student_args,
        config,
        method="context distillation",
        context=contexts[0] if len(contexts) == 1 else f"{len(contexts)} different contexts",
        training_data=[f"{reports[0].where}, {len(train_rows)} prompts"],
    )
    ship_student(
        trainer, config.output_dir, card=card, recipe=resolved_config(configs, given), write_weights=False
    )
    report = write_report(config.output_dir, metrics)
    records = reply_records(eval_rows, evaluation)
    paths = [report, *write_outputs(config.output_dir, metrics, {"replies": records}, configs, RECIPE, given)]
    print("\n" + format_report(metrics) + "outputs: " + "  ".join(map(str, paths)), flush=True)


def run_distill_context(student_args, data_args, config, callbacks=None, given=None) -> dict:
    """`given`: the settings given explicitly (`parse_config`); None for configs built in Python."""
    start = time.perf_counter()
    # ------------------------------------------------------------ checks, rows and tokenizer (no model yet)
    given = given_or_inferred(given, (student_args, data_args, config))
    checked = validate_reply_recipe(CONTEXT_RECIPE, student_args, data_args, config, given=given)
    train_rows, eval_rows, reports = (checked.data[key] for key in ("train", "eval", "reports"))
    tokenizer = checked.tokenizer
    # a teacher with another tokenizer: its own views of the replies, aligned with the student's
    teacher_tokenizer = checked.teacher_tokenizer or tokenizer
    cross = CrossTokenizerReplies(tokenizer, teacher_tokenizer) if checked.teacher_tokenizer else None
    tokenizers = (tokenizer, teacher_tokenizer, cross)

    # ------------------------------------------------------------ student, teacher and the teacher's replies
    student, teacher = load_models(student_args, config)
    cache = dict(
        placement=data_args.context_placement,
        cache_dir=data_args.completion_cache_dir,
        batch_size=data_args.generation_batch_size,
    )
    train_views, eval_views, eval_replies, info = teacher_views(
        teacher, tokenizers, train_rows, eval_rows, data_args, config, cache
    )

    # ---------------------------------------------- before: the teacher with the context, the student without
    measure = dict(
        checker=data_args.checker,
        # the KL to the teacher compares logit i of both models: not measured across tokenizers
        teacher=teacher if cross is None else None,
        placement=data_args.context_placement,
        batch_size=data_args.generation_batch_size,
        kl_batch_size=data_args.kl_batch_size,
    )
    evaluation = {}
    if eval_rows:
        evaluation = evaluate_before(
            student,
            tokenizers,
            eval_rows,
            eval_views,
            eval_replies,
            student_args,
            data_args,
            config,
            cache,
            measure,
        )

    # ---------------------------------------------- distil: the teacher grades every reply token
    trainer = ContextDistillationTrainer(
        model=student,
        args=config,
        teacher=teacher,
        train_dataset=train_views,
        processing_class=tokenizer,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        teacher_tokenizer=teacher_tokenizer,
        callbacks=callbacks,
    )
    configs = (student_args, data_args, config)
    write_resolved_config(config.output_dir, configs, RECIPE, given)
    train_result = trainer.train()
    save_student(trainer, config.output_dir)

    # ------------------------------------------------------------ after: the student without the context
    if eval_rows:
        settings = data_args.generation_settings()
        evaluation["after"] = measure_student(
            trainer.model, tokenizer, eval_rows, eval_views, settings, label="after", **measure
        )

    # ------------------------------------------------------------ report (metrics.json last: a finished run)
    metrics = run_metrics(
        student_args,
        data_args,
        config,
        (train_rows, eval_rows),
        reports,
        trainer,
        train_result,
        info,
        evaluation,
    )
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    metrics["code"] = stamp_json(
        code_record([recipe_script(RECIPE)])
    )  # report.md names the code that made it
    write_run(trainer, configs, given, metrics, train_rows, eval_rows, reports, evaluation)
    return metrics


def finished_before(configs, fingerprint) -> dict | None:
    """The metrics of this very run when output_dir already holds it, finished with the same settings,
    data, models, code and packages (rerun into its own folder, it is read back, not trained again)."""
    output_dir = Path(configs[-1].output_dir)
    if not finished_here(output_dir, fingerprint):
        return None
    print(
        f"{output_dir} holds this run, finished with the same settings, data, model files, code and package "
        "versions: read back (remove the folder to train it again)",
        flush=True,
    )
    return json.loads((output_dir / "metrics.json").read_text(encoding="utf-8"))


def main(argv=None) -> dict:
    configs, given = parse_config(CONFIG_TYPES, argv)
    fingerprint = method_fingerprint(RECIPE, resolved_config(configs, given))
    metrics = finished_before(configs, fingerprint)
    if metrics is not None:
        return metrics
    with no_partial_output_dir(configs[-1].output_dir):
        metrics = run_distill_context(*configs, given=given)
        record_fingerprint(configs[-1].output_dir, fingerprint)  # last: a finished run, reusable
        return metrics


if __name__ == "__main__":
    run_recipe(main)
