"""Training questions written by the teacher (distill_trainer/context/question_writing.py): the teacher's
reply is parsed under the markings models add, malformed fragments are counted, duplicates and held-out
questions are dropped and counted, a pair the teacher does not confirm with its passage in view is dropped
and counted; with a real (tiny) model, through the completion cache, the same seed writes the same set."""

from __future__ import annotations

import pytest

from distill_trainer.context.answer_spans import answer_spans, statement_body
from distill_trainer.context.knowledge_data import KnowledgeArguments
from distill_trainer.context.passages import split_passages, tokenizer_counter
from distill_trainer.context.question_parsing import parse_pairs, parse_questions
from distill_trainer.context.question_writing import (
    QuestionWritingArguments,
    answer_prompt,
    confirms,
    describe_counts,
    statement_prompt,
    write_questions,
    writing_prompt,
    writing_units,
)
from distill_trainer.context.steps import completions
from distill_trainer.errors import UsageError
from distill_trainer.teacher.generation import GenerationSettings
from distill_trainer.teacher.teacher import Teacher
from distill_trainer.testing import build_chat_tokenizer, build_model

DOCUMENT = "Ada Brill is the harbour master.\n\nThe ferry carries 40 cars.\n\nThe fair is on 3 May."
SUFFIX = QuestionWritingArguments().question_suffix
ANSWERS = GenerationSettings(max_new_tokens=8)


def test_pairs_are_read_under_the_markings_models_add():
    text = (
        "Here are the questions:\n"
        "Q: Who is the harbour master?\nA: Ada Brill\n\n"
        "1. **Question 2:** How many cars does the ferry carry?\n   **Answer 2:** 40 cars\n"
        "- Q: When is the fair? A: On 3 May.\n"
        'Q3) What is "the fair"?\nA3) "A market"\n'
        "Q: What does Plan A: the coast road cover? Answer 5: the harbour\n"
    )
    parsed = parse_pairs(text)
    assert parsed.pairs == [
        ("Who is the harbour master?", "Ada Brill"),
        ("How many cars does the ferry carry?", "40 cars"),
        ("When is the fair?", "On 3 May."),
        ('What is "the fair"?', "A market"),
        ("What does Plan A: the coast road cover?", "the harbour"),
    ]
    assert parsed.malformed == 0


def test_malformed_fragments_are_counted_not_silently_dropped():
    text = (
        "A: an answer before any question\n"  # 1: no question
        "Q: a question with no answer\n"  # 2: the next question comes first
        "Q: Who is the harbour master?\nA: Ada Brill\n"
        "Q: ?\nA: an empty question\n"  # 3: no words in the question
        "Q: What is left?\nA:\n"  # 4: an empty answer
        "Q: cut off by the length limit"  # 5: the reply ended before its answer
    )
    parsed = parse_pairs(text)
    assert parsed.pairs == [("Who is the harbour master?", "Ada Brill")]
    assert parsed.malformed == 5
    assert parse_pairs("no pairs at all, just prose").malformed == 0


def test_the_verification_rule():
    assert confirms("It is Ada Brill.", "Ada Brill") and confirms("40", "40 cars")
    assert confirms("The 3rd of May", "3 May") is False  # normalised words must match, in order
    assert not confirms("", "Ada Brill") and not confirms("Bo Crane", "Ada Brill")


class StubTeacher:
    """Writes `pairs` for each passage or statement (by how it begins) and answers each question as
    `answers` says."""

    def __init__(self, pairs: dict[str, str], answers: dict[str, str], document: str = DOCUMENT):
        self.pairs, self.answers, self.calls, self.document = pairs, answers, [], document

    def __call__(self, rows, settings):
        self.calls.append((rows, settings))
        texts = []
        for row in rows:
            if "format:\nQ: <question>" in row["prompt"]:  # a request to write
                texts.append(self.pairs[self._written_about(row)])
            else:
                assert row["context"] in self.document  # checked with its own passage in view
                texts.append(self.answers.get(row["prompt"].removesuffix(SUFFIX), "I do not know"))
        return [{"text": t} for t in texts], {"generated": len(rows), "reused": 0}

    def _written_about(self, row) -> str:
        """The key of `pairs` a writing request is about: its statement's (question_unit: statement) or
        its passage's first words."""
        if "this statement" in row["prompt"]:
            return next(start for start in self.pairs if f'"{start}' in row["prompt"])
        return next(start for start in self.pairs if row["context"].startswith(start))


