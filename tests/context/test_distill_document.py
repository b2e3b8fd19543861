"""Knowledge injection end to end on tiny models (recipes/distill_document.py): the document is in the
teacher's view only, CD and SFT both train, every row of the results table is there, and a rerun reads the
teacher's answers (and the base student's) from the completion cache without generating any."""

from __future__ import annotations

import json

import pytest
from helpers import load_recipe, reply_recipe_argv

from distill_trainer.context.knowledge_data import KnowledgeArguments, load_question_sets
from distill_trainer.context.question_writing import QuestionWritingArguments, longest_instruction
from distill_trainer.context.steps import chat_view_dataset
from distill_trainer.errors import UsageError
from distill_trainer.testing import build_chat_tokenizer
from distill_trainer.views.chat import chat_prompt_ids

DOCUMENT = "The cat sat on the mat. The doctor saw the lawyer. Two dogs run in the park."
FACTS = [  # fact id, gold answer, three wordings
    ("cat", "mat", ["Where sat the cat?", "The cat sat where?", "Where is the cat?"]),
    ("doctor", "lawyer", ["Who did the doctor see?", "The doctor saw whom?", "Whom saw the doctor?"]),
    ("dogs", "park", ["Where do two dogs run?", "Dogs run where?", "Where run the dogs?"]),
    ("count", "Two", ["How many dogs run?", "Dogs: how many?", "Count the dogs."]),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def write_data(tmp_path):
    """Facts 0-2 train (wordings 0 and 1), their wording 2 is held out; fact 3 is held out entirely."""
    row = lambda fact, wording: {"prompt": fact[2][wording], "answer": fact[1], "fact": fact[0]}  # noqa: E731
    (tmp_path / "document.md").write_text(DOCUMENT)
    return {
        "document_file": str(tmp_path / "document.md"),
        "data_file": write_jsonl(tmp_path / "train.jsonl", [row(f, w) for f in FACTS[:3] for w in (0, 1)]),
        "heldout_wordings_file": write_jsonl(tmp_path / "hw.jsonl", [row(f, 2) for f in FACTS[:3]]),
        "heldout_facts_file": write_jsonl(tmp_path / "hf.jsonl", [row(FACTS[3], 0)]),
        "forgetting_file": write_jsonl(tmp_path / "other.jsonl", [{"prompt": "A man is playing a guitar"}]),
    }


def recipe_argv(tmp_path, chat_dirs, **overrides):
    values = {
        **write_data(tmp_path),
        "max_new_tokens": 4,
        "forgetting_max_new_tokens": 5,
        "generation_batch_size": 4,
    }
    return reply_recipe_argv(tmp_path, chat_dirs, values, overrides)


def test_the_document_is_in_the_teachers_view_only(tmp_path):
    tokenizer = build_chat_tokenizer()
    args = KnowledgeArguments(**{k: v for k, v in write_data(tmp_path).items() if k != "forgetting_file"})
    sets = load_question_sets(args)
    replies = [{"ids": [5, 6, tokenizer.convert_tokens_to_ids("<|im_end|>")]}] * len(sets["train"])
    views = chat_view_dataset(tokenizer, sets["train"], replies, "system")
    text = lambda ids: tokenizer.decode(ids)  # noqa: E731
    for view, row in zip(views, sets["train"]):
        assert DOCUMENT in text(view["teacher_input_ids"]) and row["prompt"] in text(
            view["teacher_input_ids"]
        )
        assert DOCUMENT not in text(view["input_ids"]) and row["prompt"] in text(view["input_ids"])
        assert not any(sentence in text(view["input_ids"]) for sentence in DOCUMENT.split(". "))
        assert view["input_ids"] == chat_prompt_ids(tokenizer, row["prompt"]) + [5, 6, 401]
        # the same answer ids end both views
        assert view["input_ids"][-3:] == view["teacher_input_ids"][-3:]


@pytest.mark.integration
def test_recipe_end_to_end_and_a_rerun_reuses_the_teachers_answers(tmp_path, chat_dirs):
    recipe = load_recipe("distill_document")
    metrics = recipe.main(recipe_argv(tmp_path, chat_dirs))
    out = tmp_path / "out"
    for name in (
        "results.md",
        "results.json",
        "metrics.json",
        "predictions_answers.jsonl",
        "adapter_config.json",
    ):
        assert (out / name).is_file(), name
    assert (out / "sft" / "adapter_config.json").is_file()
    # 6 training, 3 held-out wordings, 1 held-out fact: the teacher answers all 10 once
    assert metrics["teacher_completions"]["generated"] == 10 and metrics["teacher_completions"]["reused"] == 0
    cut_off = metrics["teacher_completions"]["cut_off"]
    assert f"{cut_off} cut off at that limit" in (out / "results.md").read_text()
    assert metrics["cd"]["train"]["global_step"] == 2 and metrics["sft"]["train"]["global_step"] == 2
    results = metrics["results"]
    assert set(results["models"]) == {"before", "cd", "sft", "open_student", "open_teacher"}
    for model in results["models"].values():
        assert model["scores"]["heldout_wordings"]["contains"]["n"] == 3
        assert model["scores"]["heldout_facts"]["exact"]["n"] == 1
    assert results["models"]["cd"]["forgetting_kl"]["kl_per_token"] > 0
    assert results["models"]["sft"]["forgetting_kl"]["n"] == 1
    comparison = results["cd_vs_sft"]["heldout_wordings"]["contains"]
    assert comparison["n"] == 3 and comparison["ci95"][0] <= comparison["difference"] <= comparison["ci95"][1]
    report = (out / "results.md").read_text()
    assert (
        "student after SFT on the training answers, closed book" in report
        and "CD − SFT on held-out wordings" in report
    )
    # both tables name the code that made them, and it is today's
    from distill_trainer.code_stamp import read_stamp, staleness

    for table in ("results.md", "results.json"):
        record = read_stamp(out / table)
        assert record and record["entry"] == ["recipes/distill_document.py"] and staleness(record) == []
    records = [json.loads(line) for line in (out / "predictions_answers.jsonl").read_text().splitlines()]
    assert len(records) == 10 and [r["set"] for r in records].count("heldout_wordings") == 3
    # the trained models answer the held-out questions and, closed book, their own training questions
    # (what they learned of what they were taught); the base student answers only the held-out ones
    assert {"before", "cd", "sft", "open_student", "open_teacher", "gold"} <= set(records[-1])
    assert records[0]["set"] == "train" and {"cd", "sft", "open_teacher"} <= set(records[0])
    assert "before" not in records[0]
    for key in ("cd", "sft"):
        assert results["models"][key]["scores"]["train"]["contains"]["n"] == 6
    assert "train" not in results["models"]["before"]["scores"]
    assert "CD − SFT on training wordings" in report
    # a rerun (new output_dir): every answer generated before training comes from the cache
    again = recipe.main(recipe_argv(tmp_path, chat_dirs, output_dir=str(tmp_path / "out2")))
    assert again["teacher_completions"] == dict(metrics["teacher_completions"], reused=10, generated=0)
    assert again["base_completions"]["generated"] == 0
    assert again["results"]["models"]["open_teacher"] == results["models"]["open_teacher"]
    assert again["results"]["models"]["cd"]["scores"] == results["models"]["cd"]["scores"]


@pytest.mark.integration
def test_a_separate_teacher_is_not_loaded_on_a_rerun(tmp_path, chat_dirs):
    recipe = load_recipe("distill_document")
    argv = recipe_argv(
        tmp_path, chat_dirs, teacher_model_name_or_path=chat_dirs["teacher"], sft_baseline=False
    )
    first = recipe.main(argv)
    assert first["teacher_loaded"] and not first["teacher_output_cache"]["reused"]
    assert "sft" not in first["results"]["models"]
    again = recipe.main(
        recipe_argv(
            tmp_path,
            chat_dirs,
            teacher_model_name_or_path=chat_dirs["teacher"],
            sft_baseline=False,
            output_dir=str(tmp_path / "out2"),
        )
    )
    assert not again["teacher_loaded"] and again["teacher_output_cache"]["reused"]
    assert again["teacher_completions"]["generated"] == 0


def test_held_out_facts_that_are_trained_are_refused(tmp_path, chat_dirs):
    recipe = load_recipe("distill_document")
    data = write_data(tmp_path)
    argv = recipe_argv(tmp_path, chat_dirs, heldout_facts_file=data["data_file"])
    with pytest.raises(
        UsageError, match="repeats a training question|held-out facts are also trained"
    ) as error:
        recipe.main(argv)
    assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


def test_validate_checks_the_question_sets_without_loading_a_model(tmp_path, chat_dirs, monkeypatch, capsys):
    from test_distill_context import no_model_loading

    from distill_trainer.run.cli import main as cli

    no_model_loading(monkeypatch)
    assert cli(["validate", *recipe_argv(tmp_path, chat_dirs), "--recipe", "distill_document"]) == 0
    out = capsys.readouterr().out
    assert "train 6 questions, heldout_wordings 3 questions, heldout_facts 1 questions" in out
    assert "1 forgetting prompts" in out and not (tmp_path / "out").exists()
    data = write_data(tmp_path)
    bad = recipe_argv(tmp_path, chat_dirs, heldout_facts_file=data["data_file"])
    assert cli(["validate", *bad, "--recipe", "distill_document"]) == 2
    assert "held-out facts are also trained" in capsys.readouterr().err


# ---- questions: generate (the teacher writes the training questions from the document)

# what the teacher "writes" for each sentence of a passage (a random tiny model writes no readable pair)
WRITTEN = {
    "cat": "Q: Where did the cat sit?\nA: on the mat\nQ: What sat on the mat?\nA: the cat\n"
    "Q: Where is the cat?\nA: mat\n",  # the last one is a held-out wording: never trained
    "doctor": "1. **Q:** Whom did the doctor meet?\n**A:** the lawyer\nQ: cut off",
    "dogs": "Q: How many dogs run in the park? A: Two\n",
}
CONFIRMED = {
    "Where did the cat sit?": "the mat",
    "Whom did the doctor meet?": "lawyer",
    "How many dogs": "two",
}


def scripted_completions(real, document, confirmed=CONFIRMED):
    """`completions` as the recipe runs it (cache and all), with the writing replies replaced by WRITTEN
    and the checks answered by `confirmed` (anything else is not confirmed); the answers with the whole
    document in view stay the tiny model's own."""

    def completions(teacher, tokenizer, rows, settings, **options):
        replies, info = real(teacher, tokenizer, rows, settings, **options)
        texts = []
        for row, reply in zip(rows, replies):
            if row["prompt"].startswith("Write "):
                texts.append("".join(t for word, t in WRITTEN.items() if word in row["context"]))
            elif row["context"] and row["context"] != document:  # a check, the passage in view
                texts.append(next((a for q, a in confirmed.items() if row["prompt"].startswith(q)), "a dog"))
            else:
                texts.append(reply["text"])
        return [dict(reply, text=text) for reply, text in zip(replies, texts)], info

    return completions


def generate_argv(tmp_path, chat_dirs, **overrides):
    data = write_data(tmp_path)
    del data["data_file"]  # questions: generate reads no question file
    facts = [{"fact": fact, "answer": answer, "subject": fact} for fact, answer, _ in FACTS]
    values = {
        **data,
        "questions": "generate",
        "facts_file": write_jsonl(tmp_path / "facts.jsonl", facts),
        "passage_tokens": 12,
        "passage_overlap_tokens": 0,
        "question_max_new_tokens": 6,
        "max_new_tokens": 4,
        "forgetting_max_new_tokens": 5,
        "generation_batch_size": 4,
    }
    return reply_recipe_argv(tmp_path, chat_dirs, values, overrides)


@pytest.mark.integration
def test_recipe_from_the_document_alone_writes_checks_and_covers_its_questions(
    tmp_path, chat_dirs, monkeypatch
):
    recipe = load_recipe("distill_document")
    monkeypatch.setattr(recipe, "completions", scripted_completions(recipe.completions, DOCUMENT))
    metrics = recipe.main(generate_argv(tmp_path, chat_dirs))
    out = tmp_path / "out"
    counts = metrics["generated_questions"]
    passages = counts["passages"]
    assert passages >= 2 and counts["completions"]["writing"]["generated"] == passages
    assert counts["kept"] == 3 and counts["heldout_overlap"] == 1 and counts["malformed"] == 1
    assert counts["not_confirmed"] == 1  # "What sat on the mat?" answered "a dog"
    assert counts["written"] == sum(
        counts[k] for k in ("kept", "answer_in_question", "duplicates", "heldout_overlap", "not_confirmed")
    )
    records = [json.loads(line) for line in (out / "generated_questions.jsonl").read_text().splitlines()]
    assert len(records) == counts["written"] and {r["status"] for r in records} >= {"kept", "not confirmed"}
    # only the kept pairs train: no hand-written question reaches the training set
    trained = [json.loads(line) for line in (out / "predictions_answers.jsonl").read_text().splitlines()]
    trained = [r["prompt"] for r in trained if r["set"] == "train"]
    assert trained == [r["prompt"] for r in records if r["status"] == "kept"] and len(trained) == 3
    hand_written = {prompt for _, _, wordings in FACTS for prompt in wordings}
    assert not {p.removesuffix(" Answer in a few words.") for p in trained} & hand_written
    assert metrics["questions"]["train"] == 3 and metrics["cd"]["train"]["global_step"] == 2
    # the report accounts for every pair and says what the questions cover
    report = (out / "results.md").read_text()
    assert "training questions written by the teacher from the document" in report
    assert "kept 3" in report and "1 not confirmed" in report
    coverage = metrics["results"]["coverage"]
    assert len(coverage["passages"]["per_passage"]) == passages
    # one writing request per statement (the default question_unit), each accounted for in the report
    assert coverage["statements"]["asked"] == counts["statements"] == 3
    assert "Statements asked about that gave at least one kept training question" in report
    assert coverage["facts"]["touched"] == 3 and coverage["facts"]["untouched"] == ["count"]
    assert "## What the training questions cover" in report and "3 of 4 (75%)" in report
    # a rerun writes and checks nothing again: every reply comes from the completion cache
    again = recipe.main(generate_argv(tmp_path, chat_dirs, output_dir=str(tmp_path / "out2")))
    rerun = again["generated_questions"]["completions"]
    assert rerun["writing"] == dict(counts["completions"]["writing"], generated=0, reused=passages)
    assert rerun["checking"]["generated"] == 0 and again["teacher_completions"]["generated"] == 0
    assert (tmp_path / "out2" / "generated_questions.jsonl").read_text() == (
        out / "generated_questions.jsonl"
    ).read_text()


def test_validate_reports_the_passages_and_refuses_a_question_file_with_generate(
    tmp_path, chat_dirs, monkeypatch, capsys
):
    from test_distill_context import no_model_loading

    from distill_trainer.run.cli import main as cli

    no_model_loading(monkeypatch)
    assert cli(["validate", *generate_argv(tmp_path, chat_dirs), "--recipe", "distill_document"]) == 0
    out = capsys.readouterr().out
    assert "train: written by the teacher" in out and "passages of at most about 12 tokens" in out
    assert "4 facts for the coverage report" in out
    data = write_data(tmp_path)
    both = generate_argv(tmp_path, chat_dirs, data_file=data["data_file"])
    assert cli(["validate", *both, "--recipe", "distill_document"]) == 2
    assert "remove data_file" in capsys.readouterr().err


def test_a_run_whose_teacher_keeps_no_question_stops_with_the_counts(tmp_path, chat_dirs, monkeypatch):
    recipe = load_recipe("distill_document")
    monkeypatch.setattr(recipe, "completions", scripted_completions(recipe.completions, DOCUMENT, {}))
    counted = r"kept no training question \(3 passages, asked about 3 of their 3 statements .* kept 0\)"
    with pytest.raises(UsageError, match=counted) as error:
        recipe.main(generate_argv(tmp_path, chat_dirs, sft_baseline=False))
    assert "4 not confirmed" in str(error.value) and not (tmp_path / "out").exists()


# ---- a document longer than the teacher reads at once: each question with one passage in view

FILLER = " ".join(f"Room {i} has a blue door and {i} chairs." for i in range(1, 61))


def long_document_argv(tmp_path, chat_dirs, **overrides):
    """The test document with filler sentences: several times max_context_tokens."""
    argv = generate_argv(tmp_path, chat_dirs, **overrides)
    (tmp_path / "document.md").write_text(DOCUMENT + " " + FILLER)
    return argv


@pytest.mark.integration
def test_a_document_longer_than_the_teachers_context_is_read_one_passage_at_a_time(
    tmp_path, chat_dirs, monkeypatch
):
    recipe = load_recipe("distill_document")
    tokenizer = build_chat_tokenizer()
    # the longest prompt beside a passage: the request to write about the longest statement
    instruction = longest_instruction(QuestionWritingArguments(), DOCUMENT + " " + FILLER)
    limit = len(chat_prompt_ids(tokenizer, instruction, "", "system")) + 60 + 4  # a passage, and seams
    seen = []
    scripted = scripted_completions(recipe.completions, DOCUMENT + " " + FILLER)

    def recording(teacher, tokenizer, rows, settings, **options):
        seen.extend(rows)
        return scripted(teacher, tokenizer, rows, settings, **options)

    monkeypatch.setattr(recipe, "completions", recording)
    argv = long_document_argv(tmp_path, chat_dirs, max_context_tokens=limit, passage_tokens=60)
    metrics = recipe.main(argv)
    context = metrics["teacher_context"]
    assert context["mode"] == "passage" and context["limit"] == limit
    assert context["prompt_tokens"] >= 3 * limit  # the whole document is several times what it reads
    # one writing request per statement, with its passage in view; in document order, so the passages
    # appear in theirs
    ordered = list(dict.fromkeys(row["context"] for row in seen if row["prompt"].startswith("Write ")))
    passages = set(ordered)
    assert len(ordered) == metrics["generated_questions"]["passages"] >= 6
    # every prompt with a context reads one passage, within the limit; none reads the whole document
    for row in (r for r in seen if r["context"]):
        assert row["context"] in passages
        assert len(chat_prompt_ids(tokenizer, row["prompt"], row["context"], "system")) <= limit
    # a written pair is answered with the passage it was written from; a held-out question with the
    # passage that shares the most words with it
    records = [
        json.loads(line) for line in (tmp_path / "out" / "generated_questions.jsonl").read_text().splitlines()
    ]
    kept = {r["prompt"]: ordered[r["passage"]] for r in records if r["status"] == "kept"}
    assert kept and all(row["context"] == kept[row["prompt"]] for row in seen if row["prompt"] in kept)
    dogs = next(row for row in seen if row["prompt"].startswith("How many dogs run?"))
    assert "dogs" in dogs["context"]
    assert "longer than the teacher reads at once" in (tmp_path / "out" / "results.md").read_text()


def test_the_report_says_why_the_teacher_reads_one_passage():
    reading = load_recipe("distill_document").passage_reading
    # chosen (teacher_context: passage) with a document that fits: the report must not call it too long
    chosen = reading({"mode": "passage", "limit": 32768, "prompt_tokens": 2000, "fits": True}, 9)
    assert chosen.startswith("teacher_context: passage: ") and "one of 9 passages" in chosen
    assert reading({"mode": "passage", "limit": None, "prompt_tokens": 2000, "fits": True}, 9) == chosen
    forced = reading({"mode": "passage", "limit": 60, "prompt_tokens": 400, "fits": False}, 9)
    assert forced.startswith("the document is longer than the teacher reads at once (60 tokens): ")


def test_a_document_over_the_teachers_context_is_refused_when_it_must_be_read_whole(tmp_path, chat_dirs):
    recipe = load_recipe("distill_document")
    argv = long_document_argv(tmp_path, chat_dirs, max_context_tokens=60, teacher_context="document")
    with pytest.raises(UsageError, match="teacher_context: passage"):
        recipe.main(argv)
    argv = long_document_argv(tmp_path, chat_dirs, max_context_tokens=30, teacher_context="passage")
    with pytest.raises(UsageError, match="lower passage_tokens"):
        recipe.main(argv)
    assert not (tmp_path / "out").exists()


def test_question_writing_settings_with_a_question_file_are_refused(tmp_path, chat_dirs):
    recipe = load_recipe("distill_document")
    argv = recipe_argv(tmp_path, chat_dirs, questions_per_passage=8, question_seed=3)
    with pytest.raises(
        UsageError, match="questions_per_passage, question_seed only shape .* questions: generate"
    ):
        recipe.main(argv)
    assert not (tmp_path / "out").exists()
