"""The fictional handbook (recipes/data/handbook/make_handbook.py): the same seed writes the same bytes,
another seed other facts; no held-out wording is a training prompt, held-out facts are never trained, and
the committed files are the ones the command in their README writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill_trainer.context.coverage import load_facts, touches
from distill_trainer.context.knowledge_data import check_fact_split
from distill_trainer.context.short_answers import contains
from recipes.data.handbook.make_handbook import third_person, write_handbook

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "recipes" / "data" / "handbook"
NAMES = (
    "document.md",
    "train.jsonl",
    "heldout-wordings.jsonl",
    "heldout-facts.jsonl",
    "facts.jsonl",
    "README.md",
)


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_same_bytes_other_seed_other_facts(tmp_path):
    first = write_handbook(tmp_path / "a", seed=3)
    second = write_handbook(tmp_path / "b", seed=3)
    other = write_handbook(tmp_path / "c", seed=4)
    assert set(first) == set(NAMES)
    for name in NAMES:
        assert first[name].read_bytes() == second[name].read_bytes(), name
    assert first["document.md"].read_text() != other["document.md"].read_text()


@pytest.mark.parametrize(
    "folder, seed, command_out",
    [("handbook", 0, None), ("handbook-seed1", 1, "recipes/data/handbook-seed1")],
)
def test_the_committed_files_are_what_their_seed_writes(tmp_path, folder, seed, command_out):
    committed = COMMITTED.parent / folder
    fresh = write_handbook(tmp_path, seed=seed, command_out=command_out)
    for name in NAMES:
        assert fresh[name].read_bytes() == (committed / name).read_bytes(), (
            f"{name}: rerun the README command"
        )
    command = f"make_handbook.py --seed {seed} --heldout_fact_share 0.25"
    assert (
        command + (f" --out {command_out}" if command_out else "\n") in (committed / "README.md").read_text()
    )


def test_a_place_is_written_in_plain_english():
    assert [third_person(v) for v in ("have", "hold", "carry", "teach", "store")] == [
        "has",
        "holds",
        "carries",
        "teaches",
        "stores",
    ]


def test_no_heldout_wording_is_trained_and_heldout_facts_never_are(tmp_path):
    paths = write_handbook(tmp_path, seed=1, heldout_fact_share=0.3)
    train, wordings, facts = (read_rows(paths[n]) for n in NAMES[1:4])
    prompts = {row["prompt"] for row in train}
    assert not prompts & {row["prompt"] for row in wordings + facts}
    assert {row["fact"] for row in wordings} == {row["fact"] for row in train}
    assert not {row["fact"] for row in facts} & {row["fact"] for row in train}
    # two wordings train, the third is held out, and which one rotates
    by_fact = {}
    for row in train:
        by_fact.setdefault(row["fact"], set()).add(row["wording"])
    assert all(len(w) == 2 for w in by_fact.values())
    assert all(row["wording"] not in by_fact[row["fact"]] for row in wordings)
    assert {row["wording"] for row in wordings} == {0, 1, 2}
    # the first N training rows and the first N/2 held-out wordings ask about the same facts
    assert [row["fact"] for row in train[:20:2]] == [row["fact"] for row in wordings[:10]]
    sets = {"train": train[:20], "heldout_wordings": wordings[:10], "heldout_facts": facts}
    check_fact_split({n: [dict(r, fact=r["fact"]) for r in rows] for n, rows in sets.items()})


def test_every_gold_answer_is_stated_in_the_document(tmp_path):
    paths = write_handbook(tmp_path, seed=2)
    document = paths["document.md"].read_text()
    rows = [row for name in NAMES[1:4] for row in read_rows(paths[name])]
    assert len({row["fact"] for row in rows}) >= 150  # a few hundred facts
    assert all(contains(document, row["answer"]) for row in rows)
    # three distinct wordings of each trained fact (held-out facts are asked once)
    wordings = {}
    for row in rows:
        wordings.setdefault(row["fact"], set()).add(row["prompt"])
    trained = {row["fact"] for row in read_rows(paths["train.jsonl"])}
    assert all(len(wordings[fact]) == 3 for fact in trained)


def test_the_facts_file_lists_every_fact_once_and_each_question_touches_its_own(tmp_path):
    paths = write_handbook(tmp_path, seed=0)
    facts = load_facts(paths["facts.jsonl"])
    by_id = {fact["fact"]: fact for fact in facts}
    assert len(by_id) == len(facts) == 194
    rows = [row for name in NAMES[1:4] for row in read_rows(paths[name])]
    assert {row["fact"] for row in rows} == set(by_id)
    assert all(by_id[row["fact"]]["answer"] == row["answer"] for row in rows)
    # the coverage rule finds each hand-written question's own fact, and no other for almost every one
    assert all(touches(by_id[row["fact"]], row["prompt"], row["answer"]) for row in rows)
    others = [sum(touches(fact, row["prompt"], row["answer"]) for fact in facts) - 1 for row in rows]
    assert sum(n > 0 for n in others) <= len(rows) // 20


def test_the_dev_questions_are_slices_of_the_training_pool_never_evaluation_rows():
    train = (COMMITTED / "train.jsonl").read_text().splitlines(keepends=True)
    dev = COMMITTED.parent / "handbook-dev"
    assert (dev / "dev-wordings.jsonl").read_text() == "".join(train[96:144])
    assert (dev / "dev-facts.jsonl").read_text() == "".join(train[48:96])
    evaluation = {row["prompt"] for name in NAMES[2:4] for row in read_rows(COMMITTED / name)}
    assert not {row["prompt"] for row in read_rows(dev / "dev-wordings.jsonl")} & evaluation
