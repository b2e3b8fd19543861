"""A long document cut into passages that each fit a token budget, so a teacher can read one at a time.

    passages = split_passages(text, count_tokens, max_tokens=384, overlap_tokens=32)
    passages[0].text == text[passages[0].start : passages[0].end]      # every passage is a slice

The document is cut into sentences (and a sentence over the budget into words, a word over it into
characters), which are packed in order into passages of at most `max_tokens`. A passage ends on the largest
boundary in its second half: a paragraph (blank line) before a line, a line before a sentence. Each passage
after the first begins with the last sentences of the one before, as many as fit in `overlap_tokens` (fewer
where the next new sentence would not fit beside them), so a statement cut at a seam is read whole once, and
every passage reads something the one before did not. The passages' slices together cover every character.

    statements = split_statements(text, passages)    # its lines and sentences, each with the passage
    statements[0].passage                             # that holds it whole (the first, at a seam)

A statement is what the teacher writes questions about one at a time (`question_unit: statement`), so that
none is skipped the way a long list is skimmed when a whole passage is asked about at once.

Tokens are counted per piece and summed: a passage may differ from its budget by the few tokens that merge
across a seam, which is why a budget should leave a little room in the teacher's context.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from distill_trainer.errors import UsageError

# each boundary, largest first; the separator stays with the piece before it, so pieces tile the text
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n\s*"),  # paragraphs
    re.compile(r"\n"),  # lines (list items, table rows)
    re.compile(r"(?<=[.!?;:])\s+"),  # sentences
    re.compile(r"\s+"),  # words
)
_SENTENCES = 2  # the level every text is cut down to; smaller cuts only for what is over the budget


@dataclass(frozen=True)
class Passage:
    """One passage: its place in the document (`start`, `end` are character offsets), its text, its size."""

    index: int
    start: int
    end: int
    text: str
    tokens: int

    def label(self, width: int = 48) -> str:
        """How the report names it: its number, where it is, and how it begins."""
        opening = " ".join(self.text.split())
        opening = opening if len(opening) <= width else opening[: width - 1] + "…"
        return f"passage {self.index + 1} (characters {self.start}-{self.end}: “{opening}”)"


def _cut(text: str, start: int, end: int, pattern: re.Pattern) -> list[tuple[int, int]]:
    """Spans of text[start:end] cut after each match of `pattern` (the match stays with the span before)."""
    spans, begin = [], start
    for match in pattern.finditer(text, start, end):
        if match.end() > begin and match.start() > begin:
            spans.append((begin, match.end()))
            begin = match.end()
    if begin < end:
        spans.append((begin, end))
    # whitespace alone is no piece: it joins the span before it (or, at the start, the one after)
    merged: list[tuple[int, int]] = []
    for span in spans:
        if merged and (
            not text[span[0] : span[1]].strip() or not text[merged[-1][0] : merged[-1][1]].strip()
        ):
            merged[-1] = (merged[-1][0], span[1])
        else:
            merged.append(span)
    return merged


@dataclass(frozen=True)
class _Piece:
    start: int
    end: int
    tokens: int
    rank: int  # the boundary it ends on: 0 paragraph (or the end), 1 line, 2 sentence, 3 word, 4 inside one


def _pieces(text, start, end, count, max_tokens, level=0, rank=0) -> list[_Piece]:
    """Pieces tiling text[start:end]: sentences at most (so an overlap can hold one), smaller only where a
    sentence is over the budget, a word halved only where a word is."""
    tokens = count(text[start:end])
    if (level > _SENTENCES and tokens <= max_tokens) or end - start <= 1:
        return [_Piece(start, end, tokens, rank)]
    if level < len(_BOUNDARIES):
        spans = _cut(text, start, end, _BOUNDARIES[level])
        ranks = [level] * (len(spans) - 1) + [rank]  # the last span ends where the whole did
        return [
            piece
            for (s, e), r in zip(spans, ranks)
            for piece in _pieces(text, s, e, count, max_tokens, level + 1, r)
        ]
    middle = (start + end) // 2  # one word over the budget: halve it until the halves fit
    return _pieces(text, start, middle, count, max_tokens, level, len(_BOUNDARIES)) + _pieces(
        text, middle, end, count, max_tokens, level, rank
    )


def split_passages(
    text: str, count_tokens: Callable[[str], int], max_tokens: int, overlap_tokens: int = 0
) -> list[Passage]:
    """Passages of `text` of at most about `max_tokens` each, consecutive ones sharing up to
    `overlap_tokens` (see the module docstring). `count_tokens`: the teacher tokenizer's count of a text."""
    if max_tokens < 1:
        raise UsageError(f"the passage budget must be >= 1 token, got {max_tokens}")
    if not 0 <= overlap_tokens < max_tokens:
        raise UsageError(
            f"the passage overlap must be >= 0 and below the budget ({max_tokens}), got {overlap_tokens}; "
            "lower passage_overlap_tokens"
        )
    if not text.strip():
        raise UsageError("the document is empty; give the text the teacher reads")
    pieces = _pieces(text, 0, len(text), count_tokens, max_tokens)
    passages, first, previous_last = [], 0, -1
    while first < len(pieces):
        last, size, sizes = first, pieces[first].tokens, [pieces[first].tokens]
        while last + 1 < len(pieces) and size + pieces[last + 1].tokens <= max_tokens:
            last += 1
            size += pieces[last].tokens
            sizes.append(size)
        if last + 1 < len(pieces):
            # end on the largest boundary in the passage's second half (a paragraph before a line, ...),
            # past the end of the passage before (an overlap is only ever a beginning)
            new = range(max(first, previous_last + 1), last + 1)
            ends = [i for i in new if sizes[i - first] * 2 >= max_tokens] or [last]
            last = min(ends, key=lambda i: (pieces[i].rank, -i))
        start, end = pieces[first].start, pieces[last].end
        passages.append(Passage(len(passages), start, end, text[start:end], sizes[last - first]))
        if last + 1 == len(pieces):
            break
        previous_last = last
        # the next passage repeats the tail of this one that fits the overlap, and always moves forward: the
        # overlap also leaves room for the next new piece, or that passage would hold the overlap alone (a
        # passage read twice, nothing new in it)
        following, shared = last + 1, 0
        room = min(overlap_tokens, max_tokens - pieces[last + 1].tokens)
        while following - 1 > first and shared + pieces[following - 1].tokens <= room:
            following -= 1
            shared += pieces[following].tokens
        first = following
    return passages


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """`count_tokens` for `split_passages`: the tokens of a text, without special tokens."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Statement:
    """One line or sentence of the document, and the passage it is read in (`Passage.index`)."""

    index: int
    start: int
    end: int
    text: str
    passage: int

    def words(self) -> int:
        return len(_WORD.findall(self.text))


def statement_spans(text: str) -> list[tuple[int, int]]:
    """Where the statements of `text` are, in order: each line cut into sentences, surrounding whitespace
    dropped, empty ones skipped."""
    spans = []
    for line_start, line_end in _cut(text, 0, len(text), _BOUNDARIES[1]):
        for start, end in _cut(text, line_start, line_end, _BOUNDARIES[2]):
            piece = text[start:end]
            if piece.strip():
                start += len(piece) - len(piece.lstrip())
                spans.append((start, end - (len(piece) - len(piece.rstrip()))))
    return spans


def split_statements(text: str, passages: list[Passage]) -> list[Statement]:
    """The statements of `text` (`statement_spans`), each read with the first passage that holds it whole;
    a sentence longer than a passage (cut into words by `split_passages`) with the one holding most of it."""
    statements = []
    for start, end in statement_spans(text):
        home = next((p for p in passages if p.start <= start and end <= p.end), None)
        if home is None:
            home = max(passages, key=lambda p: min(end, p.end) - max(start, p.start))
        statements.append(Statement(len(statements), start, end, text[start:end], home.index))
    return statements


def nearest_passage(question: str, passages: list[Passage]) -> Passage:
    """The passage that shares the most with `question`: the words they share, each weighted by how rare
    it is across the passages (inverse document frequency), the earlier passage on a tie. A plain lexical
    retriever for the questions that do not come with a passage of their own (a hand-written or held-out
    question, when the document is longer than the teacher reads at once)."""
    if not passages:
        raise UsageError("there is no passage to choose from; the document is empty")
    words = [set(_WORD.findall(p.text.lower())) for p in passages]
    asked = set(_WORD.findall(question.lower()))
    found = {w: sum(w in ws for ws in words) for w in asked}
    weight = {w: math.log(1 + len(passages) / n) for w, n in found.items() if n}
    scores = [sum(weight.get(w, 0.0) for w in asked & ws) for ws in words]
    best = max(range(len(passages)), key=lambda i: (scores[i], -i))
    return passages[best]
