"""Two views of one chat example when the teacher reads another tokenizer than the student: each view is
its own model's tokenization (the teacher's of context + prompt + reply, the student's of prompt + reply),
and the reply's two tokenizations are aligned by character offsets (`token_alignment.py`).

    replies = CrossTokenizerReplies(student_tokenizer, teacher_tokenizer)   # once per tokenizer pair
    row = build_cross_tokenizer_chat_views(replies, prompt, completion_text, context=context)
    row = cross_tokenizer_row(student_prompt, teacher_prompt, replies.from_student_ids(rollout), shared)

A row has the columns of `views.text.two_view_row`, except that the teacher's reply tokens are its own
(`teacher_answer_positions` may be longer or shorter than `answer_positions`), plus `teacher_pair_index`
(per student reply token, the teacher reply token it is compared with) and `exact_match`. Both replies end
with their own tokenizer's end of turn; the two ends form one span, an exact match when each is one token
(the end-of-turn tokens are paired in the shared vocabulary whatever they are called).

The reply text is tokenized again on each side, so a reply the teacher generated is graded in the
tokenization its tokenizer gives the text (not necessarily the ids it sampled); a student's rollout keeps
the student's sampled ids and only the teacher's side is tokenized from the decoded text.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill_trainer.errors import UsageError
from distill_trainer.views.chat import chat_prompt_ids, end_of_turn_ids, shared_prefix_length, stop_token_ids
from distill_trainer.views.text import answer_positions
from distill_trainer.views.token_alignment import (
    AlignedSpan,
    align_tokens,
    decoded_offsets,
    pair_student_tokens,
)
from distill_trainer.views.vocabulary_map import shared_vocabulary


def tokenizers_differ(student_tokenizer, teacher_tokenizer) -> bool:
    """Whether the two tokenizers give different ids to some token (then the cross-tokenizer path runs)."""
    if student_tokenizer is None or teacher_tokenizer is None:
        return False
    return student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab()


def _ends(tokenizer) -> tuple[list[int], list[int]]:
    """(the ids closing a reply, the ids that may stop a reply): the chat template's, else EOS."""
    try:
        return end_of_turn_ids(tokenizer), stop_token_ids(tokenizer)
    except UsageError:  # no chat template: the EOS token ends a reply
        if tokenizer.eos_token_id is None:
            raise
        return [tokenizer.eos_token_id], [tokenizer.eos_token_id]


@dataclass(frozen=True)
class ReplyTokens:
    """One reply in both tokenizations, end of turn included, and how they pair up."""

    student_ids: list[int]
    teacher_ids: list[int]
    pair_index: list[int]
    exact_match: list[bool]


class CrossTokenizerReplies:
    """A reply's two tokenizations and their alignment, for one (student, teacher) tokenizer pair. Builds
    the shared vocabulary once (`pairs`: {student id: teacher id}), which the loss reads too."""

    def __init__(self, student_tokenizer, teacher_tokenizer):
        self.student_tokenizer, self.teacher_tokenizer = student_tokenizer, teacher_tokenizer
        self.student_end, self.student_stops = _ends(student_tokenizer)
        self.teacher_end, _ = _ends(teacher_tokenizer)
        ends = [(self.student_end[-1], self.teacher_end[-1])]
        if student_tokenizer.eos_token_id is not None and teacher_tokenizer.eos_token_id is not None:
            ends.append((student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id))
        self.pairs = shared_vocabulary(student_tokenizer, teacher_tokenizer, extra_pairs=ends)

    def from_text(self, text: str) -> ReplyTokens:
        """A reply given as text (the data's, or the teacher's decoded): both sides tokenize it."""
        student = self._encode(self.student_tokenizer, text)
        return self._aligned(text, student, self.student_end, self.teacher_end)

    def from_student_ids(self, ids: list[int]) -> ReplyTokens:
        """A reply the student wrote (a rollout), kept as sampled; the teacher reads its decoded text.
        A rollout cut off at the token limit (no stop token) ends without an end of turn on either side."""
        ids = list(ids)
        stopped = bool(ids) and ids[-1] in self.student_stops
        content = ids[:-1] if stopped else ids
        text, offsets = decoded_offsets(self.student_tokenizer, content)
        student_end, teacher_end = ([ids[-1]], self.teacher_end) if stopped else ([], [])
        return self._aligned(text, (content, offsets), student_end, teacher_end)

    @staticmethod
    def _encode(tokenizer, text: str):
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True) if text else None
        return (list(encoded["input_ids"]), list(encoded["offset_mapping"])) if text else ([], [])

    def _aligned(self, text, student, student_end, teacher_end) -> ReplyTokens:
        (student_ids, student_offsets) = student
        teacher_ids, teacher_offsets = self._encode(self.teacher_tokenizer, text)
        spans = align_tokens(len(text), student_offsets, teacher_offsets) if text else []
        student_ids, teacher_ids = student_ids + list(student_end), teacher_ids + list(teacher_end)
        # the end of turn, and any content that decoded to no text at all, close the reply as one span
        done_s, done_t = (spans[-1].student.stop, spans[-1].teacher.stop) if spans else (0, 0)
        if done_s < len(student_ids) or done_t < len(teacher_ids):
            spans.append(
                AlignedSpan(
                    len(text), len(text), range(done_s, len(student_ids)), range(done_t, len(teacher_ids))
                )
            )
        if not student_ids:
            raise UsageError("the reply is empty after tokenization; every example needs a reply")

        def same_token(i: int, j: int) -> bool:
            return self.pairs.get(student_ids[i]) == teacher_ids[j]

        pair_index, exact = pair_student_tokens(spans, same_token)
        return ReplyTokens(student_ids, teacher_ids, pair_index, exact)


def cross_tokenizer_row(
    student_prefix: list[int], teacher_prefix: list[int], reply: ReplyTokens, shared: int
):
    """One training row (see the module docstring); `shared` as in `views.text.two_view_row`."""
    return {
        "input_ids": student_prefix + reply.student_ids,
        "answer_positions": answer_positions(len(student_prefix), len(reply.student_ids)),
        "teacher_input_ids": teacher_prefix + reply.teacher_ids,
        "teacher_answer_positions": answer_positions(len(teacher_prefix), len(reply.teacher_ids)),
        "answer_ids": reply.student_ids,
        "teacher_prefix_length": shared,
        "teacher_pair_index": reply.pair_index,
        "exact_match": reply.exact_match,
    }


def build_cross_tokenizer_chat_views(
    replies: CrossTokenizerReplies,
    prompt: str,
    completion: str,
    context: str = "",
    placement: str = "system",
    prefix_length: int | None = None,
) -> dict:
    """`views.chat.build_chat_views` for a teacher with another tokenizer: the reply as text.
    `prefix_length`: `shared_prefix_length(teacher_tokenizer, context, placement)`, computed once."""
    student = chat_prompt_ids(replies.student_tokenizer, prompt, "", placement)
    teacher = chat_prompt_ids(replies.teacher_tokenizer, prompt, context, placement)
    if prefix_length is None:
        prefix_length = shared_prefix_length(replies.teacher_tokenizer, context, placement)
    shared = min(prefix_length, len(teacher) - 1) if context else 0
    return cross_tokenizer_row(student, teacher, replies.from_text(completion.rstrip()), max(shared, 0))
