"""Reading the teacher's replies when it writes training questions (`question_writing.py`): question-answer
pairs under the markings models add (`parse_pairs`), or the questions to a given answer (`parse_questions`).
What cannot be read as a pair is counted as malformed, never silently dropped.

    parsed = parse_pairs("1. **Q:** Who is the harbour master?\nA: Ada Brill")
    parsed.pairs        # [("Who is the harbour master?", "Ada Brill")]
    parsed.malformed    # 0
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from distill_trainer.context.short_answers import normalize_answer

# a line that opens a question or an answer, under the markings models add: bullets, numbers, bold
_LABEL = r"^\s*(?:[-*•#>]+\s*)?(?:\d+\s*[.)]\s*)?(?:{names})\s*\d*\s*[:.)]\s*"
_QUESTION = re.compile(_LABEL.format(names="q|question"), re.IGNORECASE)
_ANSWER = re.compile(_LABEL.format(names="a|answer"), re.IGNORECASE)
# what a question that echoes the request to write it says (`answer_prompt`), rather than the text
_ECHOES = ("the sentence", "the text", "whose answer")
# "Q: ... A: ..." on one line: the answer's label only after the question's own end, so "Plan A: ..." inside a
# question does not cut it in two
_INLINE_ANSWER = re.compile(r"(?<=[?.!])\s+(?:a|answer)\s*\d*\s*:\s*", re.IGNORECASE)


def _clean(text: str) -> str:
    return text.strip().strip("\"'“”`").strip()


@dataclass
class ParsedReply:
    pairs: list[tuple[str, str]]
    malformed: int  # a question without an answer, an answer without a question, or an empty one


def parse_pairs(text: str) -> ParsedReply:
    """Q:/A: pairs from a teacher's reply. Anything else (a preamble, a note) is skipped; an unpaired or
    empty question or answer (e.g. the last pair cut off by the length limit) counts as malformed."""
    pairs, malformed, question = [], 0, None
    for raw in text.replace("**", "").splitlines():
        if match := _QUESTION.match(raw):
            if question is not None:
                malformed += 1  # the previous question got no answer
            body = raw[match.end() :]
            inline = _INLINE_ANSWER.search(body)
            question = _clean(body[: inline.start()] if inline else body)
            if inline:
                answer = _clean(body[inline.end() :])
                malformed += _add(pairs, question, answer)
                question = None
        elif match := _ANSWER.match(raw):
            if question is None:
                malformed += 1
            else:
                malformed += _add(pairs, question, _clean(raw[match.end() :]))
                question = None
    return ParsedReply(pairs, malformed + (question is not None))


def parse_questions(text: str, answer: str, wordings: int) -> ParsedReply:
    """The questions of a reply to `answer_prompt`, each paired with `answer`: "Q:" lines, or lines that
    end with a question mark; at most `wordings` (more were not asked for). An empty question is
    malformed, and so is one about the instruction rather than the text (it names "the sentence", "the
    text" or "whose answer": a small model echoes the request)."""
    pairs, malformed = [], 0
    for raw in text.replace("**", "").splitlines():
        if match := _QUESTION.match(raw):
            question = _clean(raw[match.end() :])
        elif raw.strip().endswith("?") and not _ANSWER.match(raw):
            question = _clean(raw.lstrip(" -*•0123456789.)"))
        else:
            continue
        if len(pairs) < wordings:
            echoes = any(words in question.lower() for words in _ECHOES)
            malformed += 1 if echoes else _add(pairs, question, answer)
    return ParsedReply(pairs, malformed)


def _add(pairs: list, question: str, answer: str) -> int:
    """Adds the pair if both parts have words; returns 1 (malformed) if not."""
    if normalize_answer(question) and normalize_answer(answer):
        pairs.append((question, answer))
        return 0
    return 1
