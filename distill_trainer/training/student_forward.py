"""The student's forward in training: the tokens every row of a batch starts with run once, not once per row.

    states = student_answer_states(model, input_ids, attention_mask, positions, share_prefix=True)

A chat template puts the same system prompt and turn markers before every question: with Qwen2.5's
default system prompt, 23 of a short question-and-answer row's ~60 tokens. When every row of a batch starts
with the same tokens (at least `MIN_SHARED_PREFIX`, none of them padding, all before the first answer
position), they run through the model once, as a batch of one, and the rows' own tokens attend to their
keys and values (`teacher.prefix_cache.PrefixCachedModel`); on a CPU the rows' own tokens also run packed,
end to end without padding. Gradients flow through the shared keys and values into the prefix's forward,
so the loss and every gradient equal those of the full padded forward up to float summation order
(tested); a step then costs about the rows' own tokens (`benchmarks/student_step.py` measures it).

It is a plain forward's alternative, so it stays off where a model wrapper expects one forward per step:
the trainer turns it on only in a single process, without gradient checkpointing (which drops the cache).
"""

from __future__ import annotations

import torch

from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.teacher.prefix_cache import PrefixCachedModel

# fewer shared tokens than this save less than the extra forward call costs
MIN_SHARED_PREFIX = 8


def batch_shared_prefix(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor
) -> int:
    """How many leading tokens every row has, all real (no left padding) and all before the first position
    whose state is wanted (each wanted state must come from a row's own tokens); 0 for a single row."""
    if input_ids.shape[0] < 2:
        return 0
    same = ((input_ids == input_ids[:1]) & attention_mask.bool()).all(dim=0)
    length = int(same.long().cumprod(dim=0).sum())
    return min(length, int(positions.min()))


def student_answer_states(model, input_ids, attention_mask, positions, share_prefix: bool) -> torch.Tensor:
    """`models.answer_logits.answer_logits(model, input_ids, attention_mask, positions)`, with the batch's
    shared leading tokens run once when `share_prefix` and there are at least `MIN_SHARED_PREFIX` of them."""
    prefix = batch_shared_prefix(input_ids, attention_mask, positions) if share_prefix else 0
    if prefix < MIN_SHARED_PREFIX:
        return answer_logits(model, input_ids, attention_mask, positions)
    # built for this batch only: the prefix's keys and values depend on weights the step then changes
    shared = PrefixCachedModel(model, input_ids[0, :prefix])
    return shared.answer_states(
        input_ids[:, prefix:], attention_mask[:, prefix:], positions - prefix, pack=input_ids.is_cpu
    )
