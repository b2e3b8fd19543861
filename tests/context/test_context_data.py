"""Loading rows for context distillation: own column names, TRL's SDFT and chat `messages` rows, one error
line for a bad column or a row without a prompt, and skipped rows counted by reason."""

from __future__ import annotations

import json

import pytest
from datasets import Dataset

from distill_trainer.context.data import load_context_rows
from distill_trainer.errors import UsageError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def one_line_error(match, **kwargs):
    with pytest.raises(UsageError, match=match) as error:
        load_context_rows(**kwargs)
    assert "\n" not in str(error.value)
    return str(error.value)


def test_own_column_names_and_a_fixed_context(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"question": "What is 2+2?", "answer": "4"}, {"question": "Name a color."}],
    )
    rows, report = load_context_rows(
        path, prompt_column="question", completion_column="answer", context="Be brief."
    )
    assert rows == [
        {"context": "Be brief.", "prompt": "What is 2+2?", "completion": "4"},
        {"context": "Be brief.", "prompt": "Name a color.", "completion": None},
    ]
    assert (report.read, report.kept, report.dropped) == (2, 2, {})


def test_sdft_rows_load_as_they_are(tmp_path):
    data = Dataset.from_list(
        [
            {"prompt": "Solve x + 1 = 3.", "privileged_context": "The answer is x = 2."},
            {"prompt": "Solve 2x = 8.", "privileged_context": "The answer is x = 4."},
        ]
    )
    rows, report = load_context_rows(data)
    assert [(r["context"], r["prompt"], r["completion"]) for r in rows] == [
        ("The answer is x = 2.", "Solve x + 1 = 3.", None),
        ("The answer is x = 4.", "Solve 2x = 8.", None),
    ]
    assert report.kept == 2


def test_sdft_prompt_given_as_chat_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [{"prompt": [{"role": "user", "content": "Hi?"}], "privileged_context": "Say hello."}],
    )
    rows, _ = load_context_rows(path)
    assert rows == [{"context": "Say hello.", "prompt": "Hi?", "completion": None}]


def test_messages_rows_system_is_the_context_final_assistant_the_completion(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Talk like a pirate."},
                    {"role": "user", "content": "Where is the gold?"},
                    {"role": "assistant", "content": "Arr, buried it be."},
                ]
            },
            {
                "messages": [
                    {"role": "system", "content": "Talk like a pirate."},
                    {"role": "user", "content": "Hi"},
                ]
            },
            # no system message and no fixed context: nothing to distil, skipped and counted
            {"messages": [{"role": "user", "content": "Plain question"}]},
            # two user turns: skipped and counted
            {
                "messages": [
                    {"role": "system", "content": "S"},
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            },
        ],
    )
    rows, report = load_context_rows(path)
    assert rows == [
        {
            "context": "Talk like a pirate.",
            "prompt": "Where is the gold?",
            "completion": "Arr, buried it be.",
        },
        {"context": "Talk like a pirate.", "prompt": "Hi", "completion": None},
    ]
    assert (report.read, report.kept) == (4, 2)
    assert report.dropped == {"without a context": 1, "multi-turn conversations": 1}
    assert "2 kept; dropped: " in report.line()


def test_repeats_and_the_limit_are_counted(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": p} for p in ["a", "b", "a", "c", "d"]])
    rows, report = load_context_rows(path, context="C", limit=2)
    assert [r["prompt"] for r in rows] == ["a", "b"]
    assert report.dropped == {
        "repeated rows (same context and prompt)": 1,
        "beyond the first 2 (num_examples)": 2,
    }


def test_a_bad_column_name_is_one_error_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "context": "b"}])
    message = one_line_error("no column 'question'", source=path, prompt_column="question")
    assert "prompt_column" in message and "context, prompt" in message
    one_line_error("set context_column", source=path, context_column="ctx")
    one_line_error("set completion_column", source=path, completion_column="answer")


def test_no_prompt_column_at_all_is_one_error_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": "a"}])
    one_line_error("no prompt column", source=path, context="C")


@pytest.mark.parametrize("prompt", [None, "", "   "])
def test_a_row_without_a_prompt_is_one_error_line_naming_the_row(tmp_path, prompt):
    path = write_jsonl(tmp_path / "d.jsonl", [{"prompt": "fine"}, {"prompt": prompt}])
    one_line_error("row 2 has no prompt", source=path, context="C")


def test_a_messages_row_without_a_user_turn_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "system", "content": "S"}]}])
    one_line_error("row 1 has no prompt", source=path)


def test_a_broken_json_line_is_one_error_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": \n')
    one_line_error("line 2 is not valid JSON", source=str(path), context="C")