def passages(max_tokens=8):
    return split_passages(DOCUMENT, lambda text: len(text.split()), max_tokens=max_tokens)


def test_every_pair_is_accounted_for_and_only_confirmed_new_ones_train():
    stub = StubTeacher(
        pairs={
            "Ada": "Q: Who is the harbour master?\nA: Ada Brill\nQ: Name the harbour master."
            + SUFFIX
            + "\nA: Ada Brill\n"
            "Q: Who is the harbour master?\nA: Ada Brill\nQ: dangling",
            "The ferry": "Q: How many cars does the ferry carry?\nA: 40 cars\nQ: Who runs the ferry?\nA: Ada",
            "The fair": "Q: When is the fair held? A: 3 May\nQ: Which fair is on 3 May?\nA: the fair",
        },
        answers={
            "Who is the harbour master?": "Ada Brill.",
            "Name the harbour master.": "Ada Brill",
            "How many cars does the ferry carry?": "40",
            "Who runs the ferry?": "The text does not say.",  # the teacher does not confirm: dropped
            "When is the fair held?": "On 3 May.",
        },
    )
    parts = passages()
    assert len(parts) == 3
    heldout = ["Which fair is on 3 May?" + SUFFIX]  # an evaluation question: never trained
    args = QuestionWritingArguments(question_unit="passage")
    result = write_questions(parts, DOCUMENT, stub, args, ANSWERS, heldout)
    assert result.counts == {
        "passages": 3,
        "statements": None,
        "short_statements": None,
        "written": 7,
        "malformed": 1,
        "answer_in_question": 0,
        "duplicates": 1,
        "heldout_overlap": 1,
        "not_confirmed": 1,
        "kept": 4,
        "re_aimed": 0,
    }
    assert [r["prompt"].removesuffix(SUFFIX) for r in result.rows] == [
        "Who is the harbour master?",
        "Name the harbour master.",
        "How many cars does the ferry carry?",
        "When is the fair held?",
    ]
    assert all(row["context"] == DOCUMENT and row["prompt"].endswith(SUFFIX) for row in result.rows)
    assert all(row["prompt"].count(SUFFIX.strip()) == 1 for row in result.rows)  # never twice
    assert [r["status"] for r in result.records].count("not confirmed") == 1
    assert {r["status"] for r in result.records} == {
        "kept",
        "duplicate",
        "held-out question",
        "not confirmed",
    }
    rejected = next(r for r in result.records if r["status"] == "not confirmed")
    assert rejected["check"] == "The text does not say." and rejected["passage"] == 1
    # written once per passage with the sampling settings; checked greedily, only the new questions
    (written, writing), (checked, checking) = stub.calls
    assert len(written) == 3 and writing.do_sample and writing.seed == 0
    assert len(checked) == 5 and checking == ANSWERS


def test_a_heldout_question_is_never_trained_whatever_the_suffix():
    stub = StubTeacher(
        pairs={
            "Ada": "Q: Who is the harbour master?\nA: Ada Brill\nQ: Name the harbour master.\nA: Ada Brill"
        },
        answers={"Who is the harbour master?": "Ada Brill", "Name the harbour master.": "Ada Brill"},
    )
    parts = split_passages(DOCUMENT, lambda text: len(text.split()), max_tokens=40)
    # no suffix on the written questions, the held-out ones carry theirs; and a suffix they do not carry
    for suffix, heldout in (
        ("", "Who is the harbour master?" + SUFFIX),
        (SUFFIX, "Who is the harbour master?"),
    ):
        args = QuestionWritingArguments(question_suffix=suffix, question_unit="passage")
        result = write_questions(parts, DOCUMENT, stub, args, ANSWERS, [heldout])
        assert result.counts["heldout_overlap"] == 1 and result.counts["kept"] == 1
        assert [row["prompt"] for row in result.rows] == ["Name the harbour master." + suffix]


