"""The comparison table's columns are one list: every row has one cell per entry, in the entries' order,
and both the console table and summary.md follow it."""

from distill_trainer.report.columns import COLUMNS, headers, table_rows
from distill_trainer.report.tables import format_markdown, format_table


def method_row(**changes) -> dict:
    row = {
        "method": "cd_lora",
        "trainable_parameters": 1234,
        "peak_memory_mib": 512.4,
        "phase_peak_mib": {"load": 100.0, "teacher_pass": None, "train": 300.0},
        "phase_needed_mib": {"load": 90.0, "teacher_pass": None, "train": 250.0},
        "needed_memory_mib": 250.0,
        "estimate_mib": 200.0,
        "train_seconds": 12.0,
        "eval_seconds": 3.0,
        "eval": {
            "mnli": {"accuracy": 0.5, "accuracy_stderr": 0.05, "auc": 0.61, "teacher_agreement": 0.75},
            "hans": {"accuracy": 0.25, "per_label_accuracy": {"entailment": 0.5, "non-entailment": 0.0}},
        },
    }
    return {**row, **changes}


def test_every_row_has_one_cell_per_column_in_order():
    summary = {"methods": [method_row(), method_row(method="zero_shot", reused_from="earlier")]}
    rows = table_rows(summary)
    assert all(len(cells) == len(COLUMNS) for cells in rows)
    cell = dict(zip(headers(), rows[0]))
    assert cell["trainable"] == "1,234"
    assert cell["needed load/teacher/train"] == "90/-/250"
    assert cell["needed MiB"] == "250 (1.25x est.)"
    assert cell["resident peak MiB"] == "512"
    assert cell["MNLI acc"] == "50.0 ±5.0"
    assert cell["MNLI AUC"] == "0.61"
    assert cell["MNLI agree"] == "75.0"
    assert cell["HANS ent/non"] == "50.0/0.0"
    assert cell["HANS AUC"] == "-"
    assert rows[1][0] == "zero_shot (reused)"


def test_console_table_and_markdown_follow_the_list():
    summary = {"methods": [method_row()], "settings": {"student": "tiny"}}
    assert format_table(summary).splitlines()[0].split()[:2] == ["method", "trainable"]
    markdown = format_markdown(summary)
    assert "| " + " | ".join(headers()) + " |" in markdown
    assert "| " + " | ".join(table_rows(summary)[0]) + " |" in markdown


def test_rows_far_from_their_estimate_are_named_with_the_reason():
    from distill_trainer.report.columns import estimate_note

    near = method_row(method="cd_full", needed_memory_mib=1200.0, estimate_mib=1000.0)
    above = method_row(method="pbft_lora", needed_memory_mib=1500.0, estimate_mib=1000.0)
    below = method_row(method="cd_bitfit", needed_memory_mib=700.0, estimate_mib=1000.0)
    unestimated = method_row(method="zero_shot", needed_memory_mib=900.0, estimate_mib=None)
    assert estimate_note({"methods": [near, unestimated]}) is None
    note = estimate_note({"methods": [near, above, below, unestimated]})
    assert "pbft_lora (1.50x)" in note and "cd_bitfit (0.70x)" in note
    assert "cd_full" not in note and "zero_shot" not in note and "heap" in note
