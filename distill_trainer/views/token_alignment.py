"""Two tokenizations of one reply, aligned by character offsets: the tokens of each side grouped into
spans that cover the same characters, so a teacher with another tokenizer can grade a student's reply.

    spans = align_tokens(len(text), student_offsets, teacher_offsets)   # offsets: (start, end) per token
    pair_index, exact = pair_student_tokens(spans, same_token)           # per student token

A span closes wherever both tokenizations have a token boundary at the same character, so the spans
partition the text: every character belongs to exactly one span, every token to exactly one span. A span
of one token on each side covers the same characters on both; it is an exact match when the two tokens
are also the same entry of both vocabularies (`same_token`: not so for an unknown-character token, say).
At the first token of every span both models have read exactly the same text before it, which is what
makes their predictions there comparable at all.

Only token *ends* are read: a token covers the characters from the previous token's end to its own. This
absorbs what offsets leave out (a leading space that a post-processor trimmed, characters of a split
multi-byte letter reported twice), so the coverage is contiguous whatever the tokenizer reports.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill_trainer.errors import UsageError

# a prefix decoded up to half of a multi-byte character ends with this replacement character
_PARTIAL_CHARACTER = "\ufffd"


@dataclass(frozen=True)
class AlignedSpan:
    """Characters [start, end) of the reply, and the student and teacher tokens that spell them."""

    start: int
    end: int
    student: range
    teacher: range

    @property
    def one_to_one(self) -> bool:
        """One token on each side, covering the same characters."""
        return len(self.student) == 1 and len(self.teacher) == 1


def token_ends(offsets, text_length: int) -> list[int]:
    """Each token's end character, non-decreasing, within the text; the last one ends the text."""
    ends, furthest = [], 0
    for _, end in offsets:
        furthest = max(furthest, min(int(end), text_length))
        ends.append(furthest)
    if ends:
        ends[-1] = text_length  # trailing characters no token reported (trimmed whitespace) join the last
    return ends


def align_tokens(text_length: int, student_offsets, teacher_offsets) -> list[AlignedSpan]:
    """The spans of a text of `text_length` characters tokenized twice; `*_offsets` are (start, end) per
    token, as fast tokenizers' `return_offsets_mapping` gives them (or `decoded_offsets`)."""
    sides = {"student": student_offsets, "teacher": teacher_offsets}
    for side, offsets in sides.items():
        if text_length > 0 and not len(offsets):
            raise UsageError(f"the {side} tokenization of a {text_length}-character reply has no tokens")
        if text_length == 0 and len(offsets):
            raise UsageError(f"the {side} tokenization of an empty reply has {len(offsets)} tokens")
    student_ends = token_ends(student_offsets, text_length)
    teacher_ends = token_ends(teacher_offsets, text_length)
    boundaries = sorted((set(student_ends) & set(teacher_ends)) - {0})
    spans, i, j, start = [], 0, 0, 0
    for boundary in boundaries:
        next_i, next_j = _after(student_ends, i, boundary), _after(teacher_ends, j, boundary)
        spans.append(AlignedSpan(start, boundary, range(i, next_i), range(j, next_j)))
        i, j, start = next_i, next_j, boundary
    return spans


def _after(ends: list[int], index: int, boundary: int) -> int:
    """The index past the last token (from `index` on) that ends at or before `boundary`."""
    while index < len(ends) and ends[index] <= boundary:
        index += 1
    return index


def pair_student_tokens(spans: list[AlignedSpan], same_token) -> tuple[list[int], list[bool]]:
    """For every student token (in order): the teacher token whose prediction it is compared with, and
    whether its span is an exact match: one to one, and `same_token(student index, teacher index)`.

    Within a span of m student and n teacher tokens, student token k takes teacher token floor(k * n / m):
    the first tokens of both sides always meet (the same text read before them), and the rest are spread
    in proportion, so each student token gets a term and no teacher position is skipped when n <= m."""
    pair_index, exact = [], []
    for span in spans:
        m, n = len(span.student), len(span.teacher)
        if m == 0:
            continue
        if n == 0:
            raise UsageError(
                f"characters {span.start}-{span.end} of a reply have student tokens but no teacher token"
            )
        pair_index += [span.teacher.start + (k * n) // m for k in range(m)]
        exact += [span.one_to_one and bool(same_token(span.student.start, span.teacher.start))] * m
    return pair_index, exact


def decoded_offsets(tokenizer, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """(text, offsets) of token ids written by a model (a rollout), whose offsets no tokenizer call gives:
    the decoded text and, per token, where the decoded prefix up to it ends. A prefix that stops inside a
    multi-byte character (or that decodes to anything but the start of the text) takes the end of the
    token that completes it, as fast tokenizers report the bytes of one character. Special tokens decode
    to nothing (`skip_special_tokens`): the caller handles the end-of-turn token apart."""

    def decode(part):
        return tokenizer.decode(part, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    text = decode(ids)
    ends: list[int | None] = []
    for i in range(len(ids)):
        prefix = decode(ids[: i + 1])
        whole = text.startswith(prefix) and not prefix.endswith(_PARTIAL_CHARACTER)
        ends.append(len(prefix) if whole else None)
    following = len(text)
    for i in reversed(range(len(ends))):  # an unfinished character ends where the next whole prefix does
        following = ends[i] = following if ends[i] is None else min(ends[i], following)
    starts = [0, *ends[:-1]]
    return text, list(zip(starts, ends))
