"""NaN and infinite numbers are a fault with a source, never a score.

    bad = nonfinite_rows(logprobs)                  # rows of a tensor holding NaN or inf anywhere
    bad = nonfinite_records(predictions)            # prediction records with NaN/inf log-probs or margin
    refuse_nonfinite("model out/cd_lora", bad, 16, "queries", "nothing was scored")

An argmax over NaN picks label 0 for every row, which reads as a plausible accuracy, and a margin of NaN
sorts anywhere: so evaluation, the teacher pass and every reader of stored predictions refuse them.
"""

from __future__ import annotations

import math

import torch

from distill_trainer.errors import UsageError


def nonfinite_rows(values: torch.Tensor) -> list[int]:
    """Positions along the first dimension whose values hold NaN or inf anywhere."""
    if not len(values):
        return []
    return (~torch.isfinite(values.reshape(len(values), -1))).any(-1).nonzero().flatten().tolist()


def nonfinite_records(records) -> list[int]:
    """Positions of prediction records (as `evaluation.prediction_records` writes them) whose label-word
    log-probabilities or margin are NaN or infinite."""
    bad = []
    for position, record in enumerate(records):
        values = [*record.get("logprobs", ()), record.get("margin", 0.0)]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            bad.append(position)
    return bad


def refuse_nonfinite(source: str, bad: list[int], total: int, what: str, outcome: str) -> None:
    """One error line: which model gave NaN/inf logits, for how many of `total` `what`, what was not done."""
    if not bad:
        return
    first = ", ".join(str(i) for i in sorted(bad)[:5]) + (", ..." if len(bad) > 5 else "")
    raise UsageError(
        f"{source} gives NaN or infinite logits for {len(bad)} of {total} {what} (rows {first}), so "
        f"{outcome}; its weights hold NaN/inf (a diverged or damaged checkpoint) or overflow in half "
        "precision: retrain or re-save it, or load it in float32"
    )
