"""Compare every method on one model pair and one data setting, on in-domain MNLI and out-of-domain HANS,
with peak memory (per phase) and time per method:

- in-context learning: the teacher with k demonstrations (icl_teacher), the student zero-shot (zero_shot)
  and with the same k demonstrations (icl_student);
- pattern-based fine-tuning of the student on gold labels: full, LoRA (pbft_full, pbft_lora);
- context distillation from the teacher: full, LoRA, BitFit (cd_full, cd_lora, cd_bitfit), LoRA from an
  8-bit (or 4-bit) teacher (cd_lora_8bit, cd_lora_4bit), LoRA with the student as its own teacher
  (cd_lora_self);
- the memory reference: LoRA fine-tuning of the teacher itself for a few steps (pbft_teacher_lora), beside
  the analytic estimate of its full fine-tuning.

    ./run.sh             # = python recipes/compare.py --config recipes/configs/embedded/compare.yaml
    ./run.sh --quick     # the same, smaller (see quick_* in CompareArguments)
    python recipes/compare.py --config recipes/configs/embedded/compare.yaml --methods icl_teacher cd_lora

Every method is one run of an existing recipe (icl_eval, pattern_finetune, context_distill) with a
resolved config written to results/<run_name>/<method>/method.yaml, so any row can be rerun alone. By
default each method runs in a fresh process: its peak memory is then its own, not mixed with the
methods before it. All methods read the same training queries and the same evaluation rows (the data
settings are shared); with teacher_output_cache, the teacher's answers on the training queries are
computed once and read by every CD method and by later runs. Writes summary.json, summary.md (table,
HANS per heuristic, findings with 95% intervals, memory against fine-tuning the teacher, sizes on disk),
plots and each method's predictions into results/<run_name>/, and points results/latest at it.
"""

# no `from __future__ import annotations`: CompareArguments must be a dataclass even when this file is
# loaded by path (as the config tests do), and string annotations would need it registered in sys.modules
import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distill_trainer import DataArguments, DistillationConfig, StudentArguments, UsageError, parse_config
from distill_trainer.code_digest import code_record
from distill_trainer.integrity import write_text_atomically
from distill_trainer.report.columns import method_memory
from distill_trainer.report.estimates import add_memory_estimates
from distill_trainer.report.tables import load_method_result, print_table, write_report
from distill_trainer.run.interrupt import CHILD_ENV, forget_run, note_run, resume_flags
from distill_trainer.run.method_reuse import (
    find_earlier_result,
    finished_here,
    method_fingerprint,
    record_fingerprint,
    recorded_costs,
    reuse_result,
    why_rerun,
)
from distill_trainer.run.progress import RunProgress, expected_seconds, format_duration
from distill_trainer.run.runner import run_recipe
from distill_trainer.run.validate import validate_method_files
from distill_trainer.teacher.teacher import is_self
from distill_trainer.training.config import DTYPES
from distill_trainer.training.parsing import GivenSettings

RECIPES_DIR = Path(__file__).resolve().parent
# the scripts whose code makes a comparison's table (beside the library): this one and its methods' recipes
COMPARISON_SCRIPTS = [
    f"recipes/{name}.py" for name in ("compare", "icl_eval", "pattern_finetune", "context_distill")
]

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
    # the teacher in float32 (the others run it in teacher_dtype): what its precision alone costs
    "cd_lora_fp32": ("context_distill", {"student_mode": "lora", "teacher_dtype": "float32"}),
    # ... and in bfloat16, resident as the quantized ones are (as a probe: cd_lora's teacher pass apart)
    "cd_lora_bf16": ("context_distill", {"student_mode": "lora", "teacher_dtype": "bfloat16"}),
    # the teacher calibrated (on content-free queries / on the rows it scores) and students distilled from it
    "icl_teacher_cf_calibrated": (
        "icl_eval",
        {"model": "teacher", "data": {"teacher_calibration": "content_free"}},
    ),
    "cd_lora_cf_calibrated": (
        "context_distill",
        {"student_mode": "lora", "data": {"teacher_calibration": "content_free"}},
    ),
    "icl_teacher_batch_calibrated": (
        "icl_eval",
        {"model": "teacher", "data": {"teacher_calibration": "batch"}},
    ),
    "cd_lora_batch_calibrated": (
        "context_distill",
        {"student_mode": "lora", "data": {"teacher_calibration": "batch"}},
    ),
    # the paper's memory reference: fine-tuning the teacher itself (LoRA; a few steps, memory only)
    "pbft_teacher_lora": (
        "pattern_finetune",
        {"student_mode": "lora", "model": "teacher", "memory_only": True},
    ),
}
OPTIONAL_METHODS = (
    "cd_lora_4bit",
    "cd_lora_fp32",
    "cd_lora_bf16",
    "pbft_teacher_lora",
    *(m for m in METHODS if m.endswith("_calibrated")),
)
DEFAULT_METHODS = [m for m in METHODS if m not in OPTIONAL_METHODS]


