"""Compare every method on one model and one data setting: in-context learning (the teacher with k
demonstrations, the student zero-shot), pattern-based fine-tuning (full, LoRA) and context distillation
(full, LoRA, LoRA with `teacher: self`, LoRA with an 8-bit teacher), on in-domain MNLI and out-of-domain
HANS, with peak memory and time per method.

    ./run.sh                       # = python recipes/compare.py --config recipes/configs/embedded/compare.yaml
    ./run.sh --quick               # the same, smaller (see quick_* in CompareArguments)
    python recipes/compare.py --config recipes/configs/embedded/compare.yaml --methods icl_teacher cd_lora

Every method is one run of an existing recipe (icl_eval, pattern_finetune, context_distill) with a
resolved config written to results/<run_name>/<method>/method.yaml, so any row can be rerun alone. By
default each method runs in a fresh process: its peak memory (the process's peak resident set) is then
its own, not mixed with the methods before it. All methods read the same training queries and the same
evaluation rows (the data settings are shared). Writes summary.json, summary.md, plots and each method's
predictions into results/<run_name>/, and points results/latest at it.
"""

# no `from __future__ import annotations`: CompareArguments must be a dataclass even when this file is
# loaded by path (as the config tests do), and string annotations would need it registered in sys.modules
import dataclasses
import importlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill_trainer import DataArguments, DistillationConfig, StudentArguments, UsageError, parse_config
from distill_trainer.report import load_method_result, print_table, write_report
from distill_trainer.runner import run_recipe

RECIPES_DIR = Path(__file__).resolve().parent

# method -> (recipe, overrides). "teacher" means the configured teacher; lr "full"/"lora" the learning rate
# of that student mode
METHODS = {
    "icl_teacher": ("icl_eval", {"model": "teacher"}),
    "zero_shot": ("icl_eval", {"k": 0}),
    "icl_student": ("icl_eval", {}),
    "pbft_full": ("pattern_finetune", {"student_mode": "full"}),
    "pbft_lora": ("pattern_finetune", {"student_mode": "lora"}),
    "cd_full": ("context_distill", {"student_mode": "full"}),
    "cd_lora": ("context_distill", {"student_mode": "lora"}),
    "cd_bitfit": ("context_distill", {"student_mode": "bitfit"}),
    "cd_lora_self": ("context_distill", {"student_mode": "lora", "teacher": "self"}),
    "cd_lora_8bit": ("context_distill", {"student_mode": "lora", "teacher_quantization": "8bit"}),
    "cd_lora_4bit": ("context_distill", {"student_mode": "lora", "teacher_quantization": "4bit"}),
    # the paper's memory reference: fine-tuning the teacher itself (LoRA; a few steps, memory only)
    "pbft_teacher_lora": ("pattern_finetune", {"student_mode": "lora", "model": "teacher", "memory_only": True}),
}
DEFAULT_METHODS = [m for m in METHODS if m not in ("cd_lora_4bit", "pbft_teacher_lora")]


@dataclass
class CompareArguments:
    """Which methods to compare, where the results go, and the per-mode learning rates."""

    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS),
                               metadata={"help": f"Methods to run, in order: {', '.join(METHODS)}."})
    results_dir: str = field(default="results", metadata={
        "help": "Runs go to results_dir/run_name (run_name default: a timestamp); `latest` links the newest."})
    full_learning_rate: float = field(default=3e-5, metadata={"help": "Learning rate of full-weight students."})
    lora_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of LoRA students."})
    bitfit_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of BitFit students."})
    memory_only_steps: int = field(default=3, metadata={
        "help": "Training steps of memory-only methods (pbft_teacher_lora), which are not evaluated."})
    fresh_process_per_method: bool = field(
        default=True, metadata={"help": "Run each method in its own process (clean peak memory per method)."})
    quick: bool = field(default=False, metadata={"help": "A few-minute version: the quick_* sizes below."})
    quick_num_train_examples: int = field(default=32, metadata={"help": "Training queries with --quick."})
    quick_num_eval_examples: int = field(default=100, metadata={"help": "MNLI evaluation rows with --quick."})
    quick_hans_per_subcase: int = field(default=2, metadata={"help": "HANS rows per subcase with --quick."})
    quick_num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs with --quick."})
    quick_methods: list[str] = field(default=None, metadata={"help": "Methods with --quick; default: methods."})

    def __post_init__(self):
        unknown = [m for m in [*self.methods, *(self.quick_methods or [])] if m not in METHODS]
        if unknown:
            raise UsageError(f"unknown method(s) {unknown}; choose from: {', '.join(METHODS)}")
        if not self.methods:
            raise UsageError("methods is empty; name at least one method")


CONFIG_TYPES = (StudentArguments, DataArguments, CompareArguments, DistillationConfig)
TRAINING_FIELDS = {f.name for f in dataclasses.fields(DistillationConfig)}


# ---------------------------------------------------------------- one method's config


