"""On-policy steps (lmbda): the student writes the replies, the teacher grades exactly those tokens with
the context in its view, a mix uses each source at its rate, and a rerun with the same seed repeats."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from helpers import make_args

from distill_trainer import ContextDistillationTrainer, TwoViewCollator
from distill_trainer.errors import UsageError
from distill_trainer.teacher import generation
from distill_trainer.testing import build_chat_tokenizer, build_model
from distill_trainer.training.rollouts import common_prefix_length, is_on_policy_step
from distill_trainer.views.chat import build_chat_views, chat_prompt_ids

CONTEXT = "Answer with one Python function."
PROMPTS = ["Write a cat.", "A dog runs in the park", "The doctor saw the lawyer", "Two dogs run"]


@pytest.fixture(scope="module")
def tok():
    return build_chat_tokenizer()


def _trainer(tmp_path, tok, lmbda, seed=0, **overrides):
    student = build_model(len(tok), seed=0)
    teacher = build_model(len(tok), seed=1, hidden_size=48)
    rows = [build_chat_views(tok, p, "def cat(): pass", CONTEXT) for p in PROMPTS]
    settings = dict(max_steps=4, per_device_train_batch_size=2, loss="reverse_kl", rollout_max_new_tokens=5)
    settings.update(overrides)
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, lmbda=lmbda, seed=seed, **settings),
        train_dataset=Dataset.from_list(rows),
        data_collator=TwoViewCollator(tok.pad_token_id),
        processing_class=tok,
    )
    return trainer, student, teacher


def _spy_generation(monkeypatch):
    calls = []
    real = generation.generate_replies

    def spy(model, prompts, *args, **kwargs):
        replies = real(model, prompts, *args, **kwargs)
        calls.append({"model": model, "prompts": prompts, "replies": replies})
        return replies

    monkeypatch.setattr(generation, "generate_replies", spy)
    return calls


def _contains(sequence: list[int], part: list[int]) -> bool:
    return any(sequence[i : i + len(part)] == part for i in range(len(sequence) - len(part) + 1))


@pytest.mark.integration
def test_an_on_policy_step_grades_the_students_own_reply_with_the_context_in_the_teachers_view(
    tmp_path, tok, monkeypatch
):
    trainer, student, teacher = _trainer(tmp_path, tok, lmbda=1.0, max_steps=1)
    calls = _spy_generation(monkeypatch)
    teacher.generate = lambda *a, **k: pytest.fail("the teacher must not write on-policy replies")
    graded = []
    real = trainer.teacher_answer_hidden

    def grading(inputs):
        graded.append({key: value.clone() for key, value in inputs.items()})
        return real(inputs)

    trainer.teacher_answer_hidden = grading
    trainer.train()
    assert len(calls) == 1 and calls[0]["model"] is student
    (batch,) = graded
    context_ids = tok(CONTEXT, add_special_tokens=False)["input_ids"]
    width = batch["answer_mask"].shape[1]
    for row, reply in enumerate(calls[0]["replies"]):
        answer = batch["answer_ids"][row][batch["answer_mask"][row]].tolist()
        assert answer == reply  # the loss is taken at exactly the student's reply tokens
        student_view = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        teacher_view = batch["teacher_input_ids"][row][batch["teacher_attention_mask"][row].bool()].tolist()
        assert student_view == calls[0]["prompts"][row] + reply
        assert teacher_view[-len(reply) :] == reply
        assert _contains(teacher_view, context_ids) and not _contains(student_view, context_ids)
        first = width - len(reply)
        assert int(batch["teacher_answer_positions"][row, first]) == len(teacher_view) - len(reply) - 1
    # the context ran through the teacher's prefix KV cache
    assert "teacher_prefix_ids" in batch
    assert trainer.rollout_steps == [(0, "student")]


@pytest.mark.integration
@pytest.mark.parametrize(("lmbda", "steps", "student_steps"), [(0.5, 6, 3), (1 / 3, 6, 2), (0.25, 8, 2)])
def test_a_mixed_run_uses_each_source_at_its_rate(tmp_path, tok, monkeypatch, lmbda, steps, student_steps):
    calls = _spy_generation(monkeypatch)
    trainer, _, _ = _trainer(tmp_path, tok, lmbda=lmbda, max_steps=steps)
    trainer.train()
    sources = [source for _, source in trainer.rollout_steps]
    assert len(sources) == steps and sources.count("student") == student_steps == len(calls)
    assert [is_on_policy_step(i, lmbda) for i in range(steps)] == [s == "student" for s in sources]
    logged = [log["on_policy"] for log in trainer.state.log_history if "on_policy" in log]
    assert sum(logged) == student_steps


@pytest.mark.integration
def test_a_rerun_with_the_same_seed_repeats_and_another_seed_samples_differently(tmp_path, tok, monkeypatch):
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 5)):
        calls = _spy_generation(monkeypatch)
        trainer, student, _ = _trainer(tmp_path / name, tok, lmbda=1.0, seed=seed, max_steps=2)
        trainer.train()
        weights = {n: p.detach().clone() for n, p in student.named_parameters()}
        runs.append(([c["replies"] for c in calls], weights))
    (replies_a, weights_a), (replies_b, weights_b), (replies_c, _) = runs
    assert replies_a == replies_b
    assert all(torch.equal(weights_a[n], weights_b[n]) for n in weights_a)
    assert replies_a != replies_c


@pytest.mark.integration
def test_gradient_accumulation_counts_the_rollouts_answer_tokens(tmp_path, tok, monkeypatch):
    counts = []
    trainer, _, _ = _trainer(
        tmp_path, tok, lmbda=1.0, max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=2
    )
    real = trainer.compute_loss

    def counting(model, inputs, return_outputs=False, num_items_in_batch=None):
        counts.append((int(inputs["answer_mask"].sum()), int(num_items_in_batch)))
        return real(model, inputs, return_outputs, num_items_in_batch)

    trainer.compute_loss = counting
    trainer.train()
    assert len(counts) == 2 and all(total == counts[0][0] + counts[1][0] for _, total in counts)


def test_what_on_policy_cannot_do_is_refused(tmp_path, tok):
    with pytest.raises(UsageError, match="teacher_output_cache"):
        _trainer(tmp_path, tok, lmbda=1.0, teacher_output_cache=True)
    with pytest.raises(UsageError, match="lmbda must be in"):
        make_args(tmp_path, lmbda=1.5)


def test_common_prefix_leaves_every_prompt_a_token(tok):
    prompts = [chat_prompt_ids(tok, p) for p in PROMPTS]
    length = common_prefix_length(prompts)
    assert all(p[:length] == prompts[0][:length] for p in prompts)
    assert 0 < length < min(map(len, prompts))
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2


@pytest.mark.integration
def test_on_policy_with_a_bfloat16_base_and_float32_adapters_trains_the_adapters(tmp_path, tok):
    """The presets' setting: a LoRA student on a frozen bfloat16 base, its own teacher (adapters off)."""
    from peft import LoraConfig, get_peft_model

    base = build_model(len(tok), seed=0).to(torch.bfloat16)
    student = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    rows = [build_chat_views(tok, p, "def cat(): pass", CONTEXT) for p in PROMPTS]
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer = ContextDistillationTrainer(
        model=student,
        teacher="self",
        args=make_args(
            tmp_path,
            lmbda=1.0,
            bf16=True,
            max_steps=2,
            per_device_train_batch_size=2,
            rollout_max_new_tokens=4,
        ),
        train_dataset=Dataset.from_list(rows),
        data_collator=TwoViewCollator(tok.pad_token_id),
        processing_class=tok,
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = {n for n, p in student.named_parameters() if not torch.equal(before[n], p)}
    assert changed and all("lora_" in n for n in changed)  # the base never moves