@dataclass
class CompareArguments:
    """Which methods to compare, where the results go, and the per-mode learning rates."""

    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata={"help": f"Methods to run, in order: {', '.join(METHODS)}."},
    )
    results_dir: str = field(
        default="results",
        metadata={
            "help": "Runs go to results_dir/run_name (run_name default: a timestamp); `latest` links the "
            "newest."
        },
    )
    full_learning_rate: float = field(
        default=3e-5, metadata={"help": "Learning rate of full-weight students."}
    )
    lora_learning_rate: float = field(default=3e-4, metadata={"help": "Learning rate of LoRA students."})
    bitfit_learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate of BitFit students."})
    learning_rates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Per-method learning rates that override the student mode's, as method=value, e.g. "
            "cd_lora=2e-3 (each chosen on the dev rows)."
        },
    )
    lora_base_dtype: str = field(
        default=None,
        metadata={
            "help": "dtype of a LoRA student's frozen base weights (its adapters stay float32); default: the "
            "student's dtype. bfloat16 with bf16 autocast skips casting the frozen weights at every step."
        },
    )
    student_eval_dtype: str = field(
        default=None,
        metadata={
            "help": "dtype the untrained student is scored in (zero_shot, icl_student); default: the "
            "student's dtype. bfloat16 matches the LoRA students' frozen base and halves the scoring time "
            "on CPUs with native bf16 matmuls."
        },
    )
    teacher_eval_tasks: list[str] = field(
        default=None,
        metadata={"help": "Tasks icl_teacher is scored on; default: eval_tasks. --full scores it on all."},
    )
    memory_only_steps: int = field(
        default=3,
        metadata={
            "help": "Training steps of memory-only methods (pbft_teacher_lora), which are not evaluated."
        },
    )
    fresh_process_per_method: bool = field(
        default=True, metadata={"help": "Run each method in its own process (clean peak memory per method)."}
    )
    publish_dir: str = field(
        default=None,
        metadata={
            "help": "Also copy summary.md, summary.json and the plots into publish_dir/<config name>[-quick] "
            "(a folder kept in the repository, so the docs can link to the latest tables)."
        },
    )
    probe_methods: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Methods (among `methods`) run as memory probes: memory_only_steps training steps, no "
            "evaluation, and a quantized teacher kept resident (no output cache), so the row measures the "
            "memory of that student mode and teacher. Their rows are labelled as probes."
        },
    )
    full: bool = field(
        default=False,
        metadata={"help": "Run full_methods, every one trained and evaluated (no probes)."},
    )
    full_methods: list[str] = field(
        default=None, metadata={"help": "Methods with --full; default: DEFAULT_METHODS, all of them."}
    )
    reuse: str = field(
        default="auto",
        metadata={
            "help": "auto: read a method back from an earlier run under results_dir when its resolved "
            "config, data files, model files, code (library and recipe) and numeric packages' versions "
            "are unchanged (fingerprint.json), and say what changed for each method that runs again; "
            "never: run every method, those finished in this run's folder included."
        },
    )
    check_only: bool = field(
        default=False,
        metadata={"help": "Check every method as its recipe would (no weights load), then stop."},
    )
    quick: bool = field(default=False, metadata={"help": "A smaller version: the quick_* sizes below."})
    quick_num_train_examples: int = field(default=32, metadata={"help": "Training queries with --quick."})
    quick_num_eval_examples: int = field(default=100, metadata={"help": "MNLI evaluation rows with --quick."})
    quick_hans_per_subcase: int = field(default=2, metadata={"help": "HANS rows per subcase with --quick."})
    quick_num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs with --quick."})
    quick_methods: list[str] = field(
        default=None, metadata={"help": "Methods with --quick; default: methods."}
    )

    def method_learning_rates(self) -> dict[str, float]:
        rates = {}
        for item in self.learning_rates:
            method, _, value = item.partition("=")
            try:
                rates[method.strip()] = float(value)
            except ValueError:
                raise UsageError(
                    f"learning_rates entry {item!r} is not method=value; write e.g. cd_lora=2e-3"
                ) from None
        return rates

    def __post_init__(self):
        named = [
            *self.method_learning_rates(),
            *self.methods,
            *(self.quick_methods or []),
            *(self.full_methods or []),
            *self.probe_methods,
        ]
        unknown = [m for m in named if m not in METHODS]
        if unknown:
            raise UsageError(f"unknown method(s) {unknown}; choose from: {', '.join(METHODS)}")
        if not self.methods:
            raise UsageError("methods is empty; name at least one method")
        for name in ("lora_base_dtype", "student_eval_dtype"):
            value = getattr(self, name)
            if value is not None and value not in DTYPES:
                raise UsageError(f"{name} {value!r} is not one of {', '.join(DTYPES)}")
        if self.reuse not in REUSE_MODES:
            raise UsageError(f"reuse {self.reuse!r} is not one of {', '.join(REUSE_MODES)}")
        if self.full and self.quick:
            raise UsageError("--full and --quick contradict each other; pass one of them")


