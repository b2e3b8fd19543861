"""Passages (distill_trainer/context/passages.py): every passage is a slice of the document within its
budget, together they cover every character, consecutive ones share what the overlap allows, and cuts
fall on the largest boundary that fits."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from distill_trainer.context.passages import nearest_passage, split_passages, tokenizer_counter
from distill_trainer.errors import UsageError
from distill_trainer.testing import build_chat_tokenizer

HANDBOOK = Path(__file__).resolve().parents[2] / "recipes" / "data" / "handbook" / "document.md"


def words(text: str) -> int:  # a counter whose sums are exact, so budgets can be asserted to the token
    return len(text.split())


def assert_tiles(passages, text, max_tokens, count):
    covered = [False] * len(text)
    for passage in passages:
        assert passage.text == text[passage.start : passage.end]
        assert count(passage.text) <= max_tokens
        for i in range(passage.start, passage.end):
            covered[i] = True
    assert all(covered), f"characters {covered.index(False)}... are in no passage"
    assert [p.index for p in passages] == list(range(len(passages)))
    assert all(b.start > a.start and b.end > a.end for a, b in zip(passages, passages[1:]))
    assert not any(p.text[0].isspace() for p in passages[1:])  # a seam's whitespace stays before it


def test_a_document_several_times_the_budget_is_covered_with_the_overlap_asked_for():
    paragraphs = [" ".join(f"p{i}s{j} word word word." for j in range(6)) for i in range(12)]
    text = "\n\n".join(paragraphs)  # 12 paragraphs of 24 words: 288 words, over 7 budgets of 40
    passages = split_passages(text, words, max_tokens=40, overlap_tokens=8)
    assert len(passages) >= 7
    assert_tiles(passages, text, 40, words)
    for first, second in zip(passages, passages[1:]):
        shared = text[second.start : first.end]
        assert second.start < first.end and 0 < words(shared) <= 8  # an overlap, within its budget
        assert shared.split()[0].startswith("p") and shared.rstrip().endswith(".")  # whole sentences


def test_no_overlap_means_passages_meet_without_sharing():
    text = "\n".join(f"- Item {i} is stated here." for i in range(50))
    passages = split_passages(text, words, max_tokens=23, overlap_tokens=0)
    assert_tiles(passages, text, 23, words)
    assert all(b.start == a.end for a, b in zip(passages, passages[1:]))
    # cut between lines: every passage ends with a line's full stop (its newline with it)
    assert all(p.text.rstrip().endswith("stated here.") for p in passages)


def test_paragraphs_stay_whole_when_they_fit():
    text = "First one. Two.\n\nSecond para, short.\n\nThird paragraph here."
    passages = split_passages(text, words, max_tokens=4, overlap_tokens=0)
    assert [p.text.strip() for p in passages] == [
        "First one. Two.",
        "Second para, short.",
        "Third paragraph here.",
    ]


def test_a_passage_always_reads_something_new_after_its_overlap():
    # the overlap (5 words) and the next sentence (13) do not fit the budget (15) together: the overlap
    # must shrink, not make a passage of the overlap alone
    text = "One two three four five. Six seven eight. " + " ".join(["word"] * 12) + " end."
    passages = split_passages(text, words, max_tokens=15, overlap_tokens=5)
    assert_tiles(passages, text, 15, words)
    assert [p.text.strip() for p in passages][-1].endswith("end.")


@pytest.mark.parametrize("seed", range(40))
def test_random_documents_are_tiled_with_overlaps_within_their_budget(seed):
    rng = random.Random(seed)
    sentences = [
        " ".join(f"w{rng.randint(0, 99)}" for _ in range(rng.choice([1, 3, 8, 13, 30])))
        + rng.choice([".", "!", ";", ""])
        + rng.choice([" ", "\n", "\n\n", "  \n \n", "\t"])
        for _ in range(rng.randint(1, 40))
    ]
    text = rng.choice(["", " ", "\n"]) + "".join(sentences)
    max_tokens = rng.randint(3, 40)
    overlap = rng.randint(0, max_tokens - 1)
    passages = split_passages(text, words, max_tokens=max_tokens, overlap_tokens=overlap)
    assert_tiles(passages, text, max_tokens, words)
    for first, second in zip(passages, passages[1:]):
        assert words(text[second.start : max(first.end, second.start)]) <= overlap


def test_a_word_longer_than_the_budget_is_cut_and_still_covered():
    tokenizer = build_chat_tokenizer()
    count = tokenizer_counter(tokenizer)
    text = "short words then " + "x" * 300 + " and the end."
    passages = split_passages(text, count, max_tokens=16, overlap_tokens=2)
    assert_tiles(passages, text, 16, count)


def test_the_handbook_in_real_tokens():
    tokenizer = build_chat_tokenizer()
    count = tokenizer_counter(tokenizer)
    text = HANDBOOK.read_text()
    passages = split_passages(text, count, max_tokens=256, overlap_tokens=24)
    assert count(text) > 4 * 256 and len(passages) >= 5
    for passage in passages:  # summed piece counts may differ from the whole by a seam's merges only
        assert abs(count(passage.text) - passage.tokens) <= 4
        assert passage.tokens <= 256
    covered = set()
    for passage in passages:
        covered.update(range(passage.start, passage.end))
    assert covered == set(range(len(text)))
    # list items are never cut in the middle: each passage ends at a line's end
    assert all(p.text.endswith("\n") or p.end == len(text) for p in passages)


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "message"), [(0, 0, "budget must be >= 1"), (8, 8, "overlap must be >= 0")]
)
def test_bad_budgets_are_refused(max_tokens, overlap, message):
    with pytest.raises(UsageError, match=message):
        split_passages("Some text.", words, max_tokens=max_tokens, overlap_tokens=overlap)


def test_the_nearest_passage_shares_the_rarest_words_with_the_question():
    text = "The mayor opened the bridge. The bridge is red.\n\nThe baker sells bread. The mayor buys bread."
    passages = split_passages(text, lambda t: len(t.split()), 10)
    assert len(passages) == 2
    # "bridge" is in the first passage only, "mayor" in both: the rare word decides
    assert nearest_passage("Who opened the bridge?", passages).index == 0
    assert nearest_passage("What does the baker sell?", passages).index == 1
    # nothing shared: the first passage
    assert nearest_passage("Why?", passages).index == 0
