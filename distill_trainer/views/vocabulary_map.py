"""The tokens two vocabularies share: for each, the student's id and the teacher's id of the same string,
what the cross-tokenizer loss compares both distributions over at exact matches.

    pairs = shared_vocabulary(student_tokenizer, teacher_tokenizer,
                              extra_pairs=[(student_end_of_turn, teacher_end_of_turn)])  # {student: teacher}
    student_ids, teacher_ids = vocabulary_tensors(pairs)  # what the loss indexes the logits with

Tokens are matched first by their entry in the token table (the same string in the same convention: the
whole table for two copies of one tokenizer), then, among the rest, by the text they decode to after a
fixed anchor token (so a word-initial space is kept whether the tokenizer writes it as byte-level "Ġ" or
SentencePiece "▁"). A decoded text that several tokens of one side share, or that is half a multi-byte
character, matches nothing: the map is one to one.
"""

from __future__ import annotations

import torch

_ANCHOR_TEXT = "a"
_PARTIAL_CHARACTER = "\ufffd"


def shared_vocabulary(student_tokenizer, teacher_tokenizer, extra_pairs=()) -> dict[int, int]:
    """{student id: teacher id} of the tokens both vocabularies hold. `extra_pairs`: (student id, teacher
    id) pairs that mean the same without the same string (each side's end of turn); they override what
    strings would match."""
    pairs = {int(s): int(t) for s, t in extra_pairs}
    used = set(pairs.values())
    teacher_table = teacher_tokenizer.get_vocab()
    for token, student_id in student_tokenizer.get_vocab().items():
        teacher_id = teacher_table.get(token)
        if student_id not in pairs and teacher_id is not None and teacher_id not in used:
            pairs[student_id] = teacher_id
            used.add(teacher_id)
    student_texts = _unique_texts(student_tokenizer, exclude=set(pairs))
    teacher_texts = _unique_texts(teacher_tokenizer, exclude=used)
    for text, student_id in student_texts.items():
        if text in teacher_texts:
            pairs[student_id] = teacher_texts[text]
    return pairs


def vocabulary_tensors(pairs: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(student ids, teacher ids), each a (k,) long tensor sorted by student id."""
    student_ids = sorted(pairs)
    return (
        torch.tensor(student_ids, dtype=torch.long),
        torch.tensor([pairs[s] for s in student_ids], dtype=torch.long),
    )


def _unique_texts(tokenizer, exclude: set[int]) -> dict[str, int]:
    """{decoded text: id} of the tokens not in `exclude` whose text no other such token shares."""
    ids = [i for i in sorted(set(tokenizer.get_vocab().values())) if i not in exclude]
    if not ids:
        return {}
    anchor = tokenizer(_ANCHOR_TEXT, add_special_tokens=False)["input_ids"][:1]
    options = dict(skip_special_tokens=False, clean_up_tokenization_spaces=False)
    lead = tokenizer.decode(anchor, **options)
    decoded = tokenizer.batch_decode([anchor + [i] for i in ids], **options)
    texts: dict[str, int] = {}
    shared: set[str] = set()
    for token_id, text in zip(ids, decoded):
        text = text[len(lead) :] if text.startswith(lead) else None
        if not text or _PARTIAL_CHARACTER in text:
            continue
        if text in texts:
            shared.add(text)
        texts[text] = token_id
    return {text: token_id for text, token_id in texts.items() if text not in shared}
