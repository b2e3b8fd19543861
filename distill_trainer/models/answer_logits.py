"""`answer_logits`: a causal LM's logits at given answer positions, never the whole sequence's.

Used by the student's forward in the trainer, by the teacher's uncached forward (teacher/prefix_cache.py)
and by label-word scoring (nli/evaluation.py); it depends on nothing else in the package.
"""

from __future__ import annotations

import torch


def answer_logits(model, input_ids, attention_mask, positions, **forward_kwargs) -> torch.Tensor:
    """Logits (batch, answer_len, vocab) at the given per-row positions, never the full sequence's.

    Position ids come from the attention mask, so left padding gives the same numbers as none.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=positions,
        use_cache=False,
        **forward_kwargs,
    )
    return outputs.logits
