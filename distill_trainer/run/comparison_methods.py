"""One comparison method's config: the recipe that runs it and its complete YAML mapping (every setting
resolved), written to <run>/<method>/method.yaml so that any row can be rerun alone.

    recipe, values = method_config("cd_lora", student_args, data_args, compare, config, run_dir / "cd_lora")
    write_method_yaml(recipe, values, run_dir / "cd_lora" / "method.yaml")
    recipe, values = read_method_yaml(run_dir / "cd_lora")     # its header names the recipe
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from distill_trainer.errors import UsageError
from distill_trainer.integrity import write_text_atomically
from distill_trainer.run.comparison_arguments import METHODS
from distill_trainer.run.interrupt import resume_flags
from distill_trainer.training.config import DistillationConfig
from distill_trainer.training.parsing import GivenSettings

TRAINING_FIELDS = {f.name for f in dataclasses.fields(DistillationConfig)}


def method_config(
    name: str, student_args, data_args, compare, config, output_dir: Path, given: GivenSettings
) -> tuple[str, dict]:
    """The recipe that runs `name` and its complete YAML mapping (loadable with that recipe's --config);
    `given`: the settings the comparison was given (`parse_config`)."""
    recipe, overrides = METHODS[name]
    student = {f.name: getattr(student_args, f.name) for f in dataclasses.fields(student_args)}
    data = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(data_args)}
    # the training keys the user set (YAML or command line), not TrainingArguments' 150 defaults
    training = {k: v for k, v in given.items() if k in TRAINING_FIELDS}
    training["output_dir"] = str(output_dir)
    teacher = config.teacher_model_name_or_path
    if overrides.get("model") == "teacher":
        if not teacher:
            raise UsageError(f"method {name} needs teacher_model_name_or_path; set it or drop the method")
        student["model_name_or_path"] = teacher
        student["dtype"] = config.teacher_dtype
        if recipe == "icl_eval" and compare.teacher_eval_tasks:
            data["eval_tasks"] = list(compare.teacher_eval_tasks)
    probe = name in compare.probe_methods and recipe != "icl_eval"
    if overrides.get("memory_only") or probe:
        training.update(max_steps=compare.memory_only_steps, save_strategy="no")
        data["evaluate_after_training"] = False
    data.update(overrides.get("data", {}))
    if recipe == "icl_eval" and overrides.get("model") != "teacher":
        # demonstration sets and calibration are the teacher's: a student is scored on the plain prompt
        data.update(demonstration_sets=1, teacher_calibration="none")
        if compare.student_eval_dtype:
            student["dtype"] = compare.student_eval_dtype
    if recipe == "icl_eval":
        if overrides.get("k") == 0:
            data.update(k=0, demonstration_ids=None)
        for key in [k for k in training if k.startswith("teacher_") or k in ("alpha", "learning_rate")]:
            training.pop(key)
    else:
        student["student_mode"] = overrides["student_mode"]
        if (
            overrides["student_mode"] == "lora"
            and compare.lora_base_dtype
            and overrides.get("model") != "teacher"
        ):
            student["dtype"] = compare.lora_base_dtype
        training["learning_rate"] = compare.method_learning_rates().get(
            name, getattr(compare, f"{overrides['student_mode']}_learning_rate")
        )
        if recipe == "pattern_finetune":  # gold labels only: no teacher, alpha 0
            for key in [k for k in training if k.startswith("teacher_") or k == "alpha"]:
                training.pop(key)
        else:
            if not teacher:
                raise UsageError(f"method {name} needs teacher_model_name_or_path; set it or drop the method")
            training["teacher_model_name_or_path"] = overrides.get("teacher", teacher)
            training["teacher_quantization"] = overrides.get("teacher_quantization", "none")
            if "teacher_dtype" in overrides:
                training["teacher_dtype"] = overrides["teacher_dtype"]
            if probe and (training["teacher_quantization"] != "none" or "teacher_dtype" in overrides):
                # the probe measures the teacher, quantized or in another dtype, resident beside the
                # student as it trains
                training["teacher_output_cache"] = False
    values = {**student, **data, **training}
    return recipe, {k: v for k, v in values.items() if v is not None}


def method_arguments(recipe: str, method_dir: Path) -> tuple[str, list[str]]:
    """(recipe, its arguments): the method's file, and what continues an interrupted invocation."""
    return recipe, ["--config", str(method_dir / "method.yaml"), *resume_flags(method_dir)]


def read_method_yaml(method_dir: Path) -> tuple[str, dict]:
    """(recipe, values) of the file `write_method_yaml` wrote: its header names the recipe."""
    text = (method_dir / "method.yaml").read_text(encoding="utf-8")
    recipe = Path(text.splitlines()[0].split()[2]).stem
    return recipe, yaml.safe_load(text)


def write_method_yaml(recipe: str, values: dict, path: Path) -> None:
    header = f"# python recipes/{recipe}.py --config {path}\n"
    write_text_atomically(path, header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True))
