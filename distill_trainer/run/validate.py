"""The validate step: everything in a recipe that can be checked before any model weights are loaded.

    distill-trainer validate --config recipes/configs/paper/cd-full.yaml        # the command
    checked = validate_recipe("context_distill", student_args, data_args, config, given=given)  # first
    data = checked.data                                                          # the prepared data, reused

Parsing (`parsing.parse_config`) has already rejected unknown or misspelled keys (with the closest valid
name), values of the wrong type and out-of-range values, and returned the settings given explicitly
(`GivenSettings`, passed here as `given`; a config built in Python counts what differs from the defaults).
The checks change no config: what a recipe means to set (pattern_finetune's alpha=0) comes back as a new
config, `ValidatedRecipe.config`, which the recipe runs with.
On top of that, in order of cost:
1. the recipe's own rules (a teacher where one is needed, none where it would be ignored);
2. training settings that would train nothing or diverge at once (learning rate, batch size, epochs);
3. the output directory: a folder of its own (not empty, /, home or the project's), writable, and not
   holding an earlier run's results or checkpoints unless `overwrite_output_dir` or
   `resume_from_checkpoint` says what to do with them (a resumed run must also use the settings the
   checkpoint was trained with);
4. quantization without bitsandbytes;
5. the data: files, columns, labels, enough rows for the demonstrations and the training queries;
6. the models, from their tokenizers and configs only: label words (one first token each, no collisions),
   teacher/student vocabulary compatibility, causal-LM architecture, LoRA target modules and BitFit biases
   (on a weightless `meta`-device copy), and the longest prompt against the model's position limit.
Every problem is a `UsageError` whose message names the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill_trainer.errors import UsageError
from distill_trainer.models.loading import warn_if_bf16_is_slow
from distill_trainer.nli.data import NLIData, prepare_data
from distill_trainer.run.output_dir import check_output_location
from distill_trainer.run.runner import resolved_config
from distill_trainer.run.validate_models import check_models_and_prompts
from distill_trainer.teacher.teacher import check_self_quantization, check_self_teacher
from distill_trainer.training.checkpoints import parse_resume_setting, resolve_resume, run_results
from distill_trainer.training.parsing import GivenSettings, given_or_inferred

# settings a resumed run may change: where and how often it logs, saves and reports, not what it computes
RESUME_MAY_CHANGE = {
    "output_dir",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "logging_steps",
    "logging_strategy",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "per_device_eval_batch_size",
    "disable_tqdm",
    "report_to",
    "dataloader_num_workers",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "hub_revision",
    "run_name",
    "eval_strategy",
    "eval_steps",
}


@dataclass(frozen=True)
class RecipeRules:
    trains: bool
    teacher: str  # "required", "forbidden" (a teacher setting is a mistake) or "unused" (likewise)


RECIPES = {
    "icl_eval": RecipeRules(trains=False, teacher="unused"),
    "pattern_finetune": RecipeRules(trains=True, teacher="forbidden"),
    "context_distill": RecipeRules(trains=True, teacher="required"),
}


@dataclass
class ValidatedRecipe:
    """What validation found: the prepared data (reused by the recipe), the checkpoint a run resumes from,
    and one line per group of checks (printed by `distill-trainer validate`)."""

    recipe: str
    config: object = None  # the DistillationConfig the recipe runs with (pattern_finetune: alpha=0)
    data: NLIData | dict | None = None  # a reply recipe's rows (run/validate_replies.py)
    resume_from: str | None = None
    tokenizer: object = None  # the reply recipes check and keep it
    # a reply recipe's separate teacher's tokenizer when it differs from the student's (None: the same)
    teacher_tokenizer: object = None
    checks: list[tuple[str, str]] = field(default_factory=list)


def validate_recipe(
    recipe: str,
    student_args,
    data_args,
    config,
    *,
    given: GivenSettings | None = None,
    tokenizer=None,
    check_models: bool = True,
) -> ValidatedRecipe:
    """Run every check for `recipe` (see the module docstring); `given`: the settings given explicitly
    (`parse_config`), None for a config built in Python. With `check_models=False` (a caller that passes
    its own loaded model) the model checks are left out."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}")
    given = given_or_inferred(given, (student_args, data_args, config))
    rules, result = RECIPES[recipe], ValidatedRecipe(recipe)
    config = result.config = check_recipe_rules(recipe, rules, student_args, config, given)
    configs = (student_args, data_args, config)
    if rules.trains:
        check_training_settings(data_args, config)
    result.checks.append(("settings", f"{len(given)} given, types and ranges checked"))
    result.resume_from = check_output_dir(recipe, rules, configs, given)
    result.checks.append(("output_dir", describe_output(config.output_dir, result.resume_from)))
    if recipe == "context_distill":
        check_quantization(config)
        check_teacher_ensemble(data_args, config)
    result.data = prepare_data(data_args, with_train=rules.trains)
    result.checks.append(("data", _describe_data(result.data)))
    if check_models or tokenizer is not None:
        check_models_and_prompts(recipe, student_args, data_args, config, result, tokenizer, check_models)
    return result


