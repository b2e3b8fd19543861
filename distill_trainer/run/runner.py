"""Running a recipe: the student it trains, evaluation over every task, the files it writes (metrics,
predictions, resolved config), the one-screen summary, and a `UsageError` turned into one line on stderr
with exit status 2. The rows it reads come from `nli/data.py`.

    results = evaluate_on_tasks(model, tokenizer, data, config, data_args, demonstrations=None)
    write_outputs(
        config.output_dir, metrics, results.predictions, [student_args, data_args, config], "icl_eval"
    )
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import torch
import yaml

from distill_trainer.errors import UsageError
from distill_trainer.integrity import DiskFullError
from distill_trainer.integrity import write_text_atomically as _write_atomically
from distill_trainer.models.loading import count_parameters, load_causal_lm, prepare_student
from distill_trainer.nli.task_evaluation import is_main_process
from distill_trainer.run.interrupt import default_program, forget_run, interruptible, note_run, resume_command
from distill_trainer.run.output_dir import OutputLock, check_output_location
from distill_trainer.training.checkpoints import run_results
from distill_trainer.training.parsing import GivenSettings, given_or_inferred

# training settings worth recording in a resolved config even when the recipe left them at their default
TRAINING_KEYS = (
    "output_dir",
    "seed",
    "data_seed",
    "full_determinism",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "weight_decay",
    "max_grad_norm",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "dataloader_drop_last",
    "bf16",
    "fp16",
    "use_cpu",
    "save_strategy",
    "save_steps",
    "save_total_limit",
)
# how one invocation treats output_dir, not a setting of the run: a rerun from the resolved config starts
# afresh
INVOCATION_KEYS = ("resume_from_checkpoint", "overwrite_output_dir")


def run_recipe(main, argv=None) -> None:
    """Run `main(argv)`; a user mistake (or a full disk) prints `error: ...` on stderr and exits with status
    2; Ctrl-C prints what was kept and the command that resumes, and exits with status 130."""
    with interruptible(argv):
        try:
            main(argv)
        except UsageError as error:
            message = str(error)
            if isinstance(error, DiskFullError):
                command = resume_command(default_program(), list(sys.argv[1:] if argv is None else argv))
                message += f"; then resume with: {command}"
            print(f"error: {message}", file=sys.stderr)
            sys.exit(2)


# ---------------------------------------------------------------- student and training


def load_student(student_args, seed: int | None = None):
    """The student model, made trainable as `student_mode` asks (full, LoRA or BitFit).

    `seed` seeds the random initialisation of what is added (LoRA's A matrices): the Trainer seeds only
    when it is built, after the student, so without it two runs of one config start from different adapters.
    """
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    # BitFit on an architecture without biases trains added, zero-initialised ones (see load_causal_lm)
    model = load_causal_lm(
        student_args.model_name_or_path,
        dtype=student_args.dtype,
        add_biases=student_args.student_mode == "bitfit",
    )
    return prepare_student(
        model,
        student_args.student_mode,
        lora_r=student_args.lora_r,
        lora_alpha=student_args.lora_alpha,
        lora_dropout=student_args.lora_dropout,
        lora_target_modules=student_args.lora_target_modules,
    )


def training_metrics(trainer, train_result, num_examples: int) -> dict:
    """Parameter counts, the training run's figures and its log history, for metrics.json."""
    trainable, total = count_parameters(trainer.model)
    return {
        "parameters": {"trainable": trainable, "total": total},
        "train": {
            "num_examples": num_examples,
            "global_step": train_result.global_step,
            "train_loss": train_result.training_loss,
            **train_result.metrics,
        },
        "log_history": trainer.state.log_history,
    }


# ---------------------------------------------------------------- outputs


def nli_metrics(recipe: str, method: str, model: str, data, results, tracker, **fields) -> dict:
    """A NLI recipe's metrics.json: who ran on what first, the recipe's own `fields`, then what every
    recipe reports (evaluation, data, memory), so that the comparison reads every method alike.
    `eval_seconds` in `fields` overrides the results' own (a run over several seeds sums them)."""
    return {
        "recipe": recipe,
        "method": method,
        "model": model,
        "task": data.task.name,
        "pattern": data.pattern.name,
        "label_words": list(data.pattern.label_words),
        **{k: v for k, v in fields.items() if k != "eval_seconds"},
        "eval": results.metrics,
        "eval_seconds": fields.get("eval_seconds", round(results.seconds, 2)),
        "data": data.data_report(),
        "memory": tracker.as_dict(),
    }


def resolved_config(configs, given: GivenSettings | None = None) -> dict:
    """Every field of the recipe's own dataclasses, plus the training settings that shape the run and
    those `given` explicitly (`parse_config`; None for configs built in Python).

    Loadable again with `--config` (None values are left out: they mean "the default")."""
    from transformers import TrainingArguments

    given = given_or_inferred(given, configs)
    values = {}
    for obj in configs:
        if isinstance(obj, TrainingArguments):  # ~150 fields: keep the distillation, usual and given ones
            as_dict = obj.to_dict()
            inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
            own = [f.name for f in dataclasses.fields(obj) if f.name not in inherited]
            for key in (*TRAINING_KEYS, *own, *given):
                # as the user wrote it where that is plain YAML (report_to: none, which to_dict turns into [])
                plain = key in given and type(given[key]) in (str, int, float, bool, list)
                if plain or key in as_dict:
                    values[key] = given[key] if plain else as_dict[key]
        else:
            values.update({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init})
    return {k: v for k, v in values.items() if v is not None and k not in INVOCATION_KEYS}


def write_resolved_config(output_dir, configs, recipe: str, given: GivenSettings | None = None) -> Path:
    """resolved_config.yaml: the seed and every setting of the run, loadable with --config (main process).

    Recipes write it when training starts too, so an interrupted run's settings are on disk and its
    resumption can be checked against them."""
    import transformers

    path = Path(output_dir) / "resolved_config.yaml"
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# resolved configuration of recipes/{recipe}.py (torch {torch.__version__}, transformers "
        f"{transformers.__version__}); rerun with:\n"
        f"# accelerate launch --config_file recipes/configs/accelerate/cpu.yaml recipes/{recipe}.py "
        f"--config {path}\n"
    )
    _write_atomically(
        path, header + yaml.safe_dump(resolved_config(configs, given), sort_keys=False, allow_unicode=True)
    )
    return path