def test_settings_are_checked_with_a_fix():
    with pytest.raises(UsageError, match="remove data_file"):
        KnowledgeArguments(
            document_file="d.md",
            data_file="train.jsonl",
            heldout_wordings_file="w.jsonl",
            heldout_facts_file="f.jsonl",
            questions="generate",
        )
    with pytest.raises(UsageError, match="choose one of: file, generate"):
        QuestionWritingArguments(questions="invent").check_question_settings(None)
    with pytest.raises(UsageError, match="choose one of: statement, answer, passage"):
        QuestionWritingArguments(question_unit="page").check_question_settings(None)
    with pytest.raises(UsageError, match="passage_overlap_tokens must be"):
        QuestionWritingArguments(passage_tokens=16, passage_overlap_tokens=16).check_question_settings(None)
    # a question file is still required when questions are not generated
    with pytest.raises(UsageError, match="data_file is not set"):
        KnowledgeArguments(
            document_file="d.md", heldout_wordings_file="w.jsonl", heldout_facts_file="f.jsonl"
        )


def test_the_prompt_asks_for_the_count_the_wordings_and_the_format():
    prompt = writing_prompt(12, 3)
    assert (
        "Write 12 questions" in prompt
        and "3 times" in prompt
        and prompt.endswith("Q: <question>\nA: <answer>")
    )
    assert "once" in writing_prompt(5, 1)
    prompt = statement_prompt("The ferry carries 40 cars.", 2)
    assert '"The ferry carries 40 cars."' in prompt and "2 times" in prompt
    assert prompt.endswith("Q: <question>\nA: <answer>")


def test_each_statement_is_asked_about_with_its_passage_in_view_and_headings_are_counted():
    document = "# Port\n\n" + DOCUMENT.replace("\n\nThe fair", " The fair")
    parts = split_passages(document, lambda text: len(text.split()), max_tokens=8)
    stub = StubTeacher(
        pairs={
            "Ada": "Q: Who is the harbour master?\nA: Ada Brill",
            "The ferry": "Q: How many cars does the ferry carry?\nA: 40",
            "The fair": "no pair here",
        },
        answers={"Who is the harbour master?": "Ada Brill", "How many cars does the ferry carry?": "40"},
        document=document,
    )
    result = write_questions(parts, document, stub, QuestionWritingArguments(), ANSWERS)
    writing = stub.calls[0][0]
    statements = ["Ada Brill is the harbour master.", "The ferry carries 40 cars.", "The fair is on 3 May."]
    # one request per statement of three words or more, the statement quoted, its own passage in view
    assert [next(s for s in statements if f'"{s}"' in row["prompt"]) for row in writing] == statements
    for row, statement in zip(writing, statements):
        assert statement in row["context"] and row["context"] in [p.text for p in parts]
    assert result.counts["statements"] == 4 and result.counts["short_statements"] == 1  # "# Port"
    assert "asked about 3 of their 4 statements (1 too short to ask about)" in describe_counts(result.counts)
    assert [r["statement"] for r in result.records] == statements[:2]
    assert result.counts["kept"] == 2


def test_a_statements_names_numbers_dates_and_amounts_are_its_answers():
    assert answer_spans(
        "- The Cresswell Library, on Cobbler's Row, was founded in 1753 and holds 13,591 books."
    ) == [
        "Cresswell Library",
        "Cobbler's Row",
        "1753",
        "13,591 books",
    ]
    assert answer_spans("- Isolde Mottram has been the harbour master since 1982.") == [
        "Isolde Mottram",
        "1982",
    ]
    assert answer_spans("- The Night of the Bells is held on 5 December.") == [
        "Night of the Bells",
        "5 December",
    ]
    # a capitalised opening word is no name; a currency, a percentage, a US date, initials
    assert answer_spans("A dog licence costs 18 crowns.") == ["18 crowns"]
    assert answer_spans(
        "On December 5, 1890 the fee rose to $12.50 for 3% of members, said A. B. Smith."
    ) == [
        "December 5, 1890",
        "$12.50",
        "3%",
        "A. B. Smith",
    ]
    assert answer_spans("It rains here.") == []
    # the teacher is shown the statement without its list mark, and the answer named outright
    assert statement_body("- Isolde Mottram has been the harbour master since 1982.") == (
        "Isolde Mottram has been the harbour master since 1982."
    )
    prompt = answer_prompt("- Isolde Mottram has been the harbour master since 1982.", "1982", 2)
    assert '"Isolde Mottram has been the harbour master since 1982."' in prompt
    assert 'whose answer is "1982"' in prompt and "2 questions" in prompt


