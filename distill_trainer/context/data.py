"""Rows for context distillation on any data: a context the teacher reads, a prompt both read, and an
optional completion.

    rows, report = load_context_rows("data.jsonl", prompt_column="question", context="Answer in French.")
    # [{"context": ..., "prompt": ..., "completion": ... or None}, ...]

Accepted as they are:
- any columns, named by `prompt_column`, `context_column`, `completion_column`; a `context` setting gives
  every row the same context (a system prompt) where a row has none;
- TRL's self-distillation (SDFT) rows: `prompt` + `privileged_context` (a prompt may be a list of chat
  messages, read as below);
- conversational rows, `messages`: the system message is the context to distil away, the user message
  the prompt, a final assistant message (if present) the completion.

A column that is not there, or a row without a prompt, stops the load with one line naming it and the
fix. Rows that cannot be used (no context at all, several user turns, a repeat of an earlier context and
prompt) are skipped and counted by reason in the `DataReport`, never dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from distill_trainer.errors import UsageError
from distill_trainer.nli.row_checks import DataReport

DEFAULT_PROMPT, DEFAULT_CONTEXT, SDFT_CONTEXT = "prompt", "context", "privileged_context"
DEFAULT_COMPLETION, DEFAULT_MESSAGES = "completion", "messages"


def read_records(source, split: str = "train") -> tuple[list[dict], str]:
    """(rows as dicts, a name for messages) from a JSONL/JSON file, a `save_to_disk` folder, a
    `datasets.Dataset`, or a Hub dataset id (its `split`)."""
    if hasattr(source, "column_names"):  # a datasets.Dataset given in Python
        return [dict(row) for row in source], "the dataset"
    path = Path(str(source))
    if path.is_file():
        if path.suffix == ".json":
            try:
                records = json.loads(path.read_text(encoding="utf-8"))
            except ValueError as error:
                raise UsageError(f"{path} is not valid JSON ({error}); fix the file") from None
            if not isinstance(records, list):
                raise UsageError(
                    f"{path} must hold a list of rows (objects); use JSON lines for one per line"
                )
            return records, str(path)
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as error:
                raise UsageError(f"{path} line {number} is not valid JSON ({error}); fix that line") from None
        return records, str(path)
    from datasets import load_dataset, load_from_disk

    if path.is_dir():
        loaded = load_from_disk(str(path))
        loaded = loaded[split] if hasattr(loaded, "keys") else loaded
        return [dict(row) for row in loaded], str(path)
    try:
        return [dict(row) for row in load_dataset(str(source), split=split)], f"{source} ({split})"
    except Exception as error:
        raise UsageError(
            f"cannot read data {source!r} ({str(error).splitlines()[0]}); give a JSONL file, a folder "
            "saved with save_to_disk, or a Hub dataset id with network access"
        ) from None


def _from_messages(messages, where: str) -> tuple[dict | None, str]:
    """(context/prompt/completion from a chat, "") or (None, why the row is skipped)."""
    if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
        raise UsageError(f"{where}: messages must be a list of {{'role', 'content'}} objects; fix the row")
    system = [m.get("content") or "" for m in messages if m["role"] == "system"]
    users = [m.get("content") or "" for m in messages if m["role"] == "user"]
    completion = None
    if messages and messages[-1]["role"] == "assistant":
        completion = messages[-1].get("content")
        messages = messages[:-1]
    if len(users) > 1 or any(m["role"] not in ("system", "user") for m in messages):
        return None, "multi-turn conversations"
    prompt = users[0] if users else ""
    return {"context": "\n\n".join(system), "prompt": prompt, "completion": completion}, ""


def _column(name: str | None, default: str, columns: set, where: str, setting: str) -> str | None:
    if name is None:
        return default if default in columns else None
    if name not in columns:
        raise UsageError(
            f"{where} has no column {name!r} (columns: {', '.join(sorted(columns))}); set {setting} to one "
            "of them"
        )
    return name


def load_context_rows(
    source,
    *,
    prompt_column: str | None = None,
    context_column: str | None = None,
    completion_column: str | None = None,
    messages_column: str | None = None,
    context: str | None = None,
    split: str = "train",
    limit: int | None = None,
) -> tuple[list[dict], DataReport]:
    """The usable rows of `source` as {"context", "prompt", "completion"} and what was read and skipped.

    `context` is the context of every row that brings none; `limit` keeps the first rows only."""
    records, where = read_records(source, split)
    if not records:
        raise UsageError(f"{where} has no rows; give a file with at least one row")
    columns = set().union(*(record.keys() for record in records if isinstance(record, dict)))
    # chat messages when asked for, or when they are there and no prompt column is
    messages = None
    if messages_column is not None:
        messages = _column(messages_column, DEFAULT_MESSAGES, columns, where, "messages_column")
    elif prompt_column is None and DEFAULT_PROMPT not in columns and DEFAULT_MESSAGES in columns:
        messages = DEFAULT_MESSAGES
    prompt = None if messages else _column(prompt_column, DEFAULT_PROMPT, columns, where, "prompt_column")
    if messages is None and prompt is None:
        raise UsageError(
            f"{where} has no prompt column (columns: {', '.join(sorted(columns))}); set prompt_column, or "
            "give rows with 'prompt' (and 'privileged_context'), or chat 'messages'"
        )
    default_context = SDFT_CONTEXT if SDFT_CONTEXT in columns else DEFAULT_CONTEXT
    context_name = _column(context_column, default_context, columns, where, "context_column")
    completion_name = _column(completion_column, DEFAULT_COMPLETION, columns, where, "completion_column")
    report, rows, seen, skipped = DataReport(where, read=len(records)), [], set(), Counter()
    for number, record in enumerate(records, start=1):
        line = f"{where} row {number}"
        if not isinstance(record, dict):
            raise UsageError(f"{line} is a {type(record).__name__}, not an object; fix the row")
        value = record.get(messages or prompt)
        if isinstance(value, list):  # chat messages, in the messages column or as an SDFT prompt
            row, reason = _from_messages(value, line)
        else:
            row, reason = {"context": "", "prompt": value, "completion": None}, ""
        if row is None:
            skipped[reason] += 1
            continue
        if context_name and record.get(context_name):
            row["context"] = record[context_name]
        if completion_name and record.get(completion_name) is not None:
            row["completion"] = record[completion_name]
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise UsageError(
                f"{line} has no prompt ({messages or prompt}: {row['prompt']!r}); give every row a prompt, "
                "or remove the row"
            )
        row["context"] = row["context"] or context or ""
        if not isinstance(row["context"], str) or not row["context"].strip():
            skipped["without a context"] += 1
            continue
        if (row["context"], row["prompt"]) in seen:
            skipped["repeated rows (same context and prompt)"] += 1
            continue
        seen.add((row["context"], row["prompt"]))
        if row["completion"] is not None and not isinstance(row["completion"], str):
            raise UsageError(f"{line}: the completion is a {type(row['completion']).__name__}, not text")
        rows.append(row)
    if limit is not None and len(rows) > limit:
        skipped[f"beyond the first {limit} (num_examples)"] += len(rows) - limit
        rows = rows[:limit]
    report.kept, report.dropped = len(rows), dict(skipped)
    if not rows:
        raise UsageError(f"{report.line()}; no usable rows are left (set context for rows without one)")
    return rows, report


def load_run_rows(data_args) -> tuple[list[dict], list[dict], list[DataReport]]:
    """(training rows, held-out rows, what each file's load read and skipped) for a `ContextDataArguments`."""
    options = data_args.column_settings()
    train_rows, report = load_context_rows(data_args.data_file, **options, limit=data_args.num_train_examples)
    reports, eval_rows = [report], []
    if data_args.eval_data_file:
        eval_rows, report = load_context_rows(
            data_args.eval_data_file, **options, limit=data_args.num_eval_examples
        )
        reports.append(report)
    return train_rows, eval_rows, reports
