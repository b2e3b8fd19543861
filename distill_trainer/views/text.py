"""Two views of one example: the teacher's (demonstrations + query + answer) and the student's
prompt-stripped one (query + answer), plus the collator that batches both.

The parts are tokenized separately and their ids concatenated. Tokenizing the joined string would let
the tokenizer merge across a boundary (" answer:" + " Yes" can become different tokens), and then the
answer would not be the same token sequence in both views, which is what the loss compares.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from distill_trainer.errors import UsageError
from distill_trainer.teacher.columns import PER_ANSWER_TOKEN_TEACHER_COLUMNS, PER_EXAMPLE_TEACHER_COLUMNS
from distill_trainer.views.alignment_columns import add_alignment_columns

IGNORE_INDEX = -100
# between demonstrations, and between the demonstrations and the query
SEPARATOR = "\n\n"


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def leading_special_ids(tokenizer) -> list[int]:
    """The ids a tokenizer puts before the text by default (OPT's </s>, Llama's <s>); SmolLM2 adds none."""
    probe = tokenizer("a")["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    return list(probe[: len(probe) - len(bare)]) if probe[-len(bare) :] == bare else []


def answer_positions(prefix_length: int, answer_length: int) -> list[int]:
    """Positions whose logits predict each answer token: token i at index p is predicted at p - 1."""
    return [prefix_length - 1 + i for i in range(answer_length)]


def build_views(
    tokenizer, query: str, answer: str, demonstrations: str = "", separator: str = SEPARATOR
) -> dict:
    """Token ids of both views of one example and the answer positions in each.

    `demonstrations` is the rendered few-shot block without a trailing separator; the teacher reads
    demonstrations + separator + query + answer, the student query + answer.
    """
    answer_ids = _ids(tokenizer, answer)
    if not answer_ids:
        raise UsageError(
            f"the answer {answer!r} is empty after tokenization; every example needs an answer "
            "(a label word such as ' Yes')"
        )
    query_ids = _ids(tokenizer, query)
    start = leading_special_ids(tokenizer)
    demo_ids = _ids(tokenizer, demonstrations + separator) if demonstrations else []
    student_prefix = start + query_ids
    teacher_prefix = start + demo_ids + query_ids
    # the teacher view is this shared prefix (start + demonstrations) + a per-example suffix; the
    # teacher prefix KV cache runs the prefix once (see teacher/prefix_cache.py)
    return two_view_row(student_prefix, teacher_prefix, answer_ids, len(start + demo_ids))


def two_view_row(student_prefix: list[int], teacher_prefix: list[int], answer: list[int], shared: int):
    """One training row: both views end in the same answer tokens; `shared` leading teacher tokens are
    the prefix that every row with the same context starts with (0: none)."""
    return {
        "input_ids": student_prefix + answer,
        "answer_positions": answer_positions(len(student_prefix), len(answer)),
        "teacher_input_ids": teacher_prefix + answer,
        "teacher_answer_positions": answer_positions(len(teacher_prefix), len(answer)),
        "answer_ids": answer,
        "teacher_prefix_length": shared,
    }


@dataclass
class TwoViewCollator:
    """Pads both views of a list of `build_views` outputs into one batch.

    Keys out: input_ids, attention_mask, labels (-100 except answer tokens, the transformers convention,
    which also lets the Trainer count answer tokens for gradient accumulation), answer_positions,
    answer_ids, answer_mask, and the teacher_* counterparts. Positions are explicit per row, so either
    padding side is correct; answers are right-aligned in the (batch, max_answer_len) tensors.

    When every example's teacher view starts with the same prefix (`teacher_prefix_length` from
    `build_views`: fixed demonstrations), the batch also carries that prefix as `teacher_prefix_ids`
    (batch, P), rows equal, and the rest of the teacher view as `teacher_suffix_input_ids`,
    `teacher_suffix_attention_mask`, `teacher_suffix_answer_positions` (relative to the suffix), which
    is what the teacher prefix KV cache runs. Teacher outputs cached in the dataset (teacher/output_cache.py)
    are carried along, right-aligned like `answer_ids`.
    """

    pad_token_id: int
    padding_side: str = "right"
    # Padded lengths rounded up to a multiple of 16: on a CPU each new (batch, length) shape makes oneDNN
    # build and cache kernels and scatters the heap, so a run whose every batch has its own length grows
    # by about 14 MiB a step (a 128-step LoRA run of the default job: +1.6 GiB needed); with few
    # lengths that growth stops, and the kernels are reused. None: the longest row's length.
    pad_to_multiple_of: int | None = 16

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features:
            raise UsageError("cannot collate an empty list of examples")
        batch = {}
        student = self._pad([f["input_ids"] for f in features], [f["answer_positions"] for f in features])
        batch["input_ids"], batch["attention_mask"], batch["answer_positions"] = student
        if "teacher_input_ids" in features[0]:
            teacher = self._pad(
                [f["teacher_input_ids"] for f in features], [f["teacher_answer_positions"] for f in features]
            )
            batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_answer_positions"] = (
                teacher
            )
        width = max(len(f["answer_ids"]) for f in features)
        answer_ids = torch.zeros(len(features), width, dtype=torch.long)
        answer_mask = torch.zeros(len(features), width, dtype=torch.bool)
        for row, f in enumerate(features):
            n = len(f["answer_ids"])
            answer_ids[row, width - n :] = torch.tensor(f["answer_ids"])
            answer_mask[row, width - n :] = True
        batch["answer_ids"], batch["answer_mask"] = answer_ids, answer_mask
        add_alignment_columns(features, batch)  # a teacher with another tokenizer: its own reply tokens
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        rows, cols = answer_mask.nonzero(as_tuple=True)
        labels[rows, batch["answer_positions"][rows, cols] + 1] = answer_ids[rows, cols]
        batch["labels"] = labels
        self._add_shared_prefix(features, batch)
        add_cached_teacher_outputs(features, batch)
        for key in ("label", "example_index"):
            if key in features[0]:
                batch[key] = torch.tensor([f[key] for f in features])
        return batch

    def _add_shared_prefix(self, features: list[dict], batch: dict) -> None:
        if "teacher_input_ids" not in features[0] or "teacher_prefix_length" not in features[0]:
            return
        length = features[0]["teacher_prefix_length"]
        prefix = list(features[0]["teacher_input_ids"][:length])
        # any split is exact (the prefix's keys/values do not depend on what follows it) as long as the rows
        # share the prefix and every answer position lies after it
        shared = length > 0 and all(
            f["teacher_prefix_length"] == length
            and list(f["teacher_input_ids"][:length]) == prefix
            and f["teacher_answer_positions"][0] >= length
            for f in features
        )
        if not shared:  # demonstrations differ per example: only the full teacher view applies
            return
        suffix = self._pad(
            [f["teacher_input_ids"][length:] for f in features],
            [[p - length for p in f["teacher_answer_positions"]] for f in features],
        )
        batch["teacher_prefix_ids"] = torch.tensor([prefix]).expand(len(features), -1).clone()
        (
            batch["teacher_suffix_input_ids"],
            batch["teacher_suffix_attention_mask"],
            batch["teacher_suffix_answer_positions"],
        ) = suffix

    def _pad(self, sequences: list[list[int]], positions: list[list[int]]):
        length = max(len(s) for s in sequences)
        if self.pad_to_multiple_of:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        width = max(len(p) for p in positions)
        ids = torch.full((len(sequences), length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(sequences), length), dtype=torch.long)
        # rows with a shorter answer repeat their first position in the left slots; those slots are
        # masked out by answer_mask, the repeat only keeps indices valid for the gather
        pos = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, (seq, p) in enumerate(zip(sequences, positions)):
            offset = length - len(seq) if self.padding_side == "left" else 0
            ids[row, offset : offset + len(seq)] = torch.tensor(seq)
            mask[row, offset : offset + len(seq)] = 1
            shifted = [offset + x for x in p]
            pos[row] = torch.tensor([shifted[0]] * (width - len(p)) + shifted)
        return ids, mask, pos


def add_cached_teacher_outputs(features: list[dict], batch: dict) -> None:
    """Stack cached teacher outputs into the batch; per-answer-token ones right-aligned like `answer_ids`.

    Rows with a shorter answer repeat their first token's entry in the left slots (a valid distribution
    that `answer_mask` then masks out), so no slot holds garbage.
    """
    for key in PER_EXAMPLE_TEACHER_COLUMNS:
        if key in features[0]:
            batch[key] = torch.tensor([f[key] for f in features], dtype=torch.float32)
    width = batch["answer_ids"].shape[1]
    for key in PER_ANSWER_TOKEN_TEACHER_COLUMNS:
        if key not in features[0]:
            continue
        rows = []
        for f in features:
            values = list(f[key])
            rows.append([values[0]] * (width - len(values)) + values)
        dtype = torch.long if key.endswith("_ids") else torch.float32
        batch[key] = torch.tensor(rows, dtype=dtype)
