"""Coverage (distill_trainer/context/coverage.py): kept pairs per passage with the empty passages named,
facts touched by the training questions (in all, by kind, per held-out set), and the report's lines."""

from __future__ import annotations

import json

import pytest

from distill_trainer.context.coverage import (
    coverage_lines,
    fact_coverage,
    load_facts,
    passage_coverage,
    statement_coverage,
    touches,
)
from distill_trainer.context.passages import split_passages
from distill_trainer.errors import UsageError

DOCUMENT = "Ada Brill is the harbour master.\n\nThe ferry carries 40 cars.\n\nThe fair is on 3 May."
FACTS = [
    {"fact": "role:harbour master", "answer": "Ada Brill", "subject": "harbour master", "kind": "role"},
    {"fact": "count:ferry", "answer": "40", "subject": "ferry", "kind": "count"},
    {"fact": "date:fair", "answer": "3 May", "subject": "fair", "kind": "date"},
]


def test_passages_without_a_kept_question_are_named():
    passages = split_passages(DOCUMENT, lambda t: len(t.split()), max_tokens=8)
    records = [
        {"passage": 0, "status": "kept"},
        {"passage": 0, "status": "duplicate"},
        {"passage": 1, "status": "not confirmed"},
        {"passage": 2, "status": "kept"},
    ]
    coverage = passage_coverage(passages, records)
    assert [(r["written"], r["kept"]) for r in coverage["per_passage"]] == [(2, 1), (1, 0), (1, 1)]
    assert coverage["with_questions"] == 2
    assert coverage["without_questions"] == [passages[1].label()]
    assert "passage 2" in passages[1].label() and "The ferry" in passages[1].label()
    text = "\n".join(coverage_lines({"passages": coverage}))
    assert "2 of 3 (67%)" in text and f"Passages with no training question: {passages[1].label()}" in text


def test_statements_asked_about_without_a_kept_question_are_named():
    statements = ["Ada Brill is the harbour master.", "The ferry carries 40 cars.", "The fair is on 3 May."]
    records = [
        {"statement": statements[0], "status": "kept"},
        {"statement": statements[1], "status": "not confirmed"},
        {"statement": statements[1], "status": "duplicate"},
    ]
    coverage = statement_coverage(statements, records)
    assert coverage == {"asked": 3, "with_questions": 1, "without_questions": statements[1:]}
    text = "\n".join(coverage_lines({"statements": coverage}))
    assert "Statements asked about that gave at least one kept training question: 1 of 3 (33%)" in text
    assert "“The ferry carries 40 cars.”, “The fair is on 3 May.”" in text


def test_facts_touched_need_the_answer_and_the_subject():
    train = [
        {"prompt": "Who is the harbour master?", "answer": "Ada Brill"},
        {"prompt": "Name the harbour master.", "answer": "Ada Brill"},
        {"prompt": "How many cars does it carry?", "answer": "40"},  # no subject: not the ferry fact
    ]
    heldout = {"heldout_facts": [{"prompt": "When is the fair?", "answer": "3 May", "fact": "date:fair"}]}
    coverage = fact_coverage(FACTS, train, heldout)
    assert coverage["touched"] == 1 and coverage["facts"] == 3
    assert coverage["questions_per_fact"] == {"role:harbour master": 2, "count:ferry": 0, "date:fair": 0}
    assert coverage["untouched"] == ["count:ferry", "date:fair"]
    assert coverage["by_kind"]["role"] == {"facts": 1, "touched": 1}
    assert coverage["sets"] == {"heldout_facts": {"facts": 1, "touched": 0}}
    # without a subject, the answer alone decides; the answer in the question counts too
    assert touches({"fact": "x", "answer": "40"}, "How many cars does it carry?", "40 cars")
    assert touches(FACTS[0], "Is Ada Brill the harbour master?", "Yes")
    text = "\n".join(coverage_lines({"facts": coverage}))
    assert "touches: 1 of 3 (33%)" in text and "facts asked by heldout_facts: 0 of 1" in text


def test_a_facts_file_is_checked_with_a_fix(tmp_path):
    path = tmp_path / "facts.jsonl"
    path.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    assert load_facts(path) == FACTS
    path.write_text(json.dumps({"fact": "x"}) + "\n")
    with pytest.raises(UsageError, match="row 1 has no 'answer' text; give every fact its answer"):
        load_facts(path)
    path.write_text("".join(json.dumps(f) + "\n" for f in [*FACTS, FACTS[0]]))
    with pytest.raises(UsageError, match="row 4 repeats the fact 'role:harbour master'"):
        load_facts(path)
    with pytest.raises(UsageError, match="does not exist"):
        load_facts(tmp_path / "missing.jsonl")


def test_nothing_to_cover_writes_no_section():
    assert coverage_lines({}) == []
