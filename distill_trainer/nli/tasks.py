"""NLI tasks: their registry and loading MNLI and HANS (Hub or local directory).
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
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from distill_trainer.errors import UsageError

DATA_ENV = "DISTILL_TRAINER_DATA"
# a source checkout ships the offline MNLI and HANS files in data/ (see data/README.md)
REPO_ROOT = Path(__file__).resolve().parents[2]
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


# ---------------------------------------------------------------- loading


def candidate_data_dirs() -> list[Path]:
    """Where a local data directory is looked for when none is given, in order."""
    candidates = []
    if os.environ.get(DATA_ENV):
        candidates.append(Path(os.environ[DATA_ENV]))
    return candidates + [REPO_ROOT / "data"]


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


def hub_unreachable_reason(timeout: float = 3.0) -> str | None:
    """Why the Hub cannot be reached right now (offline mode set, or no connection within `timeout`
    seconds), or None. Asked before a dataset download so that a machine without network fails at once,
    not after the download's retry loop."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name} is set"
    import socket
    from urllib.parse import urlparse

    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = (
        endpoint.hostname or "huggingface.co",
        endpoint.port or (80 if endpoint.scheme == "http" else 443),
    )
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        return f"{host} cannot be reached ({type(error).__name__})"
    return None


def _load_hub(task: NLITask, split: str, data_source: str) -> Dataset:
    from datasets import load_dataset

    def failure(reason: str) -> UsageError:
        if data_source == "hub":
            hint = "to read a local copy instead, set data_source: auto or local (with data_dir)"
        else:
            looked = ", ".join(str(c) for c in candidate_data_dirs())
            hint = f"no local copy was found (looked in: {looked}); set data_dir or ${DATA_ENV} to one"
        return UsageError(f"cannot load {task.hub_path} split {split!r} from the Hub ({reason}); {hint}")

    unreachable = hub_unreachable_reason()
    if unreachable:
        raise failure(unreachable)
    try:
        return load_dataset(task.hub_path, task.hub_name, split=split, revision=task.hub_revision)
    except Exception as error:  # noqa: BLE001 -- offline, unknown split, no access: one message for all
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        raise failure(reason) from None


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
    cannot use are errors unless `drop_invalid_rows` (see `row_checks.check_rows`); what was read, kept
    and dropped is appended to `reports` (a `DataReport`)."""
    from distill_trainer.models.provenance import (
        data_source as rows_source,  # `data_source` is an argument here
    )
    from distill_trainer.nli.row_checks import check_rows

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
    # named by what the rows are, not by the split they stand in for (a card reports results under it)
    report.source = rows_source(task, split, None if lines is None else path)
    if reports is not None:
        reports.append(report)
    return dataset
