"""The comparison table's columns: one entry each, its header and how its cell is read from a method's
summary row (`tables.load_method_result`). A new column is one more entry in COLUMNS; the console table
and summary.md both follow the list.

    [column.header for column in COLUMNS]        # the header line
    table_rows(summary)                          # one list of cells per method, in COLUMNS order
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass


def percent(value, stderr=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{100 * value:.1f}" + (f" ±{100 * stderr:.1f}" if stderr is not None else "")


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def method_label(row: dict) -> str:
    """The method's name, marked when it is a memory probe or was read back from an earlier run."""
    notes = []
    if row.get("memory_probe_steps"):
        notes.append(f"memory probe, {row['memory_probe_steps']} steps")
    if row.get("reused_from"):
        notes.append("reused")
    if row.get("scores_read_back"):
        notes.append("scores read back, memory not measured")
    return row["method"] + (f" ({', '.join(notes)})" if notes else "")


@dataclass(frozen=True)
class Column:
    header: str
    cell: Callable[[dict], str]  # a method's summary row -> the text in this column


def _task(name: str) -> Callable[[dict], dict]:
    return lambda row: row["eval"].get(name, {})


def _accuracy(task: str) -> Column:
    metrics = _task(task)
    return Column(
        f"{task.upper()} acc",
        lambda row: percent(metrics(row).get("accuracy"), metrics(row).get("accuracy_stderr")),
    )


def _auc(task: str) -> Column:
    return Column(f"{task.upper()} AUC", lambda row: number(_task(task)(row).get("auc"), ".2f"))


def _agreement(task: str) -> Column:
    return Column(f"{task.upper()} agree", lambda row: percent(_task(task)(row).get("teacher_agreement")))


def method_memory(row: dict) -> float | None:
    """The MiB a method is judged on: what it needs (its teacher pass, training or evaluation, never the
    page cache of a load), or its resident peak for a row recorded before that was measured."""
    needed = row.get("needed_memory_mib")
    return needed if needed is not None else row.get("peak_memory_mib")


def _phases(key: str) -> Callable[[dict], str]:
    def cell(row: dict) -> str:
        peaks = row.get(key) or {}
        return "/".join(number(peaks.get(phase), ".0f") for phase in ("load", "teacher_pass", "train"))

    return cell


def _needed_against_estimate(row: dict) -> str:
    needed, estimate = row.get("needed_memory_mib"), row.get("estimate_mib")
    if needed is None:
        return "-"
    return f"{needed:.0f}" + (f" ({needed / estimate:.2f}x est.)" if estimate else "")


# how far a measured figure may sit from its analytic estimate before the table explains it
ESTIMATE_TOLERANCE = 1.25


def estimate_note(summary: dict) -> str | None:
    """The rows whose needed memory sits outside 1/1.25x to 1.25x of the estimate, and why."""
    off = [
        f"{row['method']} ({row['needed_memory_mib'] / row['estimate_mib']:.2f}x)"
        for row in summary["methods"]
        if row.get("needed_memory_mib") and row.get("estimate_mib")
        and not 1 / ESTIMATE_TOLERANCE <= row["needed_memory_mib"] / row["estimate_mib"] <= ESTIMATE_TOLERANCE
    ]  # fmt: skip
    if not off:
        return None
    return (
        f"More than {ESTIMATE_TOLERANCE}x from the estimate: {', '.join(off)}. The estimate holds what the "
        "longest batch's forward keeps for the backward; a training phase also needs the backward's own "
        "buffers and what the C heap keeps of the blocks a step freed for the next one (glibc hands them "
        "back only when trimmed), which the estimate does not model and which weigh most where the "
        "rest is small: a LoRA student without a resident teacher (docs/memory.md)."
    )


def _first_label_share(row: dict) -> str:
    balance = _task("mnli")(row).get("predicted_label_balance") or {None: None}
    return percent(next(iter(balance.values())))


def _per_label(row: dict) -> str:
    return "/".join(percent(v) for v in (_task("hans")(row).get("per_label_accuracy") or {}).values()) or "-"


COLUMNS = (
    Column("method", method_label),
    Column("trainable", lambda row: f"{row['trainable_parameters']:,}"),
    Column("needed MiB", _needed_against_estimate),
    Column("needed load/teacher/train", _phases("phase_needed_mib")),
    Column("resident peak MiB", lambda row: number(row["peak_memory_mib"], ".0f")),
    Column("train s", lambda row: number(row["train_seconds"], ".0f")),
    Column("eval s", lambda row: number(row["eval_seconds"], ".0f")),
    _accuracy("mnli"),
    _auc("mnli"),
    _agreement("mnli"),
    Column("MNLI pred. 0", _first_label_share),
    _accuracy("hans"),
    _auc("hans"),
    Column("HANS ent/non", _per_label),
    _agreement("hans"),
)

LEGEND = (
    "Accuracies and agreements in %, ± one standard error. *agree*: share of rows where the method predicts "
    "what the ICL teacher predicts. *pred. 0*: share of rows predicted as label 0 (entailment). *HANS "
    "ent/non*: accuracy on HANS entailment / non-entailment rows. AUC: of the label-word margin (0.5 = the "
    "classes are not told apart). *Needed MiB*: the memory the method needs to run (runtime included): "
    "the most that its teacher pass, training or evaluation needed, each being its anonymous memory at peak "
    "plus the file pages still mapped when it ended (docs/memory.md), beside the analytic estimate of the "
    "same phase (*x est.*). *needed load/teacher/train*: the same per phase; loading is a transient, shown "
    "apart and not judged (- when a phase did not run, e.g. a teacher pass whose outputs were cached). "
    "*Resident peak MiB*: the process's peak resident set, which also counts the clean page cache of "
    "checkpoints memory-mapped while loading."
)


def headers() -> list[str]:
    return [column.header for column in COLUMNS]


def table_rows(summary: dict) -> list[list[str]]:
    return [[column.cell(row) for column in COLUMNS] for row in summary["methods"]]