def test_each_answer_of_a_statement_is_asked_for_its_question():
    document = (
        "# Port\n\nAda Brill is the harbour master.\n\nThe ferry carries 40 cars.\n\nIt rains a lot here."
    )
    parts = split_passages(document, lambda text: len(text.split()), max_tokens=8)
    replies = {
        'whose answer is "Ada Brill"': (
            "Q: Who is the harbour master?\nQ: Which person is the harbour master?\nQ: a third?"
        ),
        'whose answer is "40 cars"': (
            "1. How many cars does the ferry carry?\nQ: Does the ferry carry 40 cars?"
        ),
    }

    checks = {"Who is the harbour master?": "Ada Brill", "Where does it rain?": "here"}

    def ask(rows, settings):
        texts = []
        for row in rows:
            if "format:\nQ: <question>" in row["prompt"]:  # a request to write
                texts.append(
                    next(
                        (t for a, t in replies.items() if a in row["prompt"]),
                        "Q: Where does it rain?\nA: here",
                    )
                )
            else:
                texts.append(checks.get(row["prompt"].removesuffix(SUFFIX), "40"))
        return [{"text": t} for t in texts], {"generated": len(rows), "reused": 0}

    args = QuestionWritingArguments(question_unit="answer")
    result = write_questions(parts, document, ask, args, ANSWERS)
    # one request per answer, the answer and its statement quoted; a statement with none asked as a whole
    records = {r["prompt"].removesuffix(SUFFIX): r for r in result.records}
    assert records["Who is the harbour master?"]["answer"] == "Ada Brill"
    assert records["Which person is the harbour master?"]["status"] == "not confirmed"  # checked: "40"
    assert "a third?" not in records  # two wordings asked for, two read
    assert records["How many cars does the ferry carry?"]["answer"] == "40 cars"
    assert records["Does the ferry carry 40 cars?"]["status"] == "answer in question"
    assert records["Where does it rain?"]["answer"] == "here"  # no name or number: a statement request
    assert result.counts["answers"] == 2 and result.counts["answer_in_question"] == 1
    assert result.counts["statements"] == 4 and result.counts["short_statements"] == 1
    assert "for the questions to 2 answers taken from them" in describe_counts(result.counts)
    assert "1 giving their answer away" in describe_counts(result.counts)
    assert [r["prompt"].removesuffix(SUFFIX) for r in result.rows] == [
        "Who is the harbour master?",
        "How many cars does the ferry carry?",
        "Where does it rain?",
    ]
    assert parse_questions("Sure!\nQ: one?\nQ:\n- two?", "x", 3).pairs == [("one?", "x"), ("two?", "x")]
    assert parse_questions("Sure!\nQ: one?\nQ:\n- two?", "x", 3).malformed == 1
    echoed = parse_questions("Q: What is the answer in the sentence?\nQ: Whose answer is x?\nQ: Who?", "x", 3)
    assert echoed.pairs == [("Who?", "x")] and echoed.malformed == 2


