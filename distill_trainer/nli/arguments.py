"""The data arguments every recipe shares: task, pattern, demonstrations (one set, or an ensemble of sets
with an optional calibration of the teacher), and the training and evaluation subsets."""

from __future__ import annotations

from dataclasses import dataclass, field

from distill_trainer.errors import UsageError
from distill_trainer.nli.patterns import CUSTOM, PATTERNS, Pattern, get_pattern
from distill_trainer.nli.tasks import DATA_ENV, DATA_SOURCES, TASKS, get_task

CALIBRATIONS = ("none", "content_free", "batch")


@dataclass
class DataArguments:
    """Which task, data, pattern and demonstrations a recipe uses."""

    task: str = field(
        default="mnli", metadata={"help": f"Training task and demonstration pool: {', '.join(TASKS)}."}
    )
    eval_tasks: list[str] = field(
        default=None,
        metadata={"help": "Tasks to evaluate on (their evaluation splits); default: the task itself."},
    )
    data_source: str = field(
        default="auto",
        metadata={"help": "hub, local, or auto: a local data directory if one is found, else the Hub."},
    )
    data_dir: str = field(
        default=None,
        metadata={
            "help": f"Local data directory (mnli/*.jsonl, hans/*.jsonl); default: ${DATA_ENV}, then "
            "the data/ folder the repository ships."
        },
    )
    pattern: str = field(default="minimal", metadata={"help": f"{', '.join(PATTERNS)} or {CUSTOM}."})
    template: str = field(
        default=None, metadata={"help": "With pattern: custom; must hold {premise} and {hypothesis}."}
    )
    label_words: list[str] = field(
        default=None,
        metadata={"help": "One word per label in label order, e.g. [' Yes', ' No']; default: the pattern's."},
    )
    k: int = field(
        default=16, metadata={"help": "Demonstrations in the teacher's (or ICL model's) prompt; 0 = none."}
    )
    demonstration_seed: int = field(
        default=0, metadata={"help": "Seed for choosing and ordering demonstrations."}
    )
    demonstration_ids: list[int] = field(
        default=None,
        metadata={
            "help": "Pin the fixed demonstrations: the `idx` values of training-pool rows, in prompt order "
            "(k of them); default: k rows drawn with demonstration_seed."
        },
    )
    demonstration_sets: int = field(
        default=1,
        metadata={
            "help": "Teacher ensemble: its label-word distribution is the mean (of probabilities) over this "
            "many fixed demonstration sets, each with its own prefix cache. Set 0 is the usual one "
            "(demonstration_ids or demonstration_seed); the others are drawn with seeds derived from "
            "demonstration_seed."
        },
    )
    teacher_calibration: str = field(
        default="none",
        metadata={
            "help": "none | content_free | batch: divide each demonstration set's label-word distribution "
            "by its mean distribution on content-free queries (Zhao et al. 2021), or on the rows it scores "
            "(batch: each evaluation set's rows, the training queries in the output cache; Zhou et al. "
            "2024), and renormalise."
        },
    )
    demonstration_seeds: list[int] = field(
        default=None,
        metadata={
            "help": "icl_eval: evaluate once per demonstration seed and report the mean, min and max of "
            "accuracy and margin AUC."
        },
    )
    resample_demonstrations: bool = field(
        default=False,
        metadata={"help": "Draw new demonstrations for every example instead of one fixed set."},
    )
    num_train_examples: int = field(
        default=128, metadata={"help": "Training examples, class-balanced, disjoint from the demonstrations."}
    )
    holdout_rows: str = field(
        default=None,
        metadata={
            "help": "A JSONL file of rows (premise, hypothesis, label) never used as training queries: the "
            "dev rows that settings are chosen on (recipes/select_prompt.py writes them as dev.jsonl)."
        },
    )
    num_eval_examples: int = field(
        default=None, metadata={"help": "Class-balanced evaluation rows per non-HANS task; default: all."}
    )
    hans_per_subcase: int = field(
        default=None, metadata={"help": "HANS rows per subcase (30 subcases); default: all."}
    )
    subset_seed: int = field(
        default=0, metadata={"help": "Seed for choosing training and evaluation subsets."}
    )
    max_length: int = field(
        default=None,
        metadata={
            "help": "Longest prompt (tokens) the teacher/ICL model reads; default: its position limit."
        },
    )
    drop_demonstrations_to_fit: bool = field(
        default=False,
        metadata={
            "help": "Drop trailing demonstrations of a prompt that exceeds max_length instead of failing."
        },
    )
    reuse_evaluations: bool = field(
        default=True,
        metadata={
            "help": "In-context-learning evaluation of a model on disk: read back the results of an earlier "
            "run with the same model files, prompt and rows instead of scoring again."
        },
    )
    evaluate_after_training: bool = field(
        default=True,
        metadata={
            "help": "Evaluate the trained student on eval_tasks; false: train only (e.g. to measure memory)."
        },
    )
    drop_invalid_rows: bool = field(
        default=False,
        metadata={
            "help": "Drop data rows the task cannot use (empty or null text, unknown label ids, repeated "
            "rows) and count them in metrics.json, instead of stopping at the first one."
        },
    )

    def __post_init__(self):
        task = get_task(self.task)
        self.eval_tasks = list(self.eval_tasks or [self.task])
        for name in self.eval_tasks:
            if get_task(name).num_labels != task.num_labels:
                raise UsageError(
                    f"eval task {name!r} has {get_task(name).num_labels} labels but task {self.task!r} has "
                    f"{task.num_labels}; evaluate on tasks with the same labels (binary mnli goes with hans)"
                )
        if self.data_source not in DATA_SOURCES:
            raise UsageError(
                f"data_source={self.data_source!r} is not valid; choose one of: {', '.join(DATA_SOURCES)}"
            )
        get_pattern(self.pattern, task.num_labels, self.template, self.label_words)
        for name in ("k", "num_train_examples", "demonstration_seed", "subset_seed"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.demonstration_ids is not None:
            if self.resample_demonstrations:
                raise UsageError(
                    "demonstration_ids pins one fixed set of demonstrations, but "
                    "resample_demonstrations draws new ones per query; set only one of them"
                )
            if len(self.demonstration_ids) != self.k:
                raise UsageError(
                    f"demonstration_ids has {len(self.demonstration_ids)} ids but k={self.k}; "
                    "give exactly k ids (or set k to their number)"
                )
        self._check_ensemble()
        for name in ("num_eval_examples", "hans_per_subcase", "max_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1 (or unset for the default), got {getattr(self, name)}")

    def _check_ensemble(self) -> None:
        if self.demonstration_sets < 1:
            raise UsageError(f"demonstration_sets must be >= 1, got {self.demonstration_sets}")
        if self.teacher_calibration not in CALIBRATIONS:
            raise UsageError(
                f"teacher_calibration={self.teacher_calibration!r} is not valid; choose one of: "
                f"{', '.join(CALIBRATIONS)}"
            )
        if self.demonstration_sets > 1 and self.k == 0:
            raise UsageError(
                "demonstration_sets > 1 needs demonstrations: set k >= 1 (or demonstration_sets: 1)"
            )
        ensemble = self.demonstration_sets > 1 or self.teacher_calibration != "none"
        if ensemble and self.resample_demonstrations:
            raise UsageError(
                "demonstration_sets and teacher_calibration work on fixed demonstration sets, but "
                "resample_demonstrations draws new ones per query; set resample_demonstrations: false"
            )
        if self.demonstration_seeds is not None:
            if not self.demonstration_seeds or min(self.demonstration_seeds) < 0:
                raise UsageError(f"demonstration_seeds must list seeds >= 0, got {self.demonstration_seeds}")
            if self.demonstration_ids is not None:
                raise UsageError(
                    "demonstration_seeds draws a set per seed, but demonstration_ids pins one set; "
                    "remove demonstration_ids to compare seeds"
                )

    def get_pattern(self) -> Pattern:
        return get_pattern(self.pattern, get_task(self.task).num_labels, self.template, self.label_words)
