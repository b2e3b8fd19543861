"""Distillation losses: pure functions on tensors, no trainer needed.

    from distill_trainer.training.losses import distillation_loss
    loss = distillation_loss(student_logits, teacher_logits, mask, kind="forward_kl", temperature=2.0)

Inputs are logits over the answer positions only, shaped (batch, answer_len, vocab). Everything is
computed in fp32 whatever the input dtype: a bf16 log-softmax over a 49k vocabulary loses the small
probabilities that a KL term is made of.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distill_trainer.errors import UsageError

LOSS_KINDS = ("forward_kl", "reverse_kl", "jsd", "tvd")


def token_divergence(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    kind: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """Divergence per position between two log-distributions over the last axis; returns shape [...].

    `jsd` is the generalized Jensen-Shannon divergence with mixture `beta * teacher + (1 - beta) * student`,
    weighted so that beta=0 is forward KL(teacher || student) and beta=1 is reverse KL (TRL's convention).
    """
    s, t = student_logprobs, teacher_logprobs
    if kind == "forward_kl":
        return _kl(t, s)
    if kind == "reverse_kl":
        return _kl(s, t)
    if kind == "tvd":
        return 0.5 * (t.exp() - s.exp()).abs().sum(-1)
    if kind == "jsd":
        if not 0.0 <= beta <= 1.0:
            raise UsageError(f"beta must be in [0, 1], got {beta}; use 0 for forward KL and 1 for reverse KL")
        if beta == 0.0:
            return _kl(t, s)
        if beta == 1.0:
            return _kl(s, t)
        mixture = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), dim=0)
        return beta * _kl(t, mixture) + (1.0 - beta) * _kl(s, mixture)
    raise UsageError(f"unknown loss kind {kind!r}; choose one of {', '.join(LOSS_KINDS)}")


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last axis, from log-probabilities; 0 * log 0 counts as 0."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(-1)


def restrict_to_label_words(logits: torch.Tensor, label_token_ids: list[int] | torch.Tensor) -> torch.Tensor:
    """Keep only the verbalizer tokens' logits, so a softmax renormalises over the label words.

    This is what lets a teacher with another tokenizer teach: only the label words need to line up.
    """
    ids = torch.as_tensor(label_token_ids, device=logits.device, dtype=torch.long)
    if ids.numel() < 2:
        raise UsageError("label_token_ids needs at least two token ids (one per label word)")
    return logits.index_select(-1, ids)


def require_answer_tokens(count) -> None:
    """A batch's answer-token count (an int or a 0-d tensor) must be positive: every loss divides by it."""
    if int(count) == 0:
        raise UsageError(
            "the batch has no answer tokens (the mask is all false); every example needs a non-empty "
            "answer: check the answer text and the answer positions built by the collator"
        )


def check_cached_token_ids(teacher_topk_ids: torch.Tensor, vocab: int) -> None:
    """Cached teacher token ids index the student's logits: a cache made for another vocabulary must
    fail here, not as an index error deep in a gather."""
    largest = int(teacher_topk_ids.max())
    if largest >= vocab:
        raise UsageError(
            f"the cached teacher token ids go up to {largest} but the student has {vocab} logits; the "
            "teacher output cache was built for another vocabulary: rebuild it for this student"
        )


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None, num_items_in_batch=None) -> torch.Tensor:
    """Sum `values` over the positions where `mask` is true and divide by the number of answer tokens.

    Under gradient accumulation the Trainer passes `num_items_in_batch`, the answer-token count of the
    whole accumulated batch (all processes): dividing every micro-batch by it makes the summed gradients
    equal those of one big batch, which a per-micro-batch mean does not when the counts differ.
    """
    if mask is None:
        mask = torch.ones_like(values, dtype=torch.bool)
    mask = mask.bool()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    if num_items_in_batch is not None:
        denominator = num_items_in_batch
    else:
        denominator = mask.sum()
        require_answer_tokens(denominator)
    if torch.is_tensor(denominator):
        denominator = denominator.to(total.device, torch.float32)
    return total / denominator


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    num_items_in_batch=None,
    teacher_is_logprobs: bool = False,
) -> torch.Tensor:
    """T^2 * D(teacher_T || student_T), averaged over the answer tokens selected by `mask`.

    Args:
        student_logits, teacher_logits: (..., vocab) logits at the answer positions.
        mask: (...) true where a position is a real answer token (false for padding).
        kind: forward_kl | reverse_kl | jsd | tvd.
        temperature: softens both distributions; the T^2 factor keeps gradient scale independent of T.
        beta: mixture weight for `jsd`.
        num_items_in_batch: answer tokens in the whole accumulated batch (see `masked_mean`).
        For `distill_vocab="label_words"`, pass both sides through `restrict_to_label_words` first (each with
        its own tokenizer's ids): the softmax then renormalises over the label words.
        teacher_is_logprobs: the teacher side is already a log-distribution (teacher output cache);
            temperature is then applied by the cache builder, not here.
    """
    if kind not in LOSS_KINDS:
        raise UsageError(f"unknown loss kind {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise UsageError(
            f"teacher vocabulary ({teacher_logits.shape[-1]}) differs from the student's "
            f"({student_logits.shape[-1]}); use distill_vocab='label_words' or a teacher that shares the "
            "student's tokenizer"
        )
    student = student_logits.float()
    teacher = teacher_logits.float()
    student_logprobs = F.log_softmax(student / temperature, dim=-1)
    teacher_logprobs = teacher if teacher_is_logprobs else F.log_softmax(teacher / temperature, dim=-1)
    per_token = token_divergence(student_logprobs, teacher_logprobs, kind=kind, beta=beta)
    return temperature**2 * masked_mean(per_token, mask, num_items_in_batch)


