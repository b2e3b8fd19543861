"""The answers a statement holds: its names, numbers, dates and amounts, each a span of the statement's own
text, so that the teacher can be asked for the question to a given answer (`question_unit: answer`).

    answer_spans("- The Cresswell Library, on Cobbler's Row, was founded in 1753 and holds 13,591 books.")
    # ['Cresswell Library', "Cobbler's Row", '1753', '13,591 books']
    statement_body("- Isolde Mottram has been the harbour master since 1982.")
    # 'Isolde Mottram has been the harbour master since 1982.'

Asking for the question to an answer taken from the text, rather than for pairs, is how question
generation is usually made to cover a text (answer-aware question generation): every name and number of a
statement is asked about, none is invented, and a small teacher only writes a short question. The spans
are found by their form alone, so any document's facts are candidates:
- a date: a day and a month name, with an optional year ("5 December", "December 5, 1890");
- an amount or count: a number with the plain word after it when that word is no function word
  ("147 crowns", "13,591 books"; "in 1753 and" gives "1753"), or a currency sign before it;
- a name: a run of capitalised words, joined by "of", "the", "de", "and" inside it ("Night of the Bells"),
  with a leading article dropped; a single capitalised word that opens the statement is not a name (it is
  capitalised because it opens the sentence).
Spans never overlap: dates first, then amounts, then names.
"""

from __future__ import annotations

import re

_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
_DATE = re.compile(
    rf"\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH}(?:,? \d{{4}})?\b|\b{_MONTH} \d{{1,2}}(?:,? \d{{4}})?\b"
)
_FUNCTION_WORDS = frozenset(
    "a an and are as at be by for from has have in into is it of on or since that the to was were "
    "with".split()
)
_NUMBER = re.compile(r"(?:[£$€¥]\s?)?\b\d[\d,]*(?:\.\d+)?%?(?:\s+([a-z][a-z'’-]*))?")
_WORD = r"[A-Z]\.|[A-Z][\w'’-]*\w['’]?|[A-Z]"  # an initial, a word (with its apostrophes), a letter
_NAME = re.compile(rf"(?:{_WORD})(?:\s+(?:(?:of|the|de|la|van|von|and)\s+)*(?:{_WORD}))*")
_ARTICLE = re.compile(r"^(?:The|A|An|This|These|That|Those|Each|Every)\s+")
_OPENING = re.compile(r"^[\s#>*•-]*(?:\d+[.)]\s*)?")  # list and heading marks before a statement's text


def _free(taken: list[tuple[int, int]], start: int, end: int) -> bool:
    return all(end <= s or start >= e for s, e in taken)


def answer_spans(statement: str) -> list[str]:
    """The candidate answers of one statement, in the order they appear, each once (module docstring)."""
    found: list[tuple[int, int]] = []
    for match in _DATE.finditer(statement):
        found.append(match.span())
    for match in _NUMBER.finditer(statement):
        end = match.end()
        if match.group(1) and match.group(1) in _FUNCTION_WORDS:
            end = match.start(1)
        text = statement[match.start() : end].rstrip(" ,.")
        span = (match.start(), match.start() + len(text))
        if text and _free(found, *span):
            found.append(span)
    opening = _OPENING.match(statement).end()
    for match in _NAME.finditer(statement):
        start, text = match.start(), match.group()
        if article := _ARTICLE.match(text):
            start, text = start + article.end(), text[article.end() :]
        text = text if re.search(r"\b[A-Z]\.$", text) else text.rstrip(".")
        if not text or (match.start() == opening and " " not in match.group()):
            continue  # nothing left after the article, or the statement's capitalised first word
        span = (start, start + len(text))
        if _free(found, *span):
            found.append(span)
    spans = []
    for start, end in sorted(found):
        if statement[start:end] not in spans:
            spans.append(statement[start:end])
    return spans


def statement_body(statement: str) -> str:
    """The statement without its list or heading marks, as the teacher is shown it."""
    return statement[_OPENING.match(statement).end() :].strip()
