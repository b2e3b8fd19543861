"""Scoring short answers against a gold answer: normalised exact match and "contains", their accuracy with
a standard error, and the paired difference of two models' accuracies on the same questions.

    normalize_answer("The Saltgate Library.")      # "saltgate library"
    exact_match("1,250 crowns", "1250 crowns")     # True
    contains("It is held on 14 June.", "14 June")  # True
    score = score_answers(replies, golds)          # {"n", "exact": {...}, "contains": {...}, "per_row"}
    paired_difference(cd_hits, sft_hits)           # difference, its standard error, a 95% interval

Normalisation (in this order): Unicode NFKC, lower case, thousands separators dropped ("1,250" ->
"1250"), ordinal suffixes after a number dropped ("14th" -> "14"), every other character that is not a
letter or a digit becomes a space, the articles "a", "an", "the" are removed, whitespace is collapsed.
`contains` asks whether the normalised gold answer appears in the normalised reply as whole words.
"""

from __future__ import annotations

import math
import re
import unicodedata

ARTICLES = frozenset({"a", "an", "the"})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b")
_NOT_WORD = re.compile(r"[\W_]+")
Z_95 = 1.959963984540054


def normalize_answer(text: str) -> str:
    """The words of `text` that decide whether it answers a question (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    text = _ORDINAL.sub(r"\1", _THOUSANDS.sub("", text))
    words = _NOT_WORD.sub(" ", text).split()
    return " ".join(word for word in words if word not in ARTICLES)


def exact_match(reply: str, gold: str) -> bool:
    return normalize_answer(reply) == normalize_answer(gold)


def contains(reply: str, gold: str) -> bool:
    """The normalised gold answer occurs in the normalised reply, on word boundaries."""
    answer = normalize_answer(gold)
    return bool(answer) and f" {answer} " in f" {normalize_answer(reply)} "


def proportion(hits: list[bool]) -> dict:
    """{n, hits, rate, stderr}: the share of hits and its binomial standard error."""
    n = len(hits)
    k = sum(bool(h) for h in hits)
    rate = k / n if n else float("nan")
    stderr = math.sqrt(rate * (1 - rate) / n) if n else float("nan")
    return {"n": n, "hits": k, "rate": rate, "stderr": stderr}


def score_answers(replies: list[str], golds: list[str]) -> dict:
    """Exact-match and contains accuracy of `replies` against `golds` (same order), and each row's hits."""
    if len(replies) != len(golds):
        raise ValueError(f"{len(replies)} replies for {len(golds)} gold answers")
    exact = [exact_match(r, g) for r, g in zip(replies, golds)]
    inside = [contains(r, g) for r, g in zip(replies, golds)]
    return {
        "n": len(golds),
        "exact": proportion(exact),
        "contains": proportion(inside),
        "per_row": [{"exact": e, "contains": c} for e, c in zip(exact, inside)],
    }


def paired_difference(first: list[bool], second: list[bool]) -> dict:
    """first - second, two models' hit rates on the same questions: the difference, the standard error of
    the mean of the per-question differences (paired: questions both get right or both miss add no
    variance), and its normal 95% interval. Also the unpaired standard error, for comparison."""
    if len(first) != len(second) or not first:
        raise ValueError("a paired difference needs two equally long, non-empty lists of hits")
    n = len(first)
    diffs = [float(a) - float(b) for a, b in zip(first, second)]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else float("nan")
    stderr = math.sqrt(variance / n)
    a, b = proportion(first)["rate"], proportion(second)["rate"]
    return {
        "n": n,
        "difference": mean,
        "stderr": stderr,
        "ci95": [mean - Z_95 * stderr, mean + Z_95 * stderr],
        "unpaired_stderr": math.sqrt(a * (1 - a) / n + b * (1 - b) / n),
        "first_only": sum(1 for x, y in zip(first, second) if x and not y),
        "second_only": sum(1 for x, y in zip(first, second) if y and not x),
    }
