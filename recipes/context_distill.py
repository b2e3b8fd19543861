"""Context distillation: a teacher reads k demonstrations + the query, the prompt-stripped student reads the
query alone and learns to match the teacher's answer distribution; then the student is evaluated
zero-shot on every evaluation task.

    accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/context_distill.py \
        --config recipes/configs/paper/cd-full.yaml [--student_mode lora] [--teacher_quantization 8bit]

Student: full | lora | bitfit. Teacher: any model id or path, quantized with teacher_quantization, or
`self` (a LoRA student's own base model with the adapters off). Writes the student, metrics.json,
predictions_<task>.jsonl and resolved_config.yaml into output_dir.

Everything that can be checked without loading a model is checked first (`distill-trainer validate
--config FILE` runs the same checks alone). With save_strategy: steps, a killed run continues where its
last checkpoint left it with --resume_from_checkpoint true (same settings, same numbers).
"""

from __future__ import annotations

import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
from transformers import AutoConfig

from distill_trainer import (
    ContextDistillationTrainer,
    DataArguments,
    DistillationConfig,
    StudentArguments,
    TwoViewCollator,
    parse_config,
)
from distill_trainer.memory.peak import MemoryTracker
from distill_trainer.models.loading import load_tokenizer, resolve_model_path
from distill_trainer.nli.data import build_view_dataset, first_token_ids, model_max_length
from distill_trainer.nli.task_evaluation import evaluate_on_tasks, uses_ensemble
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
from distill_trainer.teacher.ensemble import TeacherEnsembleViews, content_free_rows
from distill_trainer.teacher.teacher import is_self
from distill_trainer.training.parsing import GivenSettings, given_or_inferred

RECIPE = "context_distill"
CONFIG_TYPES = (StudentArguments, DataArguments, DistillationConfig)


def view_datasets(tokenizer, teacher_tokenizer, data, data_args, max_length):
    """The training rows' two views with the teacher's demonstrations, and, for a teacher averaged over
    more demonstration sets and/or calibrated, the views of its other members (for the output cache)."""

    def views(rows, sampler):
        return build_view_dataset(
            tokenizer,
            rows,
            data.pattern,
            sampler,
            max_length,
            data_args.drop_demonstrations_to_fit,
            teacher_tokenizer,
        )

    ensemble = None
    if uses_ensemble(data_args):
        calibrated = data_args.teacher_calibration == "content_free"
        ensemble = TeacherEnsembleViews(
            members=[views(data.train_rows, sampler) for sampler in data.samplers[1:]],
            content_free=[views(content_free_rows(), s) for s in data.samplers] if calibrated else None,
            calibration=data_args.teacher_calibration,
        )
    return views(data.train_rows, data.sampler), ensemble


def write_run(trainer, configs, given, data, results, metrics) -> None:
    """Results files, the model card and recipe beside the weights (pushed when push_to_hub is set), and
    the summary printed at the end."""
    student_args, data_args, config = configs
    teacher = config.teacher_model_name_or_path
    ensemble = {
        "demonstration_sets": data_args.demonstration_sets,
        "teacher_calibration": data_args.teacher_calibration,
    }
    paths = write_trained_run(trainer, configs, data, results, metrics, RECIPE, given, teacher=ensemble)
    resampled = " resampled per query" if data_args.resample_demonstrations else ""
    print_summary(
        f"context distillation: {student_args.model_name_or_path} <- {teacher}",
        {
            "student": describe_student(student_args, metrics),
            "teacher": f"{teacher} (quantization {metrics['teacher_quantization']}), pattern "
            f"{data.pattern.name}, k={data_args.k} demonstrations{resampled} x "
            f"{data_args.demonstration_sets} set(s), calibration {data_args.teacher_calibration}",
            "loss": f"{config.alpha:g} x {config.loss} (T={config.temperature:g}, {config.distill_vocab} "
            f"vocabulary) + {1 - config.alpha:g} x cross-entropy",
            "training": describe_training(metrics),
            "eval": f"{results.seconds:.1f} s, student without demonstrations",
        },
        results.metrics,
        paths,
    )


