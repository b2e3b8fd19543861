"""NLI tasks: their registry, the data arguments, and loading MNLI and HANS (Hub or local directory).
Patterns live in patterns.py, subsets and demonstrations in demonstrations.py.

    task = get_task("mnli")                               # binary MNLI, Mosbach et al. (2023)
    pattern = get_pattern("gpt3", task.num_labels)
    pool = load_split(task, "train", data_args)           # a datasets.Dataset: premise, hypothesis, label
    demos = sample_demonstrations(pool, task.num_labels, k=16, seed=0)
    prompt = render_demonstrations(demos, pattern)        # "\n\n"-joined, the teacher's few-shot block
    query, answer = pattern.query(row), pattern.answer(row["label"])

A local data directory has the Hub datasets' columns and label ids, laid out as
`mnli/train.jsonl`, `mnli/validation_matched.jsonl` and `hans/validation.jsonl`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from .demonstrations import (  # noqa: F401  (re-exported: the data flow's names, importable from tasks)
    DemonstrationSampler,
    balanced_indices,
    balanced_subset,
    fit_demonstrations,
    per_subcase_subset,
    pinned_demonstrations,
    render_demonstrations,
    row_key,
    sample_demonstrations,
)
from .errors import UsageError
from .patterns import CUSTOM, PATTERNS, Pattern, check_template, get_pattern  # noqa: F401  (re-exported)
from .views import SEPARATOR  # noqa: F401  (re-exported)

DATA_ENV = "DISTILL_TRAINER_DATA"
REPO_ROOT = (
    Path(__file__).resolve().parent.parent
)  # a source checkout; data/ or ../shared/data may sit next to it
DATA_SOURCES = ("auto", "hub", "local")
REQUIRED_COLUMNS = ("premise", "hypothesis", "label")


# ---------------------------------------------------------------- tasks


@dataclass(frozen=True)
class NLITask:
    """Where a task's data lives and how its source labels map onto the task's labels."""

    name: str
    label_names: tuple[str, ...]
    local_dir: str  # subdirectory of a local data dir; files are <split>.jsonl
    hub_path: str
    hub_name: str | None = None
    hub_revision: str | None = None
    train_split: str | None = None  # the pool for demonstrations and training examples
    eval_split: str = "validation"
    label_map: dict | None = (
        None  # source label -> task label; rows whose label is absent are dropped (-1: test)
    )
    extra_columns: tuple[str, ...] = ()
    source_labels: tuple[int, ...] = (0, 1, 2)  # the label ids the source dataset uses; others are errors
    source_label_names: tuple[str, ...] = ("entailment", "neutral", "contradiction")

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


TASKS = {
    # Mosbach et al. (2023): neutral dropped, contradiction becomes label 1
    "mnli": NLITask(
        "mnli",
        ("entailment", "contradiction"),
        "mnli",
        "nyu-mll/glue",
        "mnli",
        train_split="train",
        eval_split="validation_matched",
        label_map={0: 0, 2: 1},
    ),
    "mnli_3way": NLITask(
        "mnli_3way",
        ("entailment", "neutral", "contradiction"),
        "mnli",
        "nyu-mll/glue",
        "mnli",
        train_split="train",
        eval_split="validation_matched",
        label_map={0: 0, 1: 1, 2: 2},
    ),
    # the Hub's `hans` is a loading script, which recent `datasets` no longer runs; the Hub's own parquet
    # conversion of it has the same columns
    "hans": NLITask(
        "hans",
        ("entailment", "non_entailment"),
        "hans",
        "jhu-cogsci/hans",
        hub_revision="refs/convert/parquet",
        eval_split="validation",
        label_map={0: 0, 1: 1},
        extra_columns=("heuristic", "subcase", "template"),
        source_labels=(0, 1),
        source_label_names=("entailment", "non-entailment"),
    ),
}


def get_task(name: str) -> NLITask:
    if name not in TASKS:
        raise UsageError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}")
    return TASKS[name]


# ---------------------------------------------------------------- arguments


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
            "data/ or ../shared/data next to the repository."
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
    resample_demonstrations: bool = field(
        default=False,
        metadata={"help": "Draw new demonstrations for every example instead of one fixed set."},
    )
    num_train_examples: int = field(
        default=128, metadata={"help": "Training examples, class-balanced, disjoint from the demonstrations."}
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
        for name in ("num_eval_examples", "hans_per_subcase", "max_length"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1 (or unset for the default), got {getattr(self, name)}")

    def get_pattern(self) -> Pattern:
        return get_pattern(self.pattern, get_task(self.task).num_labels, self.template, self.label_words)


# ---------------------------------------------------------------- loading


def candidate_data_dirs() -> list[Path]:
    """Where a local data directory is looked for when none is given, in order."""
    candidates = []
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    return candidates + [REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]


def resolve_data_dir(data_source: str = "auto", data_dir: str | None = None) -> Path | None:
    """The local directory to read, or None for the Hub."""
    if data_source == "hub":
        return None
    if data_dir:
        if not Path(data_dir).is_dir():
            raise UsageError(
                f"data_dir {data_dir} does not exist; give a directory holding mnli/ and hans/ jsonl files"
            )
        return Path(data_dir)
    for candidate in candidate_data_dirs():
        if candidate.is_dir():
            return candidate
    if data_source == "local":
        looked = ", ".join(str(c) for c in candidate_data_dirs())
        raise UsageError(
            f"no local data directory found (looked in: {looked}; ${DATA_ENV} is "
            f"{'unset' if DATA_ENV not in os.environ else 'set'}); set data_dir or ${DATA_ENV}, "
            "or use data_source: hub"
        )
    return None


def _read_jsonl(path: Path) -> tuple[list[dict], list[int]]:
    """The rows of a JSONL file and their line numbers (blank lines skipped)."""
    if not path.is_file():
        raise UsageError(
            f"data file {path} does not exist; a local data dir holds mnli/train.jsonl, "
            "mnli/validation_matched.jsonl and hans/validation.jsonl"
        )
    rows, lines = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise UsageError(
                    f"{path} line {number} is not UTF-8 text (byte {raw[error.start]:#04x} at column "
                    f"{error.start + 1}); save the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as error:
                raise UsageError(
                    f"{path} line {number} is not valid JSON ({error}); a data file holds one JSON "
                    "object per line"
                ) from None
            if not isinstance(row, dict):
                raise UsageError(
                    f"{path} line {number} is a {type(row).__name__}, not a JSON object; a data file "
                    "holds one object per line with premise, hypothesis and label"
                )
            rows.append(row)
            lines.append(number)
    return rows, lines


def _load_hub(task: NLITask, split: str, data_source: str) -> Dataset:
    from datasets import load_dataset

    try:
        return load_dataset(task.hub_path, task.hub_name, split=split, revision=task.hub_revision)
    except Exception as error:  # noqa: BLE001 -- offline, unknown split, no access: one message for all
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if data_source == "hub":
            hint = "to read a local copy instead, set data_source: auto or local (with data_dir)"
        else:
            looked = ", ".join(str(c) for c in candidate_data_dirs())
            hint = f"no local copy was found (looked in: {looked}); set data_dir or ${DATA_ENV} to one"
        raise UsageError(
            f"cannot load {task.hub_path} split {split!r} from the Hub ({reason}); {hint}"
        ) from None


def load_split(
    task: NLITask,
    split: str,
    data_source: str = "auto",
    data_dir: str | None = None,
    keep_idx: bool = False,
    data_file: str | None = None,
    drop_invalid_rows: bool = False,
    reports: list | None = None,
) -> Dataset:
    """One split of a task with columns premise, hypothesis, label (task label ids) and the task's extras;
    with `keep_idx`, also the source's row id `idx` where it has one (to pin demonstrations by id).
    `data_file` reads that JSONL file (same columns and label ids) instead of the split. Rows the task
    cannot use are errors unless `drop_invalid_rows` (see `data_report.check_rows`); what was read, kept
    and dropped is appended to `reports` (a `DataReport`)."""
    from .data_report import check_rows

    directory = None if data_file else resolve_data_dir(data_source, data_dir)
    lines = None
    if directory is None and not data_file:
        dataset, where = _load_hub(task, split, data_source), f"{task.hub_path} ({split})"
    else:
        path = Path(data_file) if data_file else directory / task.local_dir / f"{split}.jsonl"
        (rows, lines), where = _read_jsonl(path), str(path)
        try:
            dataset = Dataset.from_list(rows)
        except ValueError as error:  # pyarrow: one column holding values of different types
            raise UsageError(
                f"{path} mixes value types in a column ({' '.join(str(error).split())}); every row "
                "needs the same types (premise and hypothesis text, label an integer id)"
            ) from None
    columns = (*REQUIRED_COLUMNS, *task.extra_columns)
    missing = [c for c in columns if c not in dataset.column_names]
    if missing:
        raise UsageError(
            f"{where} lacks column(s) {missing} (it has {dataset.column_names}); "
            f"task {task.name} needs {list(columns)}"
        )
    if keep_idx and "idx" in dataset.column_names:
        columns = ("idx", *columns)
    dataset = dataset.select_columns(list(columns))
    dataset, report = check_rows(dataset, task, where, lines, drop_invalid_rows)
    if reports is not None:
        reports.append(report)
    return dataset