# --reuse: auto reads back what is unchanged, never runs every method
REUSE_MODES = ("auto", "never")
# what a row read back from an earlier run keeps of that run's measurements
REUSED_COSTS = (
    "peak_memory_mib",
    "needed_memory_mib",
    "wall_seconds",
    "phase_peak_mib",
    "phase_needed_mib",
    "runtime_mib",
)
CONFIG_TYPES = (StudentArguments, DataArguments, CompareArguments, DistillationConfig)
TRAINING_FIELDS = {f.name for f in dataclasses.fields(DistillationConfig)}


# ---------------------------------------------------------------- one method's config


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


def check_only(student_args, data_args, compare, config, run_name: str, given: GivenSettings) -> dict:
    """Write every method's file in a scratch folder and check it as its recipe would; run nothing."""
    with tempfile.TemporaryDirectory(prefix="compare-check-") as scratch:
        run_dir = Path(scratch) / run_name
        methods = {}
        for name in compare.methods:
            recipe, values = method_config(
                name, student_args, data_args, compare, config, run_dir / name, given
            )
            write_method_yaml(recipe, values, run_dir / name / "method.yaml")
            methods[name] = method_arguments(recipe, run_dir / name)
        validate_method_files(methods)
    forget_run(Path(compare.results_dir) / run_name)
    print(f"ok: {len(methods)} methods checked ({', '.join(methods)}); nothing was run", flush=True)
    return {"checked": list(methods)}


def read_method_yaml(method_dir: Path) -> tuple[str, dict]:
    """(recipe, values) of the file `write_method_yaml` wrote: its header names the recipe."""
    text = (method_dir / "method.yaml").read_text(encoding="utf-8")
    recipe = Path(text.splitlines()[0].split()[2]).stem
    return recipe, yaml.safe_load(text)


def write_method_yaml(recipe: str, values: dict, path: Path) -> None:
    header = f"# python recipes/{recipe}.py --config {path}\n"
    write_text_atomically(path, header + yaml.safe_dump(values, sort_keys=False, allow_unicode=True))


# ---------------------------------------------------------------- running a method


def prepare_embedded_models(names) -> dict[str, float]:
    """Dequantize each embedded model that is not in the cache yet, in a child process (its peak memory is
    not this process's), and return the seconds each took: a first run's set-up, reported apart from the
    methods' time."""
    from distill_trainer.models.embedded import embedded_model_dir

    seconds = {}
    for name in dict.fromkeys(n for n in names if n and str(n).startswith("embedded:")):
        if embedded_model_dir(name).is_dir():
            continue  # built before (each method still verifies it when it loads)
        began = time.perf_counter()
        code = "import distill_trainer.run.quiet_start, sys; "  # Ctrl-C: this process prints the line
        code += "from distill_trainer.models.embedded import materialize_embedded_model as m; m(sys.argv[1])"
        child = subprocess.run(
            [sys.executable, "-c", code, name], check=False, env={**os.environ, CHILD_ENV: "1"}
        )
        if child.returncode == 130:
            raise KeyboardInterrupt
        if child.returncode != 0:
            raise UsageError(f"could not prepare {name}; its error is printed above")
        seconds[name] = round(time.perf_counter() - began, 1)
    return seconds