def validate_method_files(methods: dict[str, tuple[str, list[str]]]) -> None:
    """Every method of a comparison, {name: (recipe, its command-line arguments)}, checked as its recipe
    will check it, before the first one runs: a mistake in the last method costs seconds, not the time of
    the methods before it. The first problem is raised, naming its method."""
    from distill_trainer.nli.arguments import DataArguments
    from distill_trainer.training.config import DistillationConfig, StudentArguments
    from distill_trainer.training.parsing import parse_config

    for name, (recipe, argv) in methods.items():
        try:
            configs, given = parse_config((StudentArguments, DataArguments, DistillationConfig), argv)
            validate_recipe(recipe, *configs, given=given)
        except UsageError as error:
            raise UsageError(f"method {name} ({recipe}): {error}") from None


def check_teacher_ensemble(data_args, config) -> None:
    """An ensembled or calibrated teacher is built from cached label-word outputs (teacher/ensemble.py)."""
    if data_args.demonstration_sets == 1 and data_args.teacher_calibration == "none":
        return
    if not config.teacher_output_cache or config.distill_vocab != "label_words":
        raise UsageError(
            f"demonstration_sets={data_args.demonstration_sets} / teacher_calibration="
            f"{data_args.teacher_calibration} build the teacher from cached label-word outputs; set "
            "teacher_output_cache: true and distill_vocab: label_words (or demonstration_sets: 1 and "
            "teacher_calibration: none)"
        )


# ---------------------------------------------------------------- 1-2. recipe rules, training settings


def check_teacher(student_args, config) -> str:
    """context_distill: a teacher is required; `self` needs a LoRA student."""
    teacher = config.teacher_model_name_or_path
    if not teacher:
        raise UsageError(
            "context_distill needs teacher_model_name_or_path: a model id or path, or 'self' with "
            "student_mode: lora; for gold labels only run recipes/pattern_finetune.py"
        )
    mode = student_args.student_mode
    check_self_teacher(
        teacher, student_is_lora=mode == "lora", fix=f"it needs student_mode: lora (got {mode})"
    )
    if config.alpha == 0:
        raise UsageError(
            "alpha: 0 trains on the gold labels only and never reads the teacher; set alpha > 0, "
            "or run recipes/pattern_finetune.py"
        )
    return teacher


def check_gold_labels_only(config, given: GivenSettings):
    """pattern_finetune: no teacher, and alpha 0 if given at all. Returns the config the recipe runs with:
    `config` itself, or a copy with alpha=0 (gold labels only) when alpha was left at its default."""
    if config.teacher_model_name_or_path:
        raise UsageError(
            "pattern_finetune trains on gold labels and reads no teacher; remove "
            "teacher_model_name_or_path, or run recipes/context_distill.py"
        )
    if "alpha" in given and config.alpha != 0:
        raise UsageError(
            f"pattern_finetune uses alpha=0 (gold labels only), got alpha={config.alpha}; "
            "remove alpha, or run recipes/context_distill.py"
        )
    return config if config.alpha == 0 else dataclasses.replace(config, alpha=0.0)


def check_recipe_rules(recipe: str, rules: RecipeRules, student_args, config, given: GivenSettings):
    """The recipe's own rules; returns the config the recipe runs with (see `check_gold_labels_only`)."""
    if rules.teacher == "required":
        check_teacher(student_args, config)
        return config
    if rules.teacher == "forbidden":
        config = check_gold_labels_only(config, given)
    # a teacher setting given to a recipe without a teacher would be silently ignored
    # (teacher_calibration is a data setting: icl_eval calibrates the model it evaluates with it)
    ignored = sorted(key for key in given if key.startswith("teacher_") and key != "teacher_calibration")
    if ignored:
        hint = (
            "to evaluate the teacher, set model_name_or_path to it"
            if recipe == "icl_eval"
            else "or run recipes/context_distill.py"
        )
        raise UsageError(
            f"{recipe} reads no teacher, so {', '.join(ignored)} would be ignored; remove "
            f"{'them' if len(ignored) > 1 else 'it'} ({hint})"
        )
    if recipe == "icl_eval" and parse_resume_setting(config.resume_from_checkpoint) is not None:
        raise UsageError(
            "icl_eval trains nothing, so there is no checkpoint to resume; remove resume_from_checkpoint"
        )
    return config


