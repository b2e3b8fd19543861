"""The chunked per-token loss over replies equals the unchunked one (values and gradients, every kind,
top-k, cached outputs), never holds more than a chunk of positions' logits, and trains a real step."""

from __future__ import annotations

import pytest
import torch

from distill_trainer.errors import UsageError
from distill_trainer.models.output_head import OutputHead, output_head, output_head_removed
from distill_trainer.testing import build_model
from distill_trainer.training import sequence_loss
from distill_trainer.training.losses import (
    LOSS_KINDS,
    answer_cross_entropy,
    distillation_loss,
    sparse_distillation_loss,
)
from distill_trainer.training.sequence_loss import chunked_sequence_loss, top_k_with_tail

BATCH, LENGTH, HIDDEN, VOCAB = 3, 9, 16, 61


@pytest.fixture
def tensors():
    torch.manual_seed(0)
    student_head = torch.nn.Linear(HIDDEN, VOCAB, bias=True)
    teacher_head = torch.nn.Linear(HIDDEN + 4, VOCAB, bias=False)
    return {
        "hidden": torch.randn(BATCH, LENGTH, HIDDEN, requires_grad=True),
        "teacher_hidden": torch.randn(BATCH, LENGTH, HIDDEN + 4),
        "student_head": student_head,
        "teacher_head": teacher_head,
        "mask": torch.rand(BATCH, LENGTH) > 0.3,
        "ids": torch.randint(0, VOCAB, (BATCH, LENGTH)),
    }


def _grads(loss, t):
    head = t["student_head"]
    return torch.autograd.grad(loss, [t["hidden"], head.weight, head.bias])


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("chunk_size", [0, 1, 4, 1000])
# at temperature 1 the cross-entropy is read off the divergence's log-probabilities; weighted 0, it is
# logged but left out of the gradient
@pytest.mark.parametrize("temperature, weights", [(2.0, (0.7, 0.3)), (1.0, (0.7, 0.3)), (1.0, (1.0, 0.0))])
def test_chunked_equals_unchunked_values_and_gradients(tensors, kind, chunk_size, temperature, weights):
    t = tensors
    loss, kd, ce = chunked_sequence_loss(
        t["hidden"],
        OutputHead(t["student_head"]),
        t["mask"],
        teacher_hidden=t["teacher_hidden"],
        teacher_head=OutputHead(t["teacher_head"]),
        answer_ids=t["ids"],
        weights=weights,
        kind=kind,
        temperature=temperature,
        beta=0.3,
        chunk_size=chunk_size,
    )
    student_logits = t["student_head"](t["hidden"])
    reference_kd = distillation_loss(
        student_logits,
        t["teacher_head"](t["teacher_hidden"]),
        t["mask"],
        kind=kind,
        temperature=temperature,
        beta=0.3,
    )
    reference_ce = answer_cross_entropy(student_logits, t["ids"], t["mask"])
    reference = weights[0] * reference_kd + weights[1] * reference_ce
    assert abs(float(kd) - float(reference_kd)) < 1e-5
    assert abs(float(ce) - float(reference_ce)) < 1e-5
    assert abs(float(loss) - float(reference)) < 1e-5
    for mine, theirs in zip(_grads(loss, t), _grads(reference, t)):
        assert torch.allclose(mine, theirs, atol=1e-5)


def test_top_k_of_a_live_teacher_and_cached_top_k_match_the_sparse_loss(tensors):
    t = tensors
    teacher_logprobs = torch.log_softmax(t["teacher_head"](t["teacher_hidden"]), -1)
    top = top_k_with_tail(teacher_logprobs, 5)
    reference = sparse_distillation_loss(t["student_head"](t["hidden"]), *top, t["mask"], kind="reverse_kl")
    live, _, _ = chunked_sequence_loss(
        t["hidden"],
        OutputHead(t["student_head"]),
        t["mask"],
        teacher_hidden=t["teacher_hidden"],
        teacher_head=OutputHead(t["teacher_head"]),
        kind="reverse_kl",
        top_k=5,
        chunk_size=4,
    )
    cached, _, _ = chunked_sequence_loss(
        t["hidden"],
        OutputHead(t["student_head"]),
        t["mask"],
        teacher_topk=top,
        kind="reverse_kl",
        chunk_size=2,
    )
    assert abs(float(live) - float(reference)) < 1e-5
    assert abs(float(cached) - float(reference)) < 1e-5
    # k covering the vocabulary is the full-vocabulary loss (no tail)
    full = top_k_with_tail(teacher_logprobs, VOCAB + 3)
    assert torch.isinf(full[2]).all() and full[0].shape[-1] == VOCAB


def test_no_chunk_ever_holds_more_positions_than_the_chunk_size(tensors, monkeypatch):
    seen = []
    real = sequence_loss._chunk_terms

    def spy(logits, *args):
        seen.append(tuple(logits.shape))
        return real(logits, *args)

    monkeypatch.setattr(sequence_loss, "_chunk_terms", spy)
    t = tensors
    chunked_sequence_loss(
        t["hidden"],
        OutputHead(t["student_head"]),
        t["mask"],
        teacher_hidden=t["teacher_hidden"],
        teacher_head=OutputHead(t["teacher_head"]),
        chunk_size=4,
    )
    positions = int(t["mask"].sum())
    assert sum(rows for rows, _ in seen) == positions
    assert max(rows for rows, _ in seen) == 4 and len(seen) == -(-positions // 4)


def test_bad_settings_are_refused(tensors):
    t = tensors
    with pytest.raises(UsageError, match="loss_chunk_size"):
        chunked_sequence_loss(t["hidden"], OutputHead(t["student_head"]), t["mask"], chunk_size=-1)
    with pytest.raises(UsageError, match="teacher_head"):
        chunked_sequence_loss(
            t["hidden"], OutputHead(t["student_head"]), t["mask"], teacher_hidden=t["teacher_hidden"]
        )
    with pytest.raises(UsageError, match="no answer tokens"):
        chunked_sequence_loss(
            t["hidden"], OutputHead(t["student_head"]), torch.zeros_like(t["mask"]), answer_ids=t["ids"]
        )


def test_a_model_without_its_head_returns_hidden_states_and_the_head_gives_its_logits():
    model = build_model(50, seed=0)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        with output_head_removed(model) as head:
            hidden = model(input_ids=ids).logits
        assert hidden.shape[-1] == model.config.hidden_size
        assert torch.allclose(head(hidden), logits, atol=1e-5)
        assert torch.allclose(output_head(model)(hidden), logits, atol=1e-5)
    # the head is back in place afterwards
    assert model(input_ids=ids).logits.shape[-1] == 50
