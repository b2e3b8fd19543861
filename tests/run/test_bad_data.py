"""Bad inputs, data (the catalogue's rules are in bad_inputs.py): missing or malformed files, rows the task
cannot use, rows longer than the model's positions."""

from __future__ import annotations

import json

import pytest
from bad_inputs import LONG, Case, change_field, check_bad_input, data_setup, relabel, with_line

CASES = [
    # ---- data files
    Case(
        "missing-data-dir",
        "icl_eval",
        {"data_dir": "no/such/dir"},
        problem="data_dir no/such/dir does not exist",
        fix="give a directory holding mnli/ and hans/",
    ),
    Case(
        "data-file-missing",
        "icl_eval",
        setup=data_setup("hans", "validation", lambda rows: None),
        problem=r"data file .*hans/validation\.jsonl does not exist",
        fix="a local data dir holds",
    ),
    Case(
        "data-file-missing-a-column",
        "icl_eval",
        setup=data_setup(
            "hans",
            "validation",
            lambda rows: [
                json.dumps({k: v for k, v in json.loads(r).items() if k != "heuristic"}) for r in rows
            ],
        ),
        problem=r"lacks column\(s\) \['heuristic'\]",
        fix="task hans needs",
    ),
    Case(
        "data-file-broken-line",
        "icl_eval",
        setup=data_setup("mnli", "train", lambda rows: rows[:2] + ['{"premise": "cut off'] + rows[2:]),
        problem="line 3 is not valid JSON",
        fix="one JSON object per line",
    ),
    Case(
        "labels-as-words",
        "icl_eval",
        setup=data_setup(
            "mnli", "train", lambda rows: relabel(rows, lambda i, label: ["yes", "maybe", "no"][label])
        ),
        problem="has no rows with the labels of task mnli",
        fix=r"integer ids \[0, 2\]",
    ),
    Case(
        "labels-of-mixed-types",
        "icl_eval",
        setup=data_setup(
            "mnli", "train", lambda rows: relabel(rows, lambda i, label: "no" if i == 5 else label)
        ),
        problem="mixes value types in a column",
        fix="label an integer id",
    ),
    # ---- data rows the task cannot use (issue 12, class 1)
    Case(
        "mnli-file-already-binary",
        "icl_eval",
        setup=data_setup("mnli", "train", lambda rows: relabel(rows, lambda i, label: min(label, 1))),
        problem=r"has no rows of task label 1 \(contradiction, source id 2\)",
        fix="write its labels with the Hub",
    ),
    Case(
        "hans-row-with-label-2",
        "icl_eval",
        setup=data_setup(
            "hans", "validation", lambda rows: relabel(rows, lambda i, label: 2 if i == 3 else label)
        ),
        problem=r"hans/validation\.jsonl line 4: label 2 is not a label id of hans "
        r"\(0 entailment, 1 non-entailment",
        fix="set drop_invalid_rows: true",
    ),
    Case(
        "mnli-row-with-label-7",
        "icl_eval",
        setup=data_setup(
            "mnli", "validation_matched", lambda rows: relabel(rows, lambda i, lab: 7 if i == 0 else lab)
        ),
        problem=r"validation_matched\.jsonl line 1: label 7 is not a label id of mnli",
        fix="fix or remove the row",
    ),
    Case(
        "empty-premise",
        "pattern_finetune",
        setup=data_setup("mnli", "train", change_field("premise", "  ", lambda i: i == 1)),
        problem=r"train\.jsonl line 2: premise is empty",
        fix="drop_invalid_rows: true to drop such rows",
    ),
    Case(
        "null-hypothesis",
        "pattern_finetune",
        setup=data_setup("mnli", "train", change_field("hypothesis", None, lambda i: i == 4)),
        problem=r"train\.jsonl line 5: hypothesis is missing \(null\)",
        fix="counted in metrics.json",
    ),
    Case(
        "empty-hypothesis-in-an-eval-file",
        "icl_eval",
        setup=data_setup("hans", "validation", change_field("hypothesis", "", lambda i: i == 9)),
        problem=r"hans/validation\.jsonl line 10: hypothesis is empty",
        fix="fix or remove the row, or set",
    ),
    Case(
        "bytes-that-are-not-utf8",
        "icl_eval",
        setup=with_line("mnli", "train", 3, b'{"premise": "caf\xe9", "hypothesis": "x", "label": 0}'),
        problem=r"train\.jsonl line 3 is not UTF-8 text \(byte 0xe9 at column 17\)",
        fix="save the file as UTF-8",
    ),
    Case(
        "repeated-row",
        "pattern_finetune",
        setup=data_setup("mnli", "train", lambda rows: rows + rows[:1]),
        problem=r"train\.jsonl line 37: repeats line 1 \(same premise and hypothesis\)",
        fix="drop such rows",
    ),
    # ---- rows longer than the model's positions (class 2)
    Case(
        "long-premise-in-training-rows",
        "pattern_finetune",
        setup=data_setup("mnli", "train", change_field("premise", lambda row: LONG + row["premise"])),
        problem=r"training row \d+ is \d+ tokens with its answer, more than the student's 1024 positions",
        fix="shorten or remove that row",
    ),
    Case(
        "long-premise-in-evaluation-rows",
        "pattern_finetune",
        setup=data_setup("mnli", "validation_matched", change_field("premise", LONG, lambda i: i == 5)),
        problem=r"mnli evaluation row \d+ is \d+ tokens .* student's 1024 positions "
        r"\(premise starts 'the cat",
        fix="queries are never truncated",
    ),
    Case(
        "long-premise-zero-shot",
        "icl_eval",
        {"k": 0},
        setup=data_setup("hans", "validation", change_field("premise", LONG, lambda i: i == 7)),
        problem=r"hans evaluation row \d+ is \d+ tokens with its answer, more than the model's "
        r"1024 positions",
        fix="shorten or remove",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch):
    check_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch)
