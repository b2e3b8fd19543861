"""The cross-tokenizer columns of a batch (`views/cross_tokenizer.py` rows), collated beside the two views
by `TwoViewCollator`: the teacher's reply has its own length, so it gets its own answer mask, and each
student reply token's paired teacher column is shifted by the teacher row's right-alignment."""

from __future__ import annotations

import torch

ALIGNMENT_COLUMNS = ("teacher_pair_index", "exact_match")
ALIGNMENT_BATCH_KEYS = ("teacher_answer_mask", "teacher_pair_index", "exact_match")
# marks a batch whose replies are the student's own rollouts (no teacher's text to learn at unmatched tokens)
OWN_REPLIES = "own_replies"


def has_alignment_columns(dataset) -> bool:
    """Whether a dataset's rows are `views/cross_tokenizer.py` rows (a datasets.Dataset or a list of dicts;
    None, no training set, passes)."""
    if dataset is None:
        return True
    names = getattr(dataset, "column_names", None)
    if names is None:
        names = dataset[0].keys() if len(dataset) else ALIGNMENT_COLUMNS
    return all(column in names for column in ALIGNMENT_COLUMNS)


def add_alignment_columns(features: list[dict], batch: dict) -> None:
    """teacher_answer_mask (batch, teacher answer width), and teacher_pair_index / exact_match (batch,
    answer width), right-aligned like `answer_ids`; nothing for rows without these columns. Left (padding)
    slots pair with a valid column and are no exact match; `answer_mask` masks them out."""
    if ALIGNMENT_COLUMNS[0] not in features[0]:
        return
    teacher_width = batch["teacher_answer_positions"].shape[1]
    width = batch["answer_ids"].shape[1]
    teacher_mask = torch.zeros(len(features), teacher_width, dtype=torch.bool)
    pair_index = torch.zeros(len(features), width, dtype=torch.long)
    exact = torch.zeros(len(features), width, dtype=torch.bool)
    for row, f in enumerate(features):
        n_teacher, n = len(f["teacher_answer_positions"]), len(f["answer_ids"])
        shift = teacher_width - n_teacher
        teacher_mask[row, shift:] = True
        pair_index[row] = shift
        pair_index[row, width - n :] += torch.tensor(f["teacher_pair_index"], dtype=torch.long)
        exact[row, width - n :] = torch.tensor(f["exact_match"], dtype=torch.bool)
    batch["teacher_answer_mask"], batch["teacher_pair_index"], batch["exact_match"] = (
        teacher_mask,
        pair_index,
        exact,
    )