def run_in_fresh_process(recipe: str, config_path: Path, extra=()) -> int:
    """Run the recipe in a child process; returns its peak resident set in bytes (Linux/macOS rusage)."""
    command = [sys.executable, str(RECIPES_DIR / f"{recipe}.py"), "--config", str(config_path), *extra]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error")}
    child = subprocess.Popen(command, env={**env, CHILD_ENV: "1"})  # on Ctrl-C this process says it
    try:
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
    except KeyboardInterrupt:
        child.wait()  # it had the same Ctrl-C: let it stop
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode == 130:  # interrupted on its own
        raise KeyboardInterrupt
    if child.returncode != 0:
        raise UsageError(
            f"{recipe} failed (exit status {child.returncode}) with config {config_path}; "
            "its error is printed above"
        )
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_in_this_process(recipe: str, config_path: Path, tracker, name: str, extra=()) -> int:
    """Run the recipe here; the peak is this process's during the method (earlier methods' leftovers
    count)."""
    # `recipes.<name>` when this module was imported as part of the package, the sibling script otherwise
    module = importlib.import_module(f"{__package__}.{recipe}" if __package__ else recipe)
    with tracker.phase(name):
        module.main(["--config", str(config_path), *extra])
    return tracker.peak(name)["cpu_rss"]


# ---------------------------------------------------------------- the memory reference and sizes on disk


