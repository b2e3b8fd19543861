"""Short-answer scoring: the normalisation on hand-made cases, exact match against contains, binomial
standard errors, and the paired difference of two models on the same questions."""

from __future__ import annotations

import math

import pytest

from distill_trainer.context.short_answers import (
    contains,
    exact_match,
    normalize_answer,
    paired_difference,
    proportion,
    score_answers,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The Saltgate Library.", "saltgate library"),
        ("  Lorcan   FAIRWEATHER!\n", "lorcan fairweather"),
        ("1,250 crowns", "1250 crowns"),
        ("It holds 12,400 books, not 1,24.", "it holds 12400 books not 1 24"),
        ("on the 14th of June", "on 14 of june"),
        ("Cobbler's Row", "cobbler s row"),
        ("an apple a day", "apple day"),
        ("Ｆｕｌｌｗｉｄｔｈ ２０１２", "fullwidth 2012"),  # NFKC folds full-width forms
        ("", ""),
        ("the", ""),
    ],
)
def test_normalisation_on_hand_made_cases(text, expected):
    assert normalize_answer(text) == expected


def test_exact_match_and_contains():
    assert exact_match("Lorcan Fairweather.", "lorcan fairweather")
    assert exact_match("1250 crowns", "1,250 crowns")
    assert not exact_match("It is Lorcan Fairweather.", "Lorcan Fairweather")
    assert contains("It is Lorcan Fairweather.", "Lorcan Fairweather")
    assert contains("The festival is held on 14 June.", "14 June")
    assert contains("On the 14th June", "14 June")
    # whole words only: a number inside a longer number, or half a name, is not the answer
    assert not contains("It was founded in 19820.", "1982")
    assert not contains("Fairweathers", "Fairweather")
    assert not contains("14 July", "14 June")
    assert not contains("anything", "")  # an empty gold answer never counts
    assert not contains("", "2012")


def test_score_answers_counts_and_standard_errors():
    score = score_answers(["Mat.", "on the mat", "rug", "MAT"], ["mat"] * 4)
    assert score["exact"] == {"n": 4, "hits": 2, "rate": 0.5, "stderr": pytest.approx(0.25)}
    assert score["contains"]["hits"] == 3 and score["contains"]["stderr"] == pytest.approx(
        math.sqrt(0.75 * 0.25 / 4)
    )
    assert [row["contains"] for row in score["per_row"]] == [True, True, False, True]
    with pytest.raises(ValueError):
        score_answers(["a"], ["a", "b"])
    assert math.isnan(proportion([])["rate"])


def test_paired_difference():
    first = [True, True, True, False, True, False]
    second = [True, False, False, False, True, True]
    d = paired_difference(first, second)
    diffs = [0, 1, 1, 0, 0, -1]
    mean = sum(diffs) / 6
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 5)
    assert d["difference"] == pytest.approx(1 / 6) and d["stderr"] == pytest.approx(sd / math.sqrt(6))
    assert d["ci95"] == pytest.approx(
        [mean - 1.96 * sd / math.sqrt(6), mean + 1.96 * sd / math.sqrt(6)], abs=1e-3
    )
    assert (d["first_only"], d["second_only"]) == (2, 1)
    # identical models: no difference and no spread
    same = paired_difference(first, first)
    assert same["difference"] == 0 and same["stderr"] == 0 and same["unpaired_stderr"] > 0
    with pytest.raises(ValueError):
        paired_difference([True], [True, False])