@contextlib.contextmanager
def no_partial_output_dir(output_dir):
    """The whole run, in an output_dir that is safe to write (`output_dir.check_output_location`) and
    locked against a second run (`OutputLock`, main process). A run that fails before it has results
    leaves no output_dir it created behind; one that fails later keeps what it made (a checkpoint to
    resume from, the saved student); an output_dir that existed before is left as it is."""
    check_output_location(output_dir)
    existed = Path(output_dir).exists()
    lock = OutputLock(output_dir).acquire() if is_main_process() else None  # fails at once when held
    note_run(output_dir)  # what Ctrl-C describes
    try:
        yield
        forget_run(output_dir)
    except BaseException:
        if not existed and lock is not None and Path(output_dir).is_dir() and not run_results(output_dir):
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()


def write_trained_run(
    trainer, configs, data, results, metrics: dict, recipe: str, given: GivenSettings | None = None, **card
) -> list[Path]:
    """A trained NLI student's results (`write_outputs`), then its model card (with these results) and
    recipe beside the saved weights, pushed when push_to_hub is set; `card`: the recipe's own card fields."""
    from distill_trainer.memory.peak import peak_mib_by_phase
    from distill_trainer.report.hub import ship_student
    from distill_trainer.report.model_card import card_for_recipe

    student_args, _, config = configs
    paths = write_outputs(config.output_dir, metrics, results.predictions, configs, recipe, given)
    student_card = card_for_recipe(
        student_args,
        config,
        results.metrics,
        data.task.name,
        memory=peak_mib_by_phase(metrics["memory"]),
        pattern=data.pattern,
        data_reports=data.reports,
        **card,
    )
    recipe_values = resolved_config(configs, given)
    ship_student(trainer, config.output_dir, card=student_card, recipe=recipe_values, write_weights=False)
    return paths


def write_outputs(
    output_dir,
    metrics: dict,
    predictions: dict[str, list[dict]],
    configs,
    recipe: str,
    given: GivenSettings | None = None,
) -> list[Path]:
    """metrics.json, predictions_<task>.jsonl and resolved_config.yaml (main process only)."""
    output_dir = Path(output_dir)
    paths = [
        output_dir / "metrics.json",
        *(output_dir / f"predictions_{name}.jsonl" for name in predictions),
        output_dir / "resolved_config.yaml",
    ]
    if not is_main_process():
        return paths
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, records in predictions.items():
        _write_atomically(
            output_dir / f"predictions_{name}.jsonl", "".join(json.dumps(r) + "\n" for r in records)
        )
    write_resolved_config(output_dir, configs, recipe, given)
    # metrics last: its presence means the run finished
    _write_atomically(output_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return paths


# ---------------------------------------------------------------- summary


def _fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _row(name: str, m: dict) -> str:
    per_label = "/".join(_fmt(v, ".2f") for v in m["per_label_accuracy"].values())
    first_label = next(iter(m["predicted_label_balance"].values()))
    accuracy = f"{_fmt(m['accuracy'])}±{_fmt(m['accuracy_stderr'])}"
    return (
        f"{name:<22}{m['n']:>6}  {accuracy:<13}{per_label:<12}{_fmt(m.get('vocab_accuracy')):<10}"
        f"{_fmt(m['macro_f1']):<9}{_fmt(m['auc']):<7}{first_label:>6.0%}"
    )


def format_summary(title: str, header: dict[str, str], eval_metrics: dict[str, dict], paths) -> str:
    """One screen: what ran, the metrics per task (and per HANS heuristic), where the files are."""
    lines = [f"==== {title} " + "=" * max(0, 92 - len(title)), *(f"{k:<10}{v}" for k, v in header.items())]
    lines.append(
        f"{'task':<22}{'n':>6}  {'accuracy':<13}{'per label':<12}{'vocab acc':<10}{'macro-F1':<9}"
        f"{'AUC':<7}{'pred. label 0':>13}"
    )
    for name, m in eval_metrics.items():
        lines.append(_row(name, m))
        for group, gm in m.get("per_heuristic", {}).items():
            lines.append(_row(f"  {group}", gm))
    lines.append(f"{'outputs':<10}" + "  ".join(str(p) for p in paths))
    return "\n".join(lines)


def describe_student(student_args, metrics: dict) -> str:
    parameters = metrics["parameters"]
    return (
        f"{student_args.model_name_or_path} ({student_args.student_mode}; {parameters['trainable']:,} of "
        f"{parameters['total']:,} parameters trainable)"
    )


def describe_training(metrics: dict) -> str:
    train = metrics["train"]
    return (
        f"{train['num_examples']} examples, {train['global_step']} steps, {train['train_runtime']:.1f} s, "
        f"mean loss {train['train_loss']:.4f}"
    )


def print_summary(title: str, header: dict[str, str], eval_metrics: dict[str, dict], paths) -> None:
    if is_main_process():
        print("\n" + format_summary(title, header, eval_metrics, paths), flush=True)
