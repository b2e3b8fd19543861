"""How much of a document the training questions touch: per passage (pairs each passage gave the training
set, passages that gave none named), per statement when the teacher was asked about one at a time, and,
where the document's facts are listed in a facts file, per fact (facts that at least one training question
asks about).

    facts = load_facts("recipes/data/handbook/facts.jsonl")    # [{"fact", "answer", "subject", "kind"}]
    coverage = {"passages": passage_coverage(passages, records),
                "facts": fact_coverage(facts, train_rows, {"heldout_facts": rows, ...})}
    lines = coverage_lines(coverage)                             # markdown for results.md

A facts file is JSONL with `fact` (an id) and `answer` on every row, and optionally `subject` (what the
fact is about: a person, a place, a post) and `kind`. A training question touches a fact when the fact's
answer and its subject (if given) both appear, normalised as answers are scored, as whole words in the
question or its answer: "Who is the harbour master? Isolde Mottram" touches the fact "harbour master ->
Isolde Mottram". The facts only count; they never reach training.
"""

from __future__ import annotations

from pathlib import Path

from distill_trainer.context.data import read_records
from distill_trainer.context.passages import Passage
from distill_trainer.context.short_answers import contains
from distill_trainer.errors import UsageError

# the untouched facts and empty passages results.md names before it says "and N more"
LISTED = 12


def load_facts(path) -> list[dict]:
    """The rows of a facts file (see the module docstring), each checked."""
    if not Path(str(path)).is_file():
        raise UsageError(f"facts_file {path} does not exist; give a JSONL file of facts (fact, answer)")
    records, where = read_records(path)
    if not records:
        raise UsageError(f"{where} has no rows; give a file with at least one fact")
    facts = []
    for number, record in enumerate(records, start=1):
        values = record if isinstance(record, dict) else {}
        for column in ("fact", "answer"):
            if not isinstance(values.get(column), str) or not values[column].strip():
                raise UsageError(f"{where} row {number} has no {column!r} text; give every fact its {column}")
        if any(fact["fact"] == values["fact"] for fact in facts):
            raise UsageError(f"{where} row {number} repeats the fact {values['fact']!r}; give each fact once")
        subject = values.get("subject")
        if subject is not None and not isinstance(subject, str):
            raise UsageError(f"{where} row {number}: 'subject' must be text")
        facts.append(
            {
                "fact": values["fact"],
                "answer": values["answer"],
                "subject": subject,
                "kind": values.get("kind"),
            }
        )
    return facts


def touches(fact: dict, prompt: str, answer: str) -> bool:
    """A question-answer pair asks about `fact` (module docstring)."""
    text = f"{prompt} {answer}"
    return contains(text, fact["answer"]) and (not fact.get("subject") or contains(text, fact["subject"]))


def passage_coverage(passages: list[Passage], records: list[dict]) -> dict:
    """Per passage: pairs written and kept (records of `question_writing.write_questions`)."""
    rows = []
    for passage in passages:
        mine = [r for r in records if r["passage"] == passage.index]
        kept = sum(r["status"] == "kept" for r in mine)
        rows.append(
            {"passage": passage.label(), "tokens": passage.tokens, "written": len(mine), "kept": kept}
        )
    return {
        "per_passage": rows,
        "with_questions": sum(row["kept"] > 0 for row in rows),
        "without_questions": [row["passage"] for row in rows if not row["kept"]],
    }


def statement_coverage(statements: list[str], records: list[dict]) -> dict:
    """Of the statements asked about (question_unit: statement), those that gave a kept training pair."""
    kept = {r["statement"] for r in records if r["status"] == "kept"}
    return {
        "asked": len(statements),
        "with_questions": sum(s in kept for s in statements),
        "without_questions": [s for s in statements if s not in kept],
    }


def fact_coverage(
    facts: list[dict], train_rows: list[dict], sets: dict[str, list[dict]] | None = None
) -> dict:
    """How many facts at least one training question touches, in all, by kind and, for question sets whose
    rows carry fact ids (`sets`, e.g. the held-out ones), among the facts each set asks about."""
    questions = {
        fact["fact"]: sum(touches(fact, row["prompt"], row["answer"]) for row in train_rows) for fact in facts
    }
    touched = {fact_id for fact_id, n in questions.items() if n}
    by_kind: dict[str, dict] = {}
    for fact in facts:
        if fact.get("kind"):
            entry = by_kind.setdefault(fact["kind"], {"facts": 0, "touched": 0})
            entry["facts"] += 1
            entry["touched"] += fact["fact"] in touched
    per_set = {}
    for name, rows in (sets or {}).items():
        asked = {row["fact"] for row in rows if row.get("fact") in questions}
        if asked:
            per_set[name] = {"facts": len(asked), "touched": len(asked & touched)}
    return {
        "facts": len(facts),
        "touched": len(touched),
        "by_kind": by_kind,
        "sets": per_set,
        "untouched": [fact["fact"] for fact in facts if fact["fact"] not in touched],
        "questions_per_fact": questions,
    }


def _share(part: int, whole: int) -> str:
    return f"{part} of {whole} ({part / whole:.0%})" if whole else "0 of 0"


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def coverage_lines(coverage: dict) -> list[str]:
    """results.md's coverage section (markdown lines); nothing when there is nothing to say."""
    passages, facts = coverage.get("passages"), coverage.get("facts")
    statements = coverage.get("statements")
    if not passages and not facts and not statements:
        return []
    lines = ["## What the training questions cover", ""]
    if statements and statements["asked"]:
        lines += [
            "Statements asked about that gave at least one kept training question: "
            f"{_share(statements['with_questions'], statements['asked'])}.",
            "",
        ]
        if statements["without_questions"]:
            quoted = [f"“{s}”" for s in statements["without_questions"]]
            lines += [f"Statements with no training question: {_listed(quoted)}.", ""]
    if passages:
        rows = passages["per_passage"]
        lines += [
            f"Passages that gave at least one kept training question: "
            f"{_share(passages['with_questions'], len(rows))}.",
            "",
            "| passage | tokens | pairs written | kept |",
            "| --- | --- | --- | --- |",
        ]
        lines += [f"| {r['passage']} | {r['tokens']} | {r['written']} | {r['kept']} |" for r in rows]
        lines.append("")
        if passages["without_questions"]:
            lines += [f"Passages with no training question: {_listed(passages['without_questions'])}.", ""]
    if facts:
        lines.append(
            f"Facts (facts_file) that at least one training question touches: "
            f"{_share(facts['touched'], facts['facts'])}."
        )
        for kind, entry in facts["by_kind"].items():
            lines.append(f"- {kind}: {_share(entry['touched'], entry['facts'])}")
        for name, entry in facts["sets"].items():
            lines.append(f"- facts asked by {name}: {_share(entry['touched'], entry['facts'])}")
        if facts["untouched"]:
            lines.append(f"- untouched: {_listed(facts['untouched'])}")
        lines += [
            "",
            "A question touches a fact when the fact's answer and its subject both appear (normalised, "
            "whole words) in the question or its answer; results.json lists every fact's count.",
            "",
        ]
    return lines
