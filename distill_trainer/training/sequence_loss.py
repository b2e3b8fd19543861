"""Per-token distillation over whole replies, a chunk of positions at a time: no (batch, reply length,
vocabulary) tensor is ever built for either model.

    with output_head_removed(student) as student_head:
        hidden = answer_logits(student, ids, mask, positions)        # (batch, n, hidden)
    loss, kd, ce = chunked_sequence_loss(hidden, student_head, answer_mask, teacher_hidden=t_hidden,
                                         teacher_head=t_head, kind="reverse_kl", weights=(1.0, 0.0))

The answer positions of the batch (those `mask` selects) are laid end to end and cut into chunks of
`chunk_size`. Each chunk applies both output heads, takes the divergence of every position (and the
cross-entropy of the gold token), and at once the gradient of its share of the loss with respect to the
student's hidden states and head: the chunk's logits are freed before the next chunk starts, and the
backward pass only scales the stored gradients. The peak then holds one chunk's (chunk_size, vocab)
tensors whatever the reply length, with no matmul recomputed (`benchmarks/loss_memory.py` measures it).
The head's weight enters the autograd graph once, as one input of one function, so DDP (which wants each
parameter's gradient exactly once) and tied embeddings work as with the unchunked loss.

The teacher side is either its hidden states and head (a live teacher), optionally reduced to its top-k
tokens and the tail mass, or top-k log-probabilities read from the teacher output cache. Results equal
`losses.distillation_loss` / `sparse_distillation_loss` / `answer_cross_entropy` on the full tensors up to
float summation order (tested to 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distill_trainer.errors import UsageError
from distill_trainer.models.output_head import is_zero3_partitioned
from distill_trainer.teacher.output_cache import top_k_with_tail
from distill_trainer.training.losses import (
    LOSS_KINDS,
    require_answer_tokens,
    sparse_token_divergence,
    token_divergence,
)


def _linear_head(head):
    """(weight, bias, soft-cap) of a plain linear output head, else None (another module, or a head whose
    ZeRO-3-partitioned weight exists only while the module runs: called as a module, not chunked)."""
    module = getattr(head, "module", None)
    if type(module) is not torch.nn.Linear or is_zero3_partitioned(module.weight):
        return None
    return module.weight, module.bias, getattr(head, "softcap", None)


def _chunk_terms(logits, teacher_part, gold, teacher_head, options):
    """(sum of the divergence, sum of the cross-entropy) over one chunk of positions' student logits."""
    kind, temperature, beta, top_k = options
    logits = logits.float()
    divergence = logits.new_zeros(())
    student_logprobs = None
    if teacher_part is not None:
        # each pass over (positions, vocabulary) costs as much as the head's matmul on a CPU: none is spent
        # on a division by 1
        student_logprobs = F.log_softmax(logits / temperature if temperature != 1 else logits, dim=-1)
        with torch.no_grad():
            if teacher_head is not None:  # a live teacher's hidden states
                teacher = F.log_softmax(teacher_head(teacher_part[0]).float() / temperature, dim=-1)
                teacher = top_k_with_tail(teacher, top_k) if top_k else teacher
            else:  # cached top-k log-probs, ids and tail
                teacher = teacher_part
        if isinstance(teacher, tuple):
            per_token = sparse_token_divergence(student_logprobs, *teacher, kind=kind, beta=beta)
        else:
            per_token = token_divergence(student_logprobs, teacher, kind=kind, beta=beta)
        divergence = per_token.sum()
    cross_entropy = logits.new_zeros(())
    if gold is not None and student_logprobs is not None and temperature == 1:
        # the cross-entropy is read off the log-probabilities the divergence took: no second log-softmax
        cross_entropy = -student_logprobs.gather(-1, gold.unsqueeze(-1)).sum()
    elif gold is not None:
        cross_entropy = F.cross_entropy(logits, gold, reduction="sum")
    return divergence, cross_entropy


def _softcapped(logits, softcap):
    return torch.tanh(logits / softcap) * softcap if softcap else logits


