"""The student's shared-prefix forward gives the plain forward's states and gradients, and a trainer that
uses it trains to the same weights."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import make_args

from distill_trainer import ContextDistillationTrainer, TwoViewCollator
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.loading import prepare_student
from distill_trainer.models.output_head import output_head_removed
from distill_trainer.teacher.prefix_cache import PrefixCachedModel
from distill_trainer.training import student_forward
from distill_trainer.training.student_forward import batch_shared_prefix, student_answer_states

PREFIX = [5, 9, 14, 3, 7, 21, 8, 30, 11, 4]  # what a chat template puts before every question


def _batch(vocab: int, lengths=(7, 4, 11), answer: int = 3):
    """Right-padded rows that start with PREFIX, then tokens of their own; the last `answer` positions of
    each row are the wanted ones (as the collator gives them: shorter answers repeat their first)."""
    generator = torch.Generator().manual_seed(0)
    rows = [PREFIX + torch.randint(40, vocab, (n,), generator=generator).tolist() for n in lengths]
    width = max(map(len, rows)) + 2
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), 1
    positions = torch.tensor([[len(row) - 1 - k for k in range(answer, 0, -1)] for row in rows])
    return ids, mask, positions


def test_the_shared_prefix_ends_at_padding_a_difference_or_the_first_wanted_position():
    ids, mask, positions = _batch(64)
    assert batch_shared_prefix(ids, mask, positions) == len(PREFIX)
    assert batch_shared_prefix(ids, mask, torch.full_like(positions, 6)) == 6
    assert batch_shared_prefix(ids[:1], mask[:1], positions[:1]) == 0  # nothing to share
    differs = ids.clone()
    differs[1, 4] = 63
    assert batch_shared_prefix(differs, mask, positions) == 4
    left = torch.roll(mask, 1, dims=1)  # a left pad in one row: its first slot is no token
    left[:, 0] = torch.tensor([0, 1, 1])
    assert batch_shared_prefix(ids, left, positions) == 0


@pytest.fixture
def lora_student(student):
    model = prepare_student(student, "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj", "down_proj"])
    with torch.no_grad():  # adapters that matter, as after some training
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.2)
    return model.train()


def _states_and_grads(model, run):
    model.zero_grad()
    with output_head_removed(model):
        states = run()
    weights = torch.linspace(-1, 1, states.numel()).reshape(states.shape)
    (states * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return states.detach(), grads


@pytest.mark.parametrize("pack", [True, False])
def test_shared_prefix_states_and_gradients_equal_the_plain_forward(lora_student, pack):
    vocab = lora_student.get_input_embeddings().weight.shape[0]
    ids, mask, positions = _batch(vocab)
    plain, plain_grads = _states_and_grads(
        lora_student, lambda: answer_logits(lora_student, ids, mask, positions)
    )
    p = len(PREFIX)
    shared, shared_grads = _states_and_grads(
        lora_student,
        lambda: PrefixCachedModel(lora_student, ids[0, :p]).answer_states(
            ids[:, p:], mask[:, p:], positions - p, pack=pack
        ),
    )
    assert plain_grads and plain_grads.keys() == shared_grads.keys()
    assert (shared - plain).abs().max() <= 1e-5
    for name, grad in plain_grads.items():  # the prefix's adapters get their gradient through its keys too
        assert (shared_grads[name] - grad).abs().max() <= 1e-5 * max(1.0, grad.abs().max()), name


def test_a_batch_sharing_too_little_runs_the_plain_forward(lora_student, monkeypatch):
    vocab = lora_student.get_input_embeddings().weight.shape[0]
    ids, mask, positions = _batch(vocab)
    built = []
    monkeypatch.setattr(
        student_forward, "PrefixCachedModel", lambda *a: built.append(a) or PrefixCachedModel(*a)
    )
    with torch.no_grad(), output_head_removed(lora_student):
        student_answer_states(lora_student, ids, mask, positions, share_prefix=True)
        assert len(built) == 1
        student_answer_states(lora_student, ids, mask, positions, share_prefix=False)
        student_answer_states(lora_student, ids, mask, torch.full_like(positions, 5), share_prefix=True)
    assert len(built) == 1  # off, and a prefix under MIN_SHARED_PREFIX tokens


def _chat_rows(tokenizer, n=8):
    """Rows as chat templates make them: a long shared lead-in, then each question and its answer."""
    from datasets import Dataset

    from distill_trainer import build_views

    lead = "system: you answer questions about the town handbook in a few words. user:"
    rows = [(f"{lead} question {i}: who keeps bridge {i}? answer:", f" keeper {i % 3}") for i in range(n)]
    return Dataset.from_list([build_views(tokenizer, q, a, "context: the keepers") for q, a in rows])


def _train(tmp_path, student, teacher, tokenizer, share: bool):
    torch.manual_seed(0)  # the adapters' initialisation
    model = prepare_student(
        copy.deepcopy(student), "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"]
    )
    trainer = ContextDistillationTrainer(
        model=model,
        teacher=teacher,
        args=make_args(
            tmp_path / str(share), share_student_prefix=share, max_steps=3, learning_rate=0.5, optim="sgd"
        ),
        train_dataset=_chat_rows(tokenizer),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    calls = []
    original = student_forward.PrefixCachedModel
    student_forward.PrefixCachedModel = lambda *a: calls.append(a) or original(*a)
    try:
        trainer.train()
    finally:
        student_forward.PrefixCachedModel = original
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}, losses, len(calls)


@pytest.mark.integration
def test_training_with_the_shared_prefix_reaches_the_same_weights(tmp_path, tokenizer, student, teacher):
    shared, shared_losses, calls = _train(tmp_path, student, teacher, tokenizer, share=True)
    plain, plain_losses, plain_calls = _train(tmp_path, student, teacher, tokenizer, share=False)
    assert calls == 3 and plain_calls == 0  # one shared-prefix forward a step, and none when it is off
    assert shared_losses == pytest.approx(plain_losses, rel=1e-5)
    for name, weight in plain.items():
        assert (shared[name] - weight).abs().max() <= 1e-5, name