def run_context_distill(
    student_args: StudentArguments,
    data_args: DataArguments,
    config: DistillationConfig,
    callbacks=None,
    given: GivenSettings | None = None,
) -> dict:
    """`given`: the settings given explicitly (`parse_config`); None for configs built in Python."""
    # ------------------------------------------------------------ validate (no model loaded yet) and data
    given = given_or_inferred(given, (student_args, data_args, config))
    data = validate_recipe(RECIPE, student_args, data_args, config, given=given).data
    teacher = config.teacher_model_name_or_path
    self_teacher = is_self(teacher)
    teacher_path = student_args.model_name_or_path if self_teacher else teacher

    # ------------------------------------------------------------ tokenizers and the teacher's prompts
    tokenizer = load_tokenizer(student_args.model_name_or_path)
    teacher_tokenizer = tokenizer if self_teacher else load_tokenizer(teacher_path)
    label_ids = first_token_ids(tokenizer, data.pattern)
    teacher_label_ids = first_token_ids(teacher_tokenizer, data.pattern)
    max_length = model_max_length(AutoConfig.from_pretrained(resolve_model_path(teacher_path)), data_args)

    train_dataset, ensemble = view_datasets(tokenizer, teacher_tokenizer, data, data_args, max_length)

    # ------------------------------------------------------------ student, and the teacher inside the trainer
    # peaks per phase: student load, teacher load and output-cache pass (when the cache has to be built),
    # training (with the teacher resident unless its outputs are cached), evaluation
    tracker = MemoryTracker()
    with tracker.phase("student_load"):
        student = load_student(student_args, seed=config.seed)
    trainer = ContextDistillationTrainer(
        model=student,
        args=config,
        teacher=teacher,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        label_token_ids=label_ids,
        teacher_label_token_ids=teacher_label_ids,
        teacher_tokenizer=teacher_tokenizer,
        callbacks=callbacks,
        memory_tracker=tracker,
        teacher_ensemble=ensemble,
    )

    # ------------------------------------------------------------ distill
    # (resume_from_checkpoint: true|path resumes)
    write_resolved_config(config.output_dir, (student_args, data_args, config), RECIPE, given)
    with tracker.phase("train"):
        train_result = trainer.train()
    save_student(trainer, config.output_dir)  # the weights are safe on disk before the evaluation starts

    # ------------------------------------------------------------ evaluate the student, no demonstrations
    with tracker.phase("eval"):
        results = evaluate_on_tasks(trainer.model, tokenizer, data, config, data_args, demonstrations=None)

    # ------------------------------------------------------------ report
    metrics = nli_metrics(
        RECIPE,
        f"cd_{student_args.student_mode}",
        student_args.model_name_or_path,
        data,
        results,
        tracker,
        student_mode=student_args.student_mode,
        teacher=teacher,
        teacher_quantization="none" if self_teacher else config.teacher_quantization,
        k=data_args.k,
        demonstration_seed=data_args.demonstration_seed,
        resample_demonstrations=data_args.resample_demonstrations,
        demonstration_sets=data_args.demonstration_sets,
        teacher_calibration=data_args.teacher_calibration,
        loss=config.loss,
        alpha=config.alpha,
        temperature=config.temperature,
        distill_vocab=config.distill_vocab,
        **training_metrics(trainer, train_result, len(train_dataset)),
        teacher_output_cache=trainer.teacher_output_cache_info,
    )
    write_run(trainer, (student_args, data_args, config), given, data, results, metrics)
    return metrics


def main(argv=None) -> dict:
    configs, given = parse_config(CONFIG_TYPES, argv)
    with no_partial_output_dir(configs[-1].output_dir):
        return run_context_distill(*configs, given=given)


if __name__ == "__main__":
    run_recipe(main)