class _ChunkedHeadLoss(torch.autograd.Function):
    """loss = w_kd * sum(divergence) + w_ce * sum(cross-entropy) over all positions, computed and
    differentiated one chunk at a time in the forward; outputs (loss, divergence sum, CE sum), the last
    two for logging only."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, chunks, terms, weights, softcap):
        grads = {"hidden": torch.zeros_like(hidden)}
        for name, tensor in (("weight", weight), ("bias", bias)):
            if tensor is not None and tensor.requires_grad:
                grads[name] = torch.zeros_like(tensor, dtype=torch.float32)
        total = hidden.new_zeros((), dtype=torch.float32)
        sums = [hidden.new_zeros((), dtype=torch.float32) for _ in range(2)]
        for part in chunks:
            with torch.enable_grad():
                leaves = {
                    "hidden": hidden[part].detach().requires_grad_(hidden.requires_grad),
                    "weight": weight.detach().requires_grad_("weight" in grads),
                    "bias": bias.detach().requires_grad_("bias" in grads) if bias is not None else None,
                }
                # a float32 residual stream (LoRA adapters in float32) meets a bfloat16 head: the head's dtype
                logits = F.linear(leaves["hidden"].to(weight.dtype), leaves["weight"], leaves["bias"])
                divergence, cross_entropy = terms(_softcapped(logits, softcap), part)
                # a term weighted 0 (the cross-entropy kept for the log) is left out of the graph: its
                # backward would still cost a pass over the vocabulary
                loss = sum(w * term for w, term in zip(weights, (divergence, cross_entropy)) if w)
                loss = loss if torch.is_tensor(loss) else logits.new_zeros(())
                wanted = [name for name in grads if leaves[name].requires_grad]
                found = torch.autograd.grad(loss, [leaves[n] for n in wanted]) if loss.requires_grad else []
            for name, grad in zip(wanted, found):
                if name == "hidden":
                    grads["hidden"][part] = grad.to(hidden.dtype)
                else:
                    grads[name] += grad.float()
            total += loss.detach()
            sums[0] += divergence.detach()
            sums[1] += cross_entropy.detach()
        ctx.grads = grads
        ctx.dtypes = {"weight": weight.dtype, "bias": bias.dtype if bias is not None else None}
        ctx.mark_non_differentiable(*sums)
        return total, sums[0], sums[1]

    @staticmethod
    def backward(ctx, grad_loss, _grad_divergence, _grad_cross_entropy):
        grads = ctx.grads
        out = []
        for name in ("hidden", "weight", "bias"):
            grad = grads.get(name)
            if grad is not None:
                grad = grad * grad_loss
                grad = grad.to(ctx.dtypes[name]) if name != "hidden" else grad
            out.append(grad)
        return (*out, None, None, None, None)


def chunked_sequence_loss(
    student_hidden: torch.Tensor,
    student_head,
    mask: torch.Tensor,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head=None,
    teacher_topk: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    answer_ids: torch.Tensor | None = None,
    weights: tuple[float, float] = (1.0, 0.0),
    kind: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    top_k: int = 0,
    chunk_size: int = 256,
    num_items_in_batch=None,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(loss, distillation term, cross-entropy term) over the positions `mask` selects, where loss =
    weights[0] * term + weights[1] * cross-entropy. The distillation term is T^2 times the mean
    divergence (None without a teacher); the cross-entropy is the mean over the gold `answer_ids` (None
    without them). Only `loss` carries gradients; the terms are for logging.

    Args:
        student_hidden: (batch, n, hidden) final hidden states at the answer positions.
        student_head, teacher_head: hidden -> logits (`models.output_head.OutputHead`).
        mask: (batch, n) true at real answer positions.
        teacher_hidden: (batch, n, teacher hidden) a live teacher's, with `teacher_head`.
        teacher_topk: (log-probs, ids, tail log-prob), each (batch, n[, k]): cached teacher outputs.
        answer_ids: (batch, n) gold tokens, for the cross-entropy term.
        top_k: with a live teacher, compare over its top-k tokens plus the tail mass (0: full vocabulary).
        chunk_size: positions per chunk (0: all at once).
        Others as in `losses.distillation_loss`.
    """
    if kind not in LOSS_KINDS:
        raise UsageError(f"unknown loss kind {kind!r}; choose one of {', '.join(LOSS_KINDS)}")
    if chunk_size < 0:
        raise UsageError(f"loss_chunk_size must be >= 0 (0: one piece), got {chunk_size}")
    if (teacher_hidden is None) != (teacher_head is None):
        raise UsageError("a live teacher needs both teacher_hidden and teacher_head")
    selected = mask.bool()
    hidden = student_hidden[selected]
    teacher = None
    if teacher_hidden is not None:
        teacher = (teacher_hidden[selected],)
    elif teacher_topk is not None:
        teacher = tuple(part[selected] for part in teacher_topk)
    gold = answer_ids[selected] if answer_ids is not None else None
    options = (kind, temperature, beta, top_k)
    count = loss_denominator(selected, num_items_in_batch, hidden.device)
    # the terms' weights, per token of the (accumulated) batch, T^2 on the distillation term
    scaled = (weights[0] * temperature**2 / count if teacher is not None else 0.0, weights[1] / count)

    def terms(logits, part):
        teacher_part = tuple(t[part] for t in teacher) if teacher is not None else None
        return _chunk_terms(
            logits, teacher_part, gold[part] if gold is not None else None, teacher_head, options
        )

    loss, divergence, cross_entropy = chunked_head_sums(hidden, student_head, terms, scaled, chunk_size)
    kd = temperature**2 * divergence / count if teacher is not None else None
    ce = cross_entropy / count if gold is not None else None
    return loss, kd, ce


def chunked_head_sums(hidden, student_head, terms, scaled, chunk_size: int):
    """(loss, divergence sum, cross-entropy sum) over the rows of `hidden` (n, hidden), `chunk_size` rows
    at a time (0: one piece): `terms(logits, part)` gives the two sums of one chunk's student logits, and
    loss = scaled[0] * divergence + scaled[1] * cross-entropy. Only `loss` carries gradients."""
    size = chunk_size or max(hidden.shape[0], 1)
    chunks = [slice(start, start + size) for start in range(0, hidden.shape[0], size)]
    linear = _linear_head(student_head)
    if linear is None:  # another head module: one piece, through plain autograd
        divergence, cross_entropy = terms(student_head(hidden), slice(None))
        loss = scaled[0] * divergence + scaled[1] * cross_entropy
        return loss, divergence.detach(), cross_entropy.detach()
    weight, bias, softcap = linear
    if not torch.is_grad_enabled():  # evaluation: the same chunks and sums, no gradient computed
        weight, bias = weight.detach(), bias.detach() if bias is not None else None
    return _ChunkedHeadLoss.apply(hidden, weight, bias, chunks, terms, scaled, softcap)


def loss_denominator(selected: torch.Tensor, num_items_in_batch, device) -> float | torch.Tensor:
    """What every loss term divides its sum by (`losses.masked_mean`): the answer tokens of the whole
    accumulated batch when the Trainer gives that count, else of this batch."""
    if num_items_in_batch is None:
        count = int(selected.sum())
        require_answer_tokens(count)
        return float(count)
    if torch.is_tensor(num_items_in_batch):
        return num_items_in_batch.to(device, torch.float32)
    return float(num_items_in_batch)