def check_training_settings(data_args, config) -> None:
    """Settings that parse but would train nothing, or diverge from the first step."""
    positive = {
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
    }
    for name in ("num_train_examples", "num_train_questions"):  # the data's limit, where it has one
        if getattr(data_args, name, None) is not None:
            positive[name] = getattr(data_args, name)
    for name, value in positive.items():
        if not value > 0:
            raise UsageError(f"{name} must be > 0 to train, got {value}; set a positive value")
    if config.max_steps <= 0 and not config.num_train_epochs > 0:
        raise UsageError(
            f"num_train_epochs={config.num_train_epochs} with no max_steps trains nothing; set "
            "num_train_epochs > 0 or max_steps >= 1"
        )
    for name in ("warmup_steps", "weight_decay", "max_grad_norm"):
        value = getattr(config, name, 0) or 0
        if value < 0:
            raise UsageError(f"{name} must be >= 0, got {value}")
    if config.learning_rate >= 1.0 and "adam" in str(getattr(config.optim, "value", config.optim)):
        raise UsageError(
            f"learning_rate={config.learning_rate} makes Adam move every weight by about that much "
            "per step and diverges at once; use a value like 1e-5 (full) or 1e-4 (LoRA)"
        )
    if config.bf16:
        warn_if_bf16_is_slow("bf16: true (mixed-precision training)")


# ---------------------------------------------------------------- 3. output directory


def check_output_dir(recipe: str, rules: RecipeRules, configs, given: GivenSettings) -> str | None:
    """Writable, and either fresh, or resumed / overwritten as the settings say. Returns the checkpoint a
    resumed run starts from."""
    config = configs[-1]
    output_dir = config.output_dir
    check_output_location(output_dir)
    resume = parse_resume_setting(config.resume_from_checkpoint)
    overwrite = getattr(config, "overwrite_output_dir", False)
    if resume is not None and overwrite:
        raise UsageError(
            "resume_from_checkpoint continues the run in output_dir and overwrite_output_dir starts it "
            "over; set only one of them"
        )
    if resume is not None:
        checkpoint = resolve_resume(resume, output_dir)
        check_resume_settings(output_dir, configs, recipe, given)
        return checkpoint
    found = run_results(output_dir)
    if not found or overwrite:
        return None
    checkpoints = [name for name in found if name.startswith("checkpoint-")]
    if rules.trains and checkpoints and "metrics.json" not in found:
        raise UsageError(
            f"output_dir {output_dir} holds checkpoints of an unfinished run (last: {checkpoints[-1]}); set "
            "resume_from_checkpoint: true to continue it, overwrite_output_dir: true to start over, or "
            "choose another output_dir"
        )
    raise UsageError(
        f"output_dir {output_dir} already holds a run's results ({', '.join(found[:4])}); set "
        "overwrite_output_dir: true to replace them, or choose another output_dir"
    )


def _same(a, b) -> bool:
    if a == b:
        return True
    try:  # YAML reads 1e-3 as text and 1.0e-3 as a number: compare numbers as numbers
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def check_resume_settings(output_dir, configs, recipe: str, given: GivenSettings) -> None:
    """A resumed run must compute what the interrupted one did: compare with its resolved_config.yaml."""
    path = Path(output_dir) / "resolved_config.yaml"
    if not path.is_file():
        return
    try:
        before = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        return
    now = resolved_config(configs, given)
    # a key the earlier file lacks was at its default then: a change only if this invocation sets it
    changed = [
        key
        for key in sorted(set(before) | set(now))
        if key not in RESUME_MAY_CHANGE
        and (key in before or key in given)
        and not _same(before.get(key), now.get(key))
    ]
    if changed:
        shown = ", ".join(f"{key}: {before.get(key)!r} -> {now.get(key)!r}" for key in changed[:3])
        raise UsageError(
            f"resume_from_checkpoint: the run in {output_dir} was trained with other settings ({shown}); "
            f"resume with its own settings (recipes/{recipe}.py --config {path} --resume_from_checkpoint "
            "true) or choose another output_dir"
        )


def describe_output(output_dir, resume_from) -> str:
    if resume_from:
        return f"{output_dir}: resumes from {Path(resume_from).name}"
    found = run_results(output_dir)
    return f"{output_dir}: {'an earlier run is overwritten' if found else 'writable, no earlier results'}"


# ---------------------------------------------------------------- 4. quantization


def check_quantization(config) -> None:
    quantization = config.teacher_quantization
    if quantization == "none":
        return
    check_self_quantization(config.teacher_model_name_or_path, quantization)
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(
            f"teacher_quantization: {quantization} needs bitsandbytes, which is not installed; "
            "pip install 'distill-trainer[quant]', or set teacher_quantization: none"
        )


# ---------------------------------------------------------------- 5. data


def _describe_data(data: NLIData) -> str:
    parts = [f"{data.task.name} pool {len(data.pool)} rows, pattern {data.pattern.name}"]
    if data.sampler.fixed is not None:
        parts.append(f"{len(data.sampler.fixed)} fixed demonstrations")
    if data.train_rows is not None:
        parts.append(f"{len(data.train_rows)} training queries")
    parts += [f"{name} {len(rows)} eval rows" for name, rows in data.eval_sets.items()]
    return ", ".join(parts)


def describe(result: ValidatedRecipe) -> str:
    width = max(len(name) for name, _ in result.checks)
    return "\n".join(f"  {name:<{width}}  {text}" for name, text in result.checks)