def teacher_finetuning_reference(results: list[dict], data_args, config) -> dict | None:
    """The paper's memory reference: fine-tuning the teacher itself. Full fine-tuning with AdamW holds 16
    bytes per parameter (fp32 weights, gradients and two moments) before any activation, more than a
    CPU machine has for a 1.5B teacher, so it is the analytic estimate (memory_estimate.py) on the runtime
    the measured runs had; LoRA fine-tuning of the teacher, when run (pbft_teacher_lora), is measured
    and listed beside it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill_trainer.memory.estimate import estimate_peak_memory
    from distill_trainer.models.loading import load_tokenizer, prepare_student, resolve_model_path
    from distill_trainer.nli.data import prepare_data
    from distill_trainer.report.estimates import longest_row_tokens

    teacher = config.teacher_model_name_or_path
    if not teacher or is_self(teacher):
        return None
    data = prepare_data(data_args)
    tokens = longest_row_tokens(load_tokenizer(teacher), data.pattern, data.train_rows)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(teacher)))
    model = prepare_student(model, "full")
    runtimes = [row["runtime_mib"] for row in results if row.get("runtime_mib")]
    runtime = int(min(runtimes) * 2**20) if runtimes else 0
    estimate = estimate_peak_memory(
        model,
        None,
        batch_size=config.per_device_train_batch_size,
        student_tokens=tokens,
        runtime_bytes=runtime,
    )
    import psutil

    machine = psutil.virtual_memory().total
    fits = "it would fit" if estimate.total < machine else "it does not fit"
    notes = [
        f"full fine-tuning of the teacher ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B "
        f"parameters, AdamW, batch {config.per_device_train_batch_size} x {tokens} tokens): "
        f"{estimate.total / 2**30:.2f} GiB, analytic ({fits} in this machine's {machine / 2**30:.0f} GiB)"
    ]
    lora = next((row for row in results if row["method"] == "pbft_teacher_lora"), None)
    if lora and method_memory(lora):
        notes.append(
            f"LoRA fine-tuning of the teacher (pbft_teacher_lora, measured over a few steps): "
            f"{method_memory(lora) / 1024:.2f} GiB"
        )
    return {
        "name": "full fine-tuning (PBFT) of the teacher",
        "peak_mib": round(estimate.total / 2**20, 1),
        "source": "analytic estimate",
        "notes": notes,
    }


def data_read(results: list[dict]) -> list[str]:
    """What the evaluated rows are, named truthfully (a local copy is not the Hub split it imitates), and
    how many of each task every method scored."""
    from distill_trainer.models.provenance import data_lines

    lines = []
    for row in results:
        metrics = json.loads((Path(row["output_dir"]) / "metrics.json").read_text(encoding="utf-8"))
        for line in data_lines(metrics.get("data") or {}):
            if line not in lines:
                lines.append(line)
    scored = {task: summary.get("n") for row in results for task, summary in row["eval"].items()}
    return lines + [f"scored per method: {', '.join(f'{n} {task} rows' for task, n in scored.items())}"]


def disk_sizes(results: list[dict], config) -> dict[str, float]:
    """MB on disk of the teacher's weights and of each trained student's saved folder."""
    from distill_trainer.models.loading import resolve_model_path

    def megabytes(folder) -> float:
        files = [p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
        return round(sum(p.stat().st_size for p in files) / 1e6, 1)

    sizes = {}
    teacher = config.teacher_model_name_or_path
    if teacher and not is_self(teacher) and Path(resolve_model_path(teacher)).is_dir():
        sizes[f"teacher {teacher} (float32)"] = megabytes(resolve_model_path(teacher))
    for row in results:
        if row["trainable_parameters"] and row["method"] != "pbft_teacher_lora":
            sizes[f"{row['method']} ({row['student_mode']})"] = megabytes(row["output_dir"])
    return sizes


# ---------------------------------------------------------------- main


def apply_full(compare) -> None:
    compare.methods = list(compare.full_methods or DEFAULT_METHODS)
    compare.probe_methods = []
    compare.teacher_eval_tasks = None


def apply_quick(data_args, compare, config, given: GivenSettings) -> GivenSettings:
    """--quick's sizes set on the configs; returns the settings given, quick's epochs among them (every
    method's file carries the training settings given)."""
    data_args.num_train_examples = compare.quick_num_train_examples
    data_args.num_eval_examples = compare.quick_num_eval_examples
    data_args.hans_per_subcase = compare.quick_hans_per_subcase
    config.num_train_epochs = compare.quick_num_train_epochs
    if compare.quick_methods:
        compare.methods = list(compare.quick_methods)
    return given.with_values(num_train_epochs=compare.quick_num_train_epochs)


def publish(run_dir: Path, target: Path) -> None:
    """Copy the run's summary and plots to `target`, replacing what an earlier run put there."""
    import shutil

    target.mkdir(parents=True, exist_ok=True)
    for name in ("summary.md", "summary.json", "accuracy.png", "memory_time.png"):
        if (run_dir / name).is_file():
            shutil.copyfile(run_dir / name, target / name)
    print(f"published to {target}")


def config_path_of(argv) -> str | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    return argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None


def link_latest(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name, target_is_directory=True)


def say_why_rerun(reran: dict) -> None:
    """One line per method that runs again although an earlier run has a result of it: what changed."""
    for name, why in reran.items():
        if why:
            print(f"{name} runs again: {'; '.join(why)}", flush=True)


def run_methods(plan: dict, earlier: dict, done: set, compare, run_dir: Path) -> tuple[list[dict], float]:
    """Each method's result row, in order: run (in this process or a fresh one, resuming what an
    interrupted invocation of this run left), read back from an earlier run with the same fingerprint, or
    kept from this run (`done`); and the seconds they took together."""
    tracker = None
    if not compare.fresh_process_per_method:
        from distill_trainer.memory.peak import MemoryTracker

        tracker = MemoryTracker(device="cpu")
    progress = RunProgress(list(plan), expected_seconds(compare.results_dir), reused=set(earlier) | done)
    results, start = [], time.perf_counter()
    for name, (recipe, fingerprint) in plan.items():
        progress.start(name)
        began = time.perf_counter()
        method_dir = run_dir / name
        if name in earlier:
            reuse_result(earlier[name], method_dir)
            row = load_method_result(name, method_dir, None, 0.0)
            row.update(recorded_costs(method_dir))
            row["reused_from"] = str(earlier[name].parent.name)
        elif name in done:
            row = load_method_result(name, method_dir, None, 0.0)
            row.update(recorded_costs(method_dir))
        else:
            extra = resume_flags(method_dir)  # what an interrupted invocation of this run left
            if compare.fresh_process_per_method:
                peak = run_in_fresh_process(recipe, method_dir / "method.yaml", extra)
            else:
                peak = run_in_this_process(recipe, method_dir / "method.yaml", tracker, name, extra)
            row = load_method_result(name, method_dir, peak, time.perf_counter() - began)
            record_fingerprint(method_dir, fingerprint, {k: row[k] for k in REUSED_COSTS})
        if name in compare.probe_methods:
            row["memory_probe_steps"] = compare.memory_only_steps
        results.append(row)
        print(f"     {name} done in {format_duration(progress.done(name))}", flush=True)
    return results, time.perf_counter() - start


def run_settings(
    student_args, data_args, compare, config, earlier: dict, seconds: float, setup_seconds
) -> dict:
    """The settings the summary states beside its table."""
    settings = {
        "student": student_args.model_name_or_path,
        "teacher": config.teacher_model_name_or_path,
        "pattern": data_args.pattern,
        "k": data_args.k,
        "demonstration_ids": data_args.demonstration_ids,
        "demonstration_seed": data_args.demonstration_seed,
        "num_train_examples": data_args.num_train_examples,
        "num_train_epochs": config.num_train_epochs,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "full_learning_rate": compare.full_learning_rate,
        "lora_learning_rate": compare.lora_learning_rate,
        "bitfit_learning_rate": compare.bitfit_learning_rate,
        "temperature": config.temperature,
        "distill_vocab": config.distill_vocab,
        "lora_r": student_args.lora_r,
        "num_eval_examples": data_args.num_eval_examples,
        "hans_per_subcase": data_args.hans_per_subcase,
        "quick": compare.quick,
        "full": compare.full,
        "memory_probes": list(compare.probe_methods),
        "reused": sorted(earlier),
        "memory": "peak resident set of each method's own process"
        if compare.fresh_process_per_method
        else "peak resident set during each method, in one process (earlier methods' leftovers included)",
        "total_seconds": round(seconds, 1),
        "setup_seconds": setup_seconds,
    }
    return settings


def main(argv=None) -> dict:
    (student_args, data_args, compare, config), given = parse_config(CONFIG_TYPES, argv)
    if compare.full:
        apply_full(compare)
    if compare.quick:
        given = apply_quick(data_args, compare, config, given)
    # run_name is TrainingArguments' own field: the name of the run, here its folder
    # run_name default: the config file's name and the time, e.g. compare-20260101-120000
    stem = Path(config_path_of(argv)).stem if config_path_of(argv) else "compare"
    suffix = "-quick" if compare.quick else "-full" if compare.full else ""
    run_name = given.get("run_name") or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
    run_dir = Path(compare.results_dir) / run_name
    # Ctrl-C, a kill, a full disk: the same command with this run_name continues this folder
    note_run(run_dir, [] if given.get("run_name") else ["--run_name", run_name])

    # ------------------------------------------------------------ embedded models ready (timed apart)
    setup_seconds = prepare_embedded_models(
        [student_args.model_name_or_path, config.teacher_model_name_or_path]
    )

    # ------------------------------------------------------------ one resolved config per method, checked
    if compare.check_only:
        return check_only(student_args, data_args, compare, config, run_name, given)
    plan, earlier, done, reran = {}, {}, set(), {}
    for name in compare.methods:
        recipe, values = method_config(name, student_args, data_args, compare, config, run_dir / name, given)
        write_method_yaml(recipe, values, run_dir / name / "method.yaml")
        fingerprint = method_fingerprint(recipe, values)
        plan[name] = (recipe, fingerprint)
        if compare.reuse == "never":
            reran[name] = ["--reuse never"]
        elif finished_here(run_dir / name, fingerprint):  # this run, interrupted after the method finished
            done.add(name)
        else:
            found = find_earlier_result(Path(compare.results_dir), name, fingerprint, exclude=run_dir)
            if found is not None:
                earlier[name] = found
            else:
                reran[name] = why_rerun(Path(compare.results_dir), name, fingerprint, exclude=run_dir)
    say_why_rerun(reran)
    to_run = [name for name in plan if name not in done and name not in earlier]
    validate_method_files({name: method_arguments(plan[name][0], run_dir / name) for name in to_run})

    # ------------------------------------------------------------ run them (or read them back), in order
    results, seconds = run_methods(plan, earlier, done, compare, run_dir)

    # ------------------------------------------------------------ report
    settings = run_settings(student_args, data_args, compare, config, earlier, seconds, setup_seconds)
    settings["run_again"] = {name: why for name, why in reran.items() if why}
    settings["data"] = data_read(results)
    add_memory_estimates(results, {name: read_method_yaml(run_dir / name) for name in plan}, data_args)
    settings["memory_reference"] = teacher_finetuning_reference(results, data_args, config)
    settings["disk_mb"] = disk_sizes(results, config)
    summary = write_report(run_dir, results, settings, code_record(COMPARISON_SCRIPTS))
    link_latest(run_dir)
    if compare.publish_dir:
        publish(run_dir, Path(compare.publish_dir) / (stem + suffix))
    print_table(summary, run_dir)
    forget_run(run_dir)
    return summary


if __name__ == "__main__":
    run_recipe(main)