def method_config(name: str, student_args, data_args, compare, config, output_dir: Path) -> tuple[str, dict]:
    """The recipe that runs `name` and its complete YAML mapping (loadable with that recipe's --config)."""
    recipe, overrides = METHODS[name]
    student = {f.name: getattr(student_args, f.name) for f in dataclasses.fields(student_args)}
    data = {f.name: getattr(data_args, f.name) for f in dataclasses.fields(data_args)}
    # the training keys the user set (YAML or command line), not TrainingArguments' 150 defaults
    training = {k: v for k, v in config.recipe.items() if k in TRAINING_FIELDS}
    training["output_dir"] = str(output_dir)
    teacher = config.teacher_model_name_or_path
    if overrides.get("model") == "teacher":
        if not teacher:
            raise UsageError(f"method {name} needs teacher_model_name_or_path; set it or drop the method")
        student["model_name_or_path"] = teacher
        student["dtype"] = config.teacher_dtype
    if overrides.get("memory_only"):
        training.update(max_steps=compare.memory_only_steps, save_strategy="no")
        data["evaluate_after_training"] = False
    if recipe == "icl_eval":
        if overrides.get("k") == 0:
            data.update(k=0, demonstration_ids=None)
        for key in [k for k in training if k.startswith("teacher_") or k in ("alpha", "learning_rate")]:
            training.pop(key)
    else:
        student["student_mode"] = overrides["student_mode"]
        training["learning_rate"] = getattr(compare, f"{overrides['student_mode']}_learning_rate")
        if recipe == "pattern_finetune":  # gold labels only: no teacher, alpha 0
            for key in [k for k in training if k.startswith("teacher_") or k == "alpha"]:
                training.pop(key)
        else:
            if not teacher:
                raise UsageError(f"method {name} needs teacher_model_name_or_path; set it or drop the method")
            training["teacher_model_name_or_path"] = overrides.get("teacher", teacher)
            training["teacher_quantization"] = overrides.get("teacher_quantization", "none")
    values = {**student, **data, **training}
    return recipe, {k: v for k, v in values.items() if v is not None}


def write_method_yaml(recipe: str, values: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# python recipes/{recipe}.py --config {path}\n"
    path.write_text(header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True), encoding="utf-8")


# ---------------------------------------------------------------- running a method


def run_in_fresh_process(recipe: str, config_path: Path) -> int:
    """Run the recipe in a child process; returns its peak resident set in bytes (Linux/macOS rusage)."""
    command = [sys.executable, str(RECIPES_DIR / f"{recipe}.py"), "--config", str(config_path)]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error")}
    child = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise UsageError(f"{recipe} failed (exit status {child.returncode}) with config {config_path}; "
                         "its error is printed above")
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_in_this_process(recipe: str, config_path: Path, tracker, name: str) -> int:
    """Run the recipe here; the peak is this process's during the method (earlier methods' leftovers count)."""
    # `recipes.<name>` when this module was imported as part of the package, the sibling script otherwise
    module = importlib.import_module(f"{__package__}.{recipe}" if __package__ else recipe)
    with tracker.phase(name):
        module.main(["--config", str(config_path)])
    return tracker.peak(name)["cpu_rss"]


# ---------------------------------------------------------------- main


def apply_quick(data_args, compare, config) -> None:
    data_args.num_train_examples = compare.quick_num_train_examples
    data_args.num_eval_examples = compare.quick_num_eval_examples
    data_args.hans_per_subcase = compare.quick_hans_per_subcase
    config.recipe["num_train_epochs"] = compare.quick_num_train_epochs


def link_latest(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name, target_is_directory=True)


def main(argv=None) -> dict:
    student_args, data_args, compare, config = parse_config(CONFIG_TYPES, argv)
    if compare.quick:
        apply_quick(data_args, compare, config)
    # run_name is TrainingArguments' own field: the name of the run, here its folder
    run_name = config.recipe.get("run_name") or time.strftime("embedded-%Y%m%d-%H%M%S") + ("-quick" if compare.quick else "")
    run_dir = Path(compare.results_dir) / run_name

    # ------------------------------------------------------------ one resolved config per method
    plan = {}
    for name in compare.methods:
        recipe, values = method_config(name, student_args, data_args, compare, config, run_dir / name)
        write_method_yaml(recipe, values, run_dir / name / "method.yaml")
        plan[name] = recipe

    # ------------------------------------------------------------ run them, one after another
    tracker = None
    if not compare.fresh_process_per_method:
        from distill_trainer.memory import MemoryTracker

        tracker = MemoryTracker(device="cpu")
    results, start = [], time.perf_counter()
    for number, (name, recipe) in enumerate(plan.items(), 1):
        print(f"\n==== [{number}/{len(plan)}] {name} ({recipe}) " + "=" * 60, flush=True)
        began = time.perf_counter()
        config_path = run_dir / name / "method.yaml"
        if compare.fresh_process_per_method:
            peak = run_in_fresh_process(recipe, config_path)
        else:
            peak = run_in_this_process(recipe, config_path, tracker, name)
        results.append(load_method_result(name, run_dir / name, peak, time.perf_counter() - began))

    # ------------------------------------------------------------ report
    settings = {
        "student": student_args.model_name_or_path, "teacher": config.teacher_model_name_or_path,
        "pattern": data_args.pattern, "k": data_args.k, "demonstration_ids": data_args.demonstration_ids,
        "demonstration_seed": data_args.demonstration_seed, "num_train_examples": data_args.num_train_examples,
        "num_train_epochs": config.recipe.get("num_train_epochs", config.num_train_epochs),
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "full_learning_rate": compare.full_learning_rate, "lora_learning_rate": compare.lora_learning_rate,
        "lora_r": student_args.lora_r, "num_eval_examples": data_args.num_eval_examples,
        "hans_per_subcase": data_args.hans_per_subcase, "quick": compare.quick,
        "memory": "peak resident set of each method's own process" if compare.fresh_process_per_method
        else "peak resident set during each method, in one process (earlier methods' leftovers included)",
        "total_seconds": round(time.perf_counter() - start, 1),
    }
    summary = write_report(run_dir, results, settings)
    link_latest(run_dir)
    print_table(summary, run_dir)
    return summary


if __name__ == "__main__":
    run_recipe(main)
