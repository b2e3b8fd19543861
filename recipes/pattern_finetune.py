"""Pattern-based fine-tuning baseline: the student reads the pattern (no demonstrations) and is trained
with cross-entropy on the gold label word; then it is evaluated zero-shot on every evaluation task.

    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/pattern_finetune.py \
        --config recipes/configs/paper/pbft.yaml [--student_mode lora --learning_rate 1e-4]

This is `ContextDistillationTrainer` with alpha=0 and no teacher. The training queries are the ones
context distillation uses with the same data settings (they exclude its fixed demonstrations), so the
two methods differ only in where the targets come from. Writes the student, metrics.json,
predictions_<task>.jsonl and resolved_config.yaml into output_dir.

Everything that can be checked without loading a model is checked first (`distill-trainer validate
--config FILE` runs the same checks alone). With save_strategy: steps, a killed run continues where its
last checkpoint left it with --resume_from_checkpoint true (same settings, same numbers).
"""

from __future__ import annotations

import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
from distill_trainer import (
    ContextDistillationTrainer,
    DataArguments,
    DistillationConfig,
    StudentArguments,
    TwoViewCollator,
    parse_config,
)
from distill_trainer.memory.peak import MemoryTracker
from distill_trainer.models.loading import load_tokenizer
from distill_trainer.nli.data import build_view_dataset, first_token_ids
from distill_trainer.nli.task_evaluation import evaluate_on_tasks
from distill_trainer.report.hub import save_student
from distill_trainer.run.runner import (
    describe_student,
    describe_training,
    load_student,
    nli_metrics,
    no_partial_output_dir,
    print_summary,
    run_recipe,
    training_metrics,
    write_resolved_config,
    write_trained_run,
)
from distill_trainer.run.validate import validate_recipe
from distill_trainer.training.parsing import GivenSettings, given_or_inferred

RECIPE = "pattern_finetune"
CONFIG_TYPES = (StudentArguments, DataArguments, DistillationConfig)


def run_pattern_finetune(
    student_args: StudentArguments,
    data_args: DataArguments,
    config: DistillationConfig,
    callbacks=None,
    given: GivenSettings | None = None,
) -> dict:
    """`given`: the settings given explicitly (`parse_config`); None for configs built in Python."""
    # ------------------------------------------------------------ validate (no model loaded yet) and data
    given = given_or_inferred(given, (student_args, data_args, config))
    checked = validate_recipe(RECIPE, student_args, data_args, config, given=given)
    data, config = checked.data, checked.config  # alpha=0: gold labels only, what this recipe means

    # ------------------------------------------------------------ student
    tokenizer = load_tokenizer(student_args.model_name_or_path)
    first_token_ids(tokenizer, data.pattern)  # label-word collisions fail here, before the model loads
    tracker = MemoryTracker()  # peaks per phase: load, train, eval
    with tracker.phase("student_load"):
        student = load_student(student_args, seed=config.seed)
    train_dataset = build_view_dataset(tokenizer, data.train_rows, data.pattern)

    # ------------------------------------------------------------ train on the gold label words
    trainer = ContextDistillationTrainer(
        model=student,
        args=config,
        teacher=None,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        callbacks=callbacks,
    )
    write_resolved_config(config.output_dir, (student_args, data_args, config), RECIPE, given)
    with tracker.phase("train"):
        train_result = trainer.train()  # resume_from_checkpoint: true|path resumes
    save_student(trainer, config.output_dir)  # the weights are safe on disk before the evaluation starts

    # ------------------------------------------------------------ evaluate the student, no demonstrations
    with tracker.phase("eval"):
        results = evaluate_on_tasks(trainer.model, tokenizer, data, config, data_args, demonstrations=None)

    # ------------------------------------------------------------ report
    metrics = nli_metrics(
        RECIPE,
        f"pbft_{student_args.student_mode}",
        student_args.model_name_or_path,
        data,
        results,
        tracker,
        student_mode=student_args.student_mode,
        **training_metrics(trainer, train_result, len(train_dataset)),
    )
    configs = (student_args, data_args, config)
    paths = write_trained_run(trainer, configs, data, results, metrics, RECIPE, given)
    print_summary(
        f"pattern-based fine-tuning: {student_args.model_name_or_path}",
        {
            "student": describe_student(student_args, metrics),
            "training": f"{describe_training(metrics)}, gold label words of pattern {data.pattern.name}",
            "eval": f"{results.seconds:.1f} s, student without demonstrations",
        },
        results.metrics,
        paths,
    )
    return metrics


def main(argv=None) -> dict:
    configs, given = parse_config(CONFIG_TYPES, argv)
    with no_partial_output_dir(configs[-1].output_dir):
        return run_pattern_finetune(*configs, given=given)


if __name__ == "__main__":
    run_recipe(main)
