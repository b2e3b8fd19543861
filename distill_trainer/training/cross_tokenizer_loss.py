"""Per-token distillation over replies when the teacher reads another tokenizer than the student's:
chunked like `sequence_loss.chunked_sequence_loss`, so no (batch, length, vocabulary) tensor exists for
either model.

    pairs = vocabulary.tensors()                             # views/cross_tokenizer.py
    loss, kd, ce = chunked_cross_tokenizer_loss(hidden, head, answer_mask, teacher_hidden=t_hidden,
                                                teacher_head=t_head, teacher_pair_index=pair,
                                                exact_match=exact, shared_vocabulary=pairs)

Both tokenizations of the reply are aligned by character offsets (`token_alignment.py`); every student
reply token is paired with one teacher reply token. The divergence at a student token is:

- **exact match** (its span is one token on each side, spelling the same text): the configured divergence
  (`kind`, `beta`, the direction of the same-tokenizer loss) between both distributions over the tokens
  the two vocabularies share (the student's id and the teacher's id of the same string), plus one
  outcome "any other token" holding each side's remaining mass. This is the same-tokenizer loss
  coarsened to the shared vocabulary; with identical tokenizers nothing is left over and it equals it.
- **elsewhere** (a span of several tokens on a side), `unmatched`:
  - `reply_tokens` (the default): cross-entropy on the student's token of the teacher's reply. Inside
    such a span the two models have read different partial words, so their next-token distributions are
    not over the same events; what both sides do agree on is the text the teacher chose, and the student
    learns to write it (sequence-level distillation, Kim and Rush 2016, at these tokens). When the reply is
    the student's own rollout (on-policy) there is no teacher's choice to learn, and ULD is used.
  - `uld`: ULD's distance (Boizard et al. 2024), the L1 distance between both probability vectors sorted
    in decreasing order (the shorter padded with zeros), between the student token and its paired
    teacher token. It needs no correspondence between the vocabularies, only that both be equally sure
    (0 for equal distributions, at most 2), and so carries no signal about which token to write.
  - `both`: their sum.

  Where the tokenizers split text differently is where formatting lives (a newline and its indentation,
  a docstring's quotes, punctuation joined to a word): with `uld` alone a student learns the teacher's
  words but not its layout (measured in docs/context-distillation.md).

Both terms are summed over the student's answer tokens and divided by their count (the same reduction,
T^2 factor and gradient-accumulation count as the same-tokenizer loss); a KL and a cross-entropy are on
one scale, the sorted distance is at most 2.
The cost beyond the same-tokenizer loss: the teacher's head runs over its own reply tokens (its reply can
be longer or shorter), a gather of the shared vocabulary at exact matches and a sort of both vocabularies
at the other positions, a chunk of positions at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_trainer.errors import UsageError
from distill_trainer.training.losses import LOG_FLOOR, LOSS_KINDS, token_divergence
from distill_trainer.training.sequence_loss import chunked_head_sums, loss_denominator

# the term at reply tokens whose span is not one token on each side (module docstring)
UNMATCHED_TERMS = ("reply_tokens", "uld", "both")


def shared_vocabulary_divergence(
    student_logprobs: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    shared: tuple[torch.Tensor, torch.Tensor],
    kind: str = "forward_kl",
    beta: float = 0.5,
) -> torch.Tensor:
    """Per row, the divergence over the shared tokens plus "any other token" (see the module docstring).

    Args:
        student_logprobs: (n, student vocab); teacher_logprobs: (n, teacher vocab).
        shared: (student ids, teacher ids), each (k,): token i of the one is token i of the other.
    """
    student_ids, teacher_ids = (ids.to(student_logprobs.device) for ids in shared)
    student = student_logprobs.index_select(-1, student_ids)
    teacher = teacher_logprobs.index_select(-1, teacher_ids)
    complete = len(student_ids) == student_logprobs.shape[-1] == teacher_logprobs.shape[-1]
    if not complete:
        rest = [
            logprobs.index_fill(-1, ids, float("-inf")).logsumexp(-1, keepdim=True).clamp(min=LOG_FLOOR)
            for logprobs, ids in ((student_logprobs, student_ids), (teacher_logprobs, teacher_ids))
        ]
        student, teacher = torch.cat([student, rest[0]], -1), torch.cat([teacher, rest[1]], -1)
    return token_divergence(student, teacher, kind=kind, beta=beta)


def sorted_probability_distance(
    student_logprobs: torch.Tensor, teacher_logprobs: torch.Tensor
) -> torch.Tensor:
    """Per row, ULD's sum |p_sorted - q_sorted| over both vocabularies, the shorter padded with zeros."""
    student = student_logprobs.exp().sort(-1, descending=True).values
    teacher = teacher_logprobs.exp().sort(-1, descending=True).values
    width = min(student.shape[-1], teacher.shape[-1])
    distance = (student[:, :width] - teacher[:, :width]).abs().sum(-1)
    return distance + student[:, width:].sum(-1) + teacher[:, width:].sum(-1)


