"""What a comparison runs: its methods (each one run of an existing recipe with overrides), the arguments
that choose them and where their results go, and what `--full` and `--quick` change.

    student_args, data_args, compare, config = parse_config(
        (StudentArguments, DataArguments, CompareArguments, DistillationConfig), argv
    )
    if compare.quick:
        apply_quick(data_args, compare, config)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from distill_trainer.errors import UsageError
from distill_trainer.training.config import DTYPES
from distill_trainer.training.parsing import GivenSettings

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


# --reuse: auto reads back what is unchanged, never runs every method
REUSE_MODES = ("auto", "never")


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
    students: list[str] = field(
        default=None,
        metadata={
            "help": "Students to compare in one run, e.g. embedded:smollm2-135m embedded:gemma3-270m: every "
            "method runs for each against the same teacher, training queries and evaluation rows, each "
            "student in its own folder of the run, then a table and a plot per student size (sizes.md). "
            "Replaces model_name_or_path."
        },
    )
    student_learning_rates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Per-student learning rates over learning_rates, one entry per student: the student, "
            "then method=value pairs, e.g. 'embedded:gemma3-270m cd_lora=1e-3 pbft_lora=5e-4' (each "
            "chosen on the dev rows)."
        },
    )
    select_learning_rates: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Choose learning rates on the dev rows (holdout_rows) instead of comparing: candidates "
            "as method=rate,rate,... (e.g. cd_lora=1e-3,2e-3); each trains as that method would, for each "
            "student, and is scored on the dev rows; writes learning_rates.md with the best per student."
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
        return _rates(self.learning_rates, "learning_rates")

    def learning_rate_candidates(self) -> dict[str, list[float]]:
        """method -> the learning rates `select_learning_rates` tries."""
        candidates = {}
        for item in self.select_learning_rates:
            method, _, values = item.partition("=")
            try:
                rates = [float(value) for value in values.split(",")]
            except ValueError:
                rates = []
            if not rates or method.strip() in candidates:
                raise UsageError(
                    f"select_learning_rates entry {item!r} is not method=rate,rate,... (one per method); "
                    "write e.g. cd_lora=1e-3,2e-3"
                )
            candidates[method.strip()] = rates
        return candidates

    def per_student_learning_rates(self) -> dict[str, dict[str, float]]:
        """student -> {method: learning rate} of `student_learning_rates`."""
        rates = {}
        for entry in self.student_learning_rates:
            student, *pairs = entry.split()
            if not pairs:
                raise UsageError(
                    f"student_learning_rates entry {entry!r} names no method=value; write e.g. "
                    "'embedded:gemma3-270m cd_lora=1e-3'"
                )
            if student in rates:
                raise UsageError(f"student_learning_rates names {student} twice; give it one entry")
            rates[student] = _rates(pairs, f"student_learning_rates ({student})")
        return rates

    def for_student(self, student: str) -> CompareArguments:
        """A copy for one student of `students`: its learning rates over the shared ones, no students."""
        rates = {**self.method_learning_rates(), **self.per_student_learning_rates().get(student, {})}
        return dataclasses.replace(
            self,
            students=None,
            student_learning_rates=[],
            learning_rates=[f"{method}={value!r}" for method, value in rates.items()],
        )

    def __post_init__(self):
        per_student = self.per_student_learning_rates()
        named = [
            *self.method_learning_rates(),
            *(method for rates in per_student.values() for method in rates),
            *self.learning_rate_candidates(),
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
        if self.students is not None:
            if not self.students or len(set(self.students)) != len(self.students):
                raise UsageError(f"students {self.students} must name at least one student, each once")
        trained = [m for m in self.learning_rate_candidates() if METHODS[m][0] == "icl_eval"]
        if trained:
            raise UsageError(
                f"select_learning_rates names {trained}, which train nothing; name trained methods"
            )
        stray = [s for s in per_student if s not in (self.students or [])]
        if stray:
            raise UsageError(
                f"student_learning_rates names {stray}, not in students {self.students}; add them to "
                "students or drop their entries"
            )


def _rates(items, where: str) -> dict[str, float]:
    rates = {}
    for item in items:
        method, _, value = item.partition("=")
        try:
            rates[method.strip()] = float(value)
        except ValueError:
            raise UsageError(f"{where} entry {item!r} is not method=value; write e.g. cd_lora=2e-3") from None
    return rates


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