def test_a_question_that_asks_for_another_answer_of_its_statement_is_re_aimed_at_it():
    document = (
        "Ada Brill has been the harbour master since 1982.\n\nThe ferry carries 40 cars.\n\n"
        "Cy Dunn has kept the mill on Eve Street since 1990."
    )
    parts = split_passages(document, lambda text: len(text.split()), max_tokens=12)
    replies = {
        'whose answer is "1982"': "Q: Who has been the harbour master since 1982?\nQ: What is the harbour?",
        'whose answer is "Ada Brill"': (
            "Q: Since when is Ada Brill the harbour master?\nQ: Who is the harbour master?"
        ),
        'whose answer is "40 cars"': "Q: How many cars does the ferry carry?\nQ: Does it carry 40 cars?",
        'whose answer is "1990"': "Q: Who has kept the mill since 1990?\nQ: What does Cy Dunn keep?",
    }
    checks = {
        "Who has been the harbour master since 1982?": "Ada Brill.",  # gives its year away, asks the name
        "What is the harbour?": "A harbour.",  # no answer of the statement: not confirmed
        "Since when is Ada Brill the harbour master?": "Since 1982.",  # written for the name: the year
        "Who is the harbour master?": "Ada Brill, since 1982.",  # its own answer: kept as written
        "How many cars does the ferry carry?": "Forty.",  # not as the text says it: not confirmed
        "Does it carry 40 cars?": "Yes.",  # gives its only answer away
        "Who has kept the mill since 1990?": "Cy Dunn, on Eve Street.",  # two other answers: which?
        "What does Cy Dunn keep?": "The mill.",
    }

    def ask(rows, settings):
        if "format:\nQ: <question>" in rows[0]["prompt"]:
            texts = [next((t for a, t in replies.items() if a in row["prompt"]), "") for row in rows]
        else:
            texts = [checks[row["prompt"].removesuffix(SUFFIX)] for row in rows]
        return [{"text": t} for t in texts], {"generated": len(rows), "reused": 0}

    result = write_questions(parts, document, ask, QuestionWritingArguments(question_unit="answer"), ANSWERS)
    records = {r["prompt"].removesuffix(SUFFIX): r for r in result.records}
    status = {q: (r["status"], r["answer"], r.get("aimed_at")) for q, r in records.items()}
    assert status == {
        "Who has been the harbour master since 1982?": ("kept", "Ada Brill", "1982"),
        "What is the harbour?": ("not confirmed", "1982", None),
        "Since when is Ada Brill the harbour master?": ("kept", "1982", "Ada Brill"),
        "Who is the harbour master?": ("kept", "Ada Brill", None),
        "How many cars does the ferry carry?": ("not confirmed", "40 cars", None),
        "Does it carry 40 cars?": ("answer in question", "40 cars", None),
        "Who has kept the mill since 1990?": ("answer in question", "1990", None),
        "What does Cy Dunn keep?": ("not confirmed", "1990", None),
    }
    assert records["Does it carry 40 cars?"]["check"] == "Yes."  # checked, and what it said is kept
    assert result.counts["kept"] == 3 and result.counts["re_aimed"] == 2
    assert result.counts["answer_in_question"] == 2 and result.counts["not_confirmed"] == 3
    assert "kept 3 (2 of them re-aimed" in describe_counts(result.counts)
    assert [(r["prompt"].removesuffix(SUFFIX), r["answer"]) for r in result.rows] == [
        ("Since when is Ada Brill the harbour master?", "1982"),
        ("Who is the harbour master?", "Ada Brill"),
        ("Who has been the harbour master since 1982?", "Ada Brill"),
    ]


@pytest.fixture(scope="module")
def tiny_teacher():
    tokenizer = build_chat_tokenizer()
    return tokenizer, build_model(len(tokenizer), seed=3)


def test_the_written_set_is_deterministic_for_a_seed_and_cached(tmp_path, tiny_teacher):
    tokenizer, model = tiny_teacher
    parts = split_passages(DOCUMENT, tokenizer_counter(tokenizer), max_tokens=12)

    def run(seed, cache):
        teacher = Teacher.for_model(model, "teacher")
        infos = []

        def ask(rows, settings):
            replies, info = completions(
                teacher, tokenizer, rows, settings, cache_dir=tmp_path / cache, batch_size=2
            )
            infos.append(info)
            return replies, info

        args = QuestionWritingArguments(question_seed=seed, question_max_new_tokens=12)
        result = write_questions(parts, DOCUMENT, ask, args, ANSWERS)
        return (
            [
                r["text"]
                for r in ask(
                    [
                        {"context": u.passage.text, "prompt": u.instruction}
                        for u in writing_units(parts, DOCUMENT, args)[0]
                    ],
                    args.writing_settings(),
                )[0]
            ],
            result,
            infos,
        )

    first, result, infos = run(0, "a")
    # one request per statement (three here), then read back
    assert infos[0]["generated"] == 3 and infos[-1]["reused"] == 3
    again, result_again, _ = run(0, "b")  # a fresh cache: generated again, the same
    assert again == first and result_again.records == result.records and result_again.counts == result.counts
    other, _, _ = run(1, "a")
    assert other != first  # another seed samples other replies
    # a random tiny model writes no readable pair: every reply is accounted for, none trains
    assert result.counts["kept"] == len(result.rows) == 0
