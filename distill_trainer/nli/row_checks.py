"""What a data loader read, and the row checks behind it: rows kept, rows dropped and why.

    rows = check_rows(dataset, task, where, lines, drop=False)   # a row the task cannot use is an error
    report = rows.report                                          # DataReport: read, kept, dropped by reason
    # data/mnli/train.jsonl: 36 rows read, 24 kept; dropped: 12 neutral (not in task mnli)
    print(report.line())

A row the task cannot use (empty or missing text, a label outside the source dataset's ids, a repeat of
an earlier row) stops the run with the file, the line and the fix, unless the recipe sets
`drop_invalid_rows: true`; then it is dropped and counted. Rows whose (valid) source label the task does
not use, such as MNLI's neutral rows in the binary task, are dropped by the task's definition and counted.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from distill_trainer.errors import UsageError
from distill_trainer.models.provenance import DataSource

DROP_HINT = (
    "fix or remove the row, or set drop_invalid_rows: true to drop such rows (counted in metrics.json)"
)


@dataclass
class DataReport:
    """One file (or Hub split): how many rows were read and kept, and the dropped ones by reason."""

    where: str
    read: int = 0
    kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    source: DataSource | None = None  # what the rows are (provenance.data_source), for cards and summaries

    def line(self) -> str:
        text = f"{self.where}: {self.read} rows read, {self.kept} kept"
        if self.dropped:
            text += "; dropped: " + ", ".join(f"{n} {reason}" for reason, n in self.dropped.items())
        return text

    def as_dict(self) -> dict:
        values = {"read": self.read, "kept": self.kept, "dropped": dict(self.dropped)}
        if self.source is not None:
            values["source"] = self.source.as_dict()
        return values


def _text_problem(name: str, value) -> str | None:
    if value is None:
        return f"{name} is missing (null)"
    if not isinstance(value, str):
        return f"{name} is a {type(value).__name__} ({value!r}), not text"
    if not value.strip():
        return f"{name} is empty"
    return None


def column_values(dataset, name: str) -> list:
    """A dataset's column as a Python list. `dataset[name]` is a lazy column since datasets 4, and
    iterating it formats one row at a time, about 100 times slower than reading the column at once."""
    return dataset[name][:]


def _label_problem(label, task) -> str | None:
    if isinstance(label, bool) or not isinstance(label, int) or label not in task.source_labels:
        ids = ", ".join(f"{i} {name}" for i, name in zip(task.source_labels, task.source_label_names))
        return f"label {label!r} is not a label id of {task.name} ({ids})"
    return None


def check_rows(dataset, task, where: str, lines: list[int] | None = None, drop: bool = False):
    """(the rows the task uses with task labels, a DataReport); `lines` are the rows' line numbers in
    the file."""
    lines = lines or list(range(1, len(dataset) + 1))
    premises, hypotheses, labels = (column_values(dataset, c) for c in ("premise", "hypothesis", "label"))
    label_map = task.label_map or {i: i for i in task.source_labels}
    if not any(not isinstance(label, bool) and label in label_map for label in labels):
        raise UsageError(
            f"{where} has no rows with the labels of task {task.name}; its label column must hold "
            f"the integer ids {sorted(label_map)} of the Hub dataset"
        )
    report, keep, seen = DataReport(where, read=len(dataset)), [], {}
    dropped: Counter = Counter()
    for index, (premise, hypothesis, label) in enumerate(zip(premises, hypotheses, labels)):
        problem = (
            _text_problem("premise", premise)
            or _text_problem("hypothesis", hypothesis)
            or _label_problem(label, task)
        )
        reason = problem.split(" (")[0] if problem else None
        if problem is None and (premise, hypothesis) in seen:
            problem = f"repeats line {seen[(premise, hypothesis)]} (same premise and hypothesis)"
            reason = "repeated rows"
        if problem is not None:
            if not drop:
                raise UsageError(f"{where} line {lines[index]}: {problem}; {DROP_HINT}")
            dropped[reason] += 1
            continue
        seen[(premise, hypothesis)] = lines[index]
        if label not in label_map:  # a valid source label the task leaves out by definition
            name = task.source_label_names[task.source_labels.index(label)]
            dropped[f"{name} (label {label}, not in task {task.name})"] += 1
            continue
        keep.append(index)
    report.kept, report.dropped = len(keep), dict(dropped)
    dataset = _select_relabelled(dataset, keep, label_map)
    _check_every_label_present(dataset, task, where)
    return dataset, report


def _select_relabelled(dataset, keep: list[int], label_map: dict):
    import datasets

    quiet = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        if len(keep) != len(dataset):
            dataset = dataset.select(keep)
        labels = [label_map[label] for label in column_values(dataset, "label")]
        return dataset.remove_columns("label").add_column("label", labels)
    finally:
        if not quiet:
            datasets.enable_progress_bars()


def _check_every_label_present(dataset, task, where: str) -> None:
    """A task label with no rows at all: most often a file already relabelled (e.g. binary MNLI as 0/1)."""
    present = set(column_values(dataset, "label"))
    label_map = task.label_map or {i: i for i in task.source_labels}
    for task_label, name in enumerate(task.label_names):
        if task_label not in present:
            sources = [s for s, t in label_map.items() if t == task_label]
            raise UsageError(
                f"{where} has no rows of task label {task_label} ({name}, source id "
                f"{' or '.join(map(str, sources))}) for task {task.name}; if the file is already relabelled, "
                "write its labels with the Hub dataset's ids "
                f"({', '.join(f'{i} {n}' for i, n in zip(task.source_labels, task.source_label_names))})"
            )


def print_reports(reports) -> None:
    import sys

    for report in reports:
        print(f"data: {report.line()}", file=sys.stderr, flush=True)