def sparse_distillation_loss(
    student_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_tail_logprob: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    num_items_in_batch=None,
) -> torch.Tensor:
    """`distillation_loss` against a teacher kept as its top-k log-probabilities (teacher output cache).

    Both distributions are compared over k + 1 outcomes: the teacher's k tokens, and "any other token",
    which holds the teacher's remaining (tail) mass and the student's mass outside those k tokens. This
    is the exact divergence of the two distributions coarsened to those outcomes, so for the KL family
    it never exceeds the full-vocabulary value, and with k = the vocabulary size (no tail) it equals it.

    Args:
        student_logits: (..., vocab) the student's logits at the answer positions.
        teacher_topk_logprobs: (..., k) the teacher's log-probabilities, already at `temperature`.
        teacher_topk_ids: (..., k) their token ids.
        teacher_tail_logprob: (...) log of the teacher's mass outside the k tokens; ignored (no tail)
            when k covers the whole vocabulary.
        Other arguments as in `distillation_loss`.
    """
    if kind not in LOSS_KINDS:
        raise UsageError(f"unknown loss kind {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    if temperature <= 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    if teacher_topk_ids.shape != teacher_topk_logprobs.shape:
        raise UsageError("teacher_topk_ids and teacher_topk_logprobs must have the same shape (..., k)")
    check_cached_token_ids(teacher_topk_ids, student_logits.shape[-1])
    student_logprobs = F.log_softmax(student_logits.float() / temperature, dim=-1)
    per_token = sparse_token_divergence(
        student_logprobs, teacher_topk_logprobs, teacher_topk_ids, teacher_tail_logprob, kind, beta
    )
    return temperature**2 * masked_mean(per_token, mask, num_items_in_batch)


def sparse_token_divergence(
    student_logprobs: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_ids: torch.Tensor,
    teacher_tail_logprob: torch.Tensor | None,
    kind: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """Per position, the divergence over the teacher's k tokens plus "any other token" (see
    `sparse_distillation_loss`), from the student's full log-distribution (..., vocab)."""
    vocab, k = student_logprobs.shape[-1], teacher_topk_ids.shape[-1]
    ids = teacher_topk_ids.long()
    student = student_logprobs.gather(-1, ids)
    teacher = teacher_topk_logprobs.float()
    if k < vocab:
        if teacher_tail_logprob is None:
            raise UsageError(
                "teacher_tail_logprob is needed when the top-k does not cover the whole vocabulary"
            )
        student_tail = student_logprobs.scatter(-1, ids, float("-inf")).logsumexp(-1, keepdim=True)
        # a tail that underflowed to zero mass is floored, not -inf, so no inf - inf can reach a gradient
        teacher_tail = teacher_tail_logprob.float().unsqueeze(-1).clamp(min=LOG_FLOOR)
        student = torch.cat([student, student_tail.clamp(min=LOG_FLOOR)], dim=-1)
        teacher = torch.cat([teacher, teacher_tail], dim=-1)
    return token_divergence(student, teacher, kind=kind, beta=beta)


# log-probabilities below this are zero mass in fp32 (exp(-1e4) == 0) yet keep differences finite
LOG_FLOOR = -1.0e4


def answer_cross_entropy(
    student_logits: torch.Tensor,
    answer_ids: torch.Tensor,
    mask: torch.Tensor | None = None,
    num_items_in_batch=None,
) -> torch.Tensor:
    """Cross-entropy of the gold answer tokens, same reduction as `distillation_loss`."""
    per_token = F.cross_entropy(
        student_logits.float().flatten(0, -2), answer_ids.flatten(), reduction="none"
    ).view(answer_ids.shape)
    return masked_mean(per_token, mask, num_items_in_batch)