def chunked_cross_tokenizer_loss(
    student_hidden: torch.Tensor,
    student_head,
    mask: torch.Tensor,
    *,
    teacher_hidden: torch.Tensor,
    teacher_head,
    teacher_pair_index: torch.Tensor,
    exact_match: torch.Tensor,
    shared_vocabulary: tuple[torch.Tensor, torch.Tensor],
    answer_ids: torch.Tensor | None = None,
    reply_is_teachers: bool = True,
    unmatched: str = "reply_tokens",
    weights: tuple[float, float] = (1.0, 0.0),
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    chunk_size: int = 256,
    num_items_in_batch=None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(loss, distillation term, cross-entropy term) as `chunked_sequence_loss` returns them.

    Args:
        student_hidden: (batch, n, hidden) the student's final hidden states at its answer positions.
        mask: (batch, n) true at the student's real answer tokens.
        teacher_hidden: (batch, n_teacher, teacher hidden) the teacher's, at its own answer positions.
        teacher_pair_index: (batch, n) per student answer token, the column of its paired teacher token.
        exact_match: (batch, n) per student answer token, whether its span is an exact match.
        shared_vocabulary: (student ids, teacher ids) of the tokens both vocabularies hold.
        answer_ids: (batch, n) the student's reply tokens (the targets of `reply_tokens`, and of the
            cross-entropy term).
        reply_is_teachers: False when the replies are the student's own rollouts: `reply_tokens` then
            falls back to ULD.
        unmatched: the term at tokens that are no exact match, one of `UNMATCHED_TERMS`.
        Others as in `chunked_sequence_loss`.
    """
    if kind not in LOSS_KINDS:
        raise UsageError(f"unknown loss kind {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    if unmatched not in UNMATCHED_TERMS:
        raise UsageError(f"unknown unmatched term {unmatched!r}; choose one of {', '.join(UNMATCHED_TERMS)}")
    targets = unmatched != "uld" and reply_is_teachers
    if targets and answer_ids is None:
        raise UsageError(f"unmatched={unmatched!r} learns the reply's tokens: pass answer_ids")
    uld = unmatched != "reply_tokens" or not reply_is_teachers
    if chunk_size < 0:
        raise UsageError(f"loss_chunk_size must be >= 0 (0: one piece), got {chunk_size}")
    selected = mask.bool()
    hidden = student_hidden[selected]
    rows = selected.nonzero(as_tuple=True)[0].to(teacher_hidden.device)
    # the teacher's hidden state paired with each student token: (n, teacher hidden), no vocabulary axis
    paired = teacher_hidden[rows, teacher_pair_index[selected].to(teacher_hidden.device)]
    exact = exact_match[selected].bool().to(hidden.device)
    gold = answer_ids[selected] if answer_ids is not None else None
    count = loss_denominator(selected, num_items_in_batch, hidden.device)
    scaled = (weights[0] * temperature**2 / count, weights[1] / count)

    def terms(logits, part):
        logits = logits.float()
        student_logprobs = F.log_softmax(logits / temperature, dim=-1)
        with torch.no_grad():
            teacher_logits = teacher_head(paired[part]).float().to(logits.device)
            teacher_logprobs = F.log_softmax(teacher_logits / temperature, dim=-1)
        matched = exact[part]
        divergence = shared_vocabulary_divergence(
            student_logprobs[matched], teacher_logprobs[matched], shared_vocabulary, kind, beta
        ).sum()
        if not bool(matched.all()):
            others = ~matched
            if uld:
                distance = sorted_probability_distance(student_logprobs[others], teacher_logprobs[others])
                divergence = divergence + distance.sum()
            if targets:
                reply = gold[part][others].unsqueeze(-1)
                divergence = divergence - student_logprobs[others].gather(-1, reply).sum()
        cross_entropy = logits.new_zeros(())
        if gold is not None:
            cross_entropy = F.cross_entropy(logits, gold[part], reduction="sum")
        return divergence, cross_entropy

    loss, divergence, cross_entropy = chunked_head_sums(hidden, student_head, terms, scaled, chunk_size)
    kd = temperature**2 * divergence / count
    ce = cross_entropy / count if gold is not None else None
    return loss, kd, ce
