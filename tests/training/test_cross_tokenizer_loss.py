"""The cross-tokenizer sequence loss: with identical tokenizers it equals the same-tokenizer loss (values
and gradients, every kind), it is the same in chunks as in one piece, its ULD term is the sorted
distance, its exact-match term the divergence over the shared tokens, and only the student gets gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from distill_trainer.models.output_head import OutputHead
from distill_trainer.training.cross_tokenizer_loss import (
    UNMATCHED_TERMS,
    chunked_cross_tokenizer_loss,
    shared_vocabulary_divergence,
    sorted_probability_distance,
)
from distill_trainer.training.losses import LOSS_KINDS, token_divergence
from distill_trainer.training.sequence_loss import chunked_sequence_loss

BATCH, LENGTH, HIDDEN, VOCAB, TEACHER_LENGTH, TEACHER_VOCAB = 3, 7, 16, 41, 9, 53


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    return {
        "hidden": torch.randn(BATCH, LENGTH, HIDDEN, requires_grad=True),
        "student_head": torch.nn.Linear(HIDDEN, VOCAB),
        "teacher_hidden": torch.randn(BATCH, LENGTH, HIDDEN + 4),
        "mask": torch.rand(BATCH, LENGTH) > 0.3,
        "ids": torch.randint(0, VOCAB, (BATCH, LENGTH)),
    }


def _student_grads(loss, t):
    head = t["student_head"]
    return torch.autograd.grad(loss, [t["hidden"], head.weight, head.bias])


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_identical_tokenizers_give_the_same_tokenizer_loss_and_gradients(tensors, kind):
    t = tensors
    teacher_head = OutputHead(torch.nn.Linear(HIDDEN + 4, VOCAB, bias=False))
    common = dict(answer_ids=t["ids"], weights=(0.7, 0.3), kind=kind, temperature=2.0, beta=0.3, chunk_size=4)
    same = chunked_sequence_loss(
        t["hidden"],
        OutputHead(t["student_head"]),
        t["mask"],
        teacher_hidden=t["teacher_hidden"],
        teacher_head=teacher_head,
        **common,
    )
    identity = torch.arange(VOCAB)
    cross = chunked_cross_tokenizer_loss(
        t["hidden"],
        OutputHead(t["student_head"]),
        t["mask"],
        teacher_hidden=t["teacher_hidden"],
        teacher_head=teacher_head,
        teacher_pair_index=torch.arange(LENGTH).expand(BATCH, -1),
        exact_match=torch.ones(BATCH, LENGTH, dtype=torch.bool),
        shared_vocabulary=(identity, identity),
        **common,
    )
    for a, b in zip(same, cross):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(_student_grads(same[0], t), _student_grads(cross[0], t)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _cross(t, teacher_head, chunk_size=3, teacher_hidden=None, **options):
    torch.manual_seed(1)
    pair = torch.randint(0, TEACHER_LENGTH, (BATCH, LENGTH))
    exact = torch.rand(BATCH, LENGTH) > 0.4
    shared = (torch.tensor([0, 3, 5, 7, 40]), torch.tensor([2, 9, 5, 52, 0]))
    return chunked_cross_tokenizer_loss(
        t["hidden"],
        OutputHead(t["student_head"]),
        t["mask"],
        teacher_hidden=teacher_hidden
        if teacher_hidden is not None
        else torch.randn(BATCH, TEACHER_LENGTH, 12),
        teacher_head=OutputHead(teacher_head),
        teacher_pair_index=pair,
        exact_match=exact,
        shared_vocabulary=shared,
        answer_ids=t["ids"],
        chunk_size=chunk_size,
        **options,
    )


def test_chunks_give_the_one_piece_values_and_gradients(tensors):
    teacher_head = torch.nn.Linear(12, TEACHER_VOCAB)
    torch.manual_seed(2)
    teacher_hidden = torch.randn(BATCH, TEACHER_LENGTH, 12)
    pieces = [_cross(tensors, teacher_head, size, teacher_hidden, weights=(0.6, 0.4)) for size in (0, 1, 5)]
    for other in pieces[1:]:
        for a, b in zip(pieces[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    grads = [_student_grads(p[0], tensors) for p in pieces]
    for other in grads[1:]:
        for a, b in zip(grads[0], other):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_student_only(tensors):
    teacher_head = torch.nn.Linear(12, TEACHER_VOCAB)
    teacher_hidden = torch.randn(BATCH, TEACHER_LENGTH, 12, requires_grad=True)
    loss, kd, _ = _cross(tensors, teacher_head, teacher_hidden=teacher_hidden)
    loss.backward()
    assert float(kd) > 0 and torch.isfinite(loss)
    head = tensors["student_head"]
    assert head.weight.grad.abs().sum() > 0 and tensors["hidden"].grad.abs().sum() > 0
    assert teacher_head.weight.grad is None and teacher_head.bias.grad is None and teacher_hidden.grad is None


def test_sorted_probability_distance_is_uld_and_blind_to_the_token_order():
    torch.manual_seed(3)
    student = F.log_softmax(torch.randn(4, 10), -1)
    teacher = F.log_softmax(torch.randn(4, 14), -1)
    padded = torch.cat([student.exp().sort(-1, descending=True).values, torch.zeros(4, 4)], -1)
    expected = (padded - teacher.exp().sort(-1, descending=True).values).abs().sum(-1)
    torch.testing.assert_close(sorted_probability_distance(student, teacher), expected)
    permuted = student[:, torch.randperm(10)]
    torch.testing.assert_close(
        sorted_probability_distance(student, permuted), torch.zeros(4), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_the_exact_match_term_compares_the_shared_tokens_and_the_rest_as_one_outcome(kind):
    torch.manual_seed(4)
    student = F.log_softmax(torch.randn(5, 6), -1)
    teacher = F.log_softmax(torch.randn(5, 8), -1)
    student_ids, teacher_ids = torch.tensor([0, 2, 5]), torch.tensor([7, 1, 3])

    def coarsened(logprobs, ids):
        probs = logprobs.exp()
        kept = probs[:, ids]
        return torch.cat([kept, 1 - kept.sum(-1, keepdim=True)], -1).log()

    expected = token_divergence(coarsened(student, student_ids), coarsened(teacher, teacher_ids), kind, 0.3)
    got = shared_vocabulary_divergence(student, teacher, (student_ids, teacher_ids), kind, 0.3)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_unmatched_tokens_learn_the_replys_tokens_or_the_sorted_distance(tensors):
    teacher_head = torch.nn.Linear(12, TEACHER_VOCAB)
    torch.manual_seed(5)
    teacher_hidden = torch.randn(BATCH, TEACHER_LENGTH, 12)
    kd = {
        u: _cross(tensors, teacher_head, teacher_hidden=teacher_hidden, unmatched=u)[1]
        for u in UNMATCHED_TERMS
    }
    # the unmatched tokens _cross draws, and the student's log-probability of its reply token at each
    torch.manual_seed(1)
    torch.randint(0, TEACHER_LENGTH, (BATCH, LENGTH))
    exact = torch.rand(BATCH, LENGTH) > 0.4
    selected = tensors["mask"]
    others = ~exact[selected]
    assert others.any() and not others.all()
    logprobs = F.log_softmax(tensors["student_head"](tensors["hidden"][selected]), -1)
    reply = (
        -logprobs[others].gather(-1, tensors["ids"][selected][others].unsqueeze(-1)).sum() / selected.sum()
    )
    # both = exact-match term + ULD + reply cross-entropy; uld and reply_tokens each leave one out
    torch.testing.assert_close(kd["both"] - kd["uld"], reply, rtol=1e-5, atol=1e-6)
    assert float(kd["both"] - kd["reply_tokens"]) > 0  # the sorted distance
    # the student's own rollouts: no teacher's text to learn, so reply_tokens falls back to ULD
    rollouts = _cross(
        tensors,
        teacher_head,
        teacher_hidden=teacher_hidden,
        unmatched="reply_tokens",
        reply_is_teachers=False,
    )[1]
    torch.testing.assert_close(rollouts, kd["uld"])
