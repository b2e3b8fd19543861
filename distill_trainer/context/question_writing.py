"""Training questions written by the teacher from a document: it reads one passage at a time, writes
question-answer pairs about every statement in several wordings, and then checks each pair by answering
the question itself with the passage in view. With `question_unit: statement` (the default) it is asked
about one statement (a line or sentence) at a time, the passage in view, so a statement deep in a long
list gets its questions too; with `answer`, for the question to one answer at a time, each name, number,
date and amount of a statement (`answer_spans`; a statement with none is asked about as a whole), so every
fact of the document is asked about and the teacher writes only short questions; with `passage`, for a
whole passage's statements at once. Every pair that
does not reach the training set is counted by its reason, and kept in the record a user reads
(`generated_questions.jsonl`); a fragment that cannot be read as a pair (a question cut off by the length
limit, say) is counted as malformed.

    ask = lambda rows, settings: completions(teacher, tokenizer, rows, settings, cache_dir=...)
    result = write_questions(passages, document, ask, args, answer_settings, heldout_prompts)
    result.rows       # training rows, as `knowledge_data.load_questions` gives them
    result.counts     # {"passages", "statements", "short_statements", "written", "malformed",
                      #  "duplicates", "heldout_overlap", "not_confirmed", "kept", "re_aimed"}
    result.records    # every pair written: passage, prompt, answer, status, the teacher's check

`ask(rows, settings)` returns ({"text"} per row, info) for rows {"context", "prompt"}; the recipe passes
the completion cache's `completions`, so a rerun reads every reply back instead of generating it.

The verification rule: the teacher answers the question (greedy, the recipe's answer length) with only
the passage in view, and a pair is kept when that answer and the written one agree: one of the two,
normalised as answers are scored (`short_answers.normalize_answer`), contains the other as whole words;
or, in `answer` mode, re-aimed at another answer of its statement (`reaimed_answer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from distill_trainer.context.answer_spans import answer_spans, statement_body
from distill_trainer.context.passages import Passage, split_statements, statement_spans
from distill_trainer.context.question_parsing import parse_pairs, parse_questions
from distill_trainer.context.short_answers import contains, normalize_answer
from distill_trainer.errors import UsageError
from distill_trainer.teacher.generation import GenerationSettings

QUESTION_SOURCES = ("file", "generate")
QUESTION_UNITS = ("statement", "answer", "passage")
# why a written pair did not become a training question, in the order the checks run
DROP_REASONS = {
    "answer in question": "answer_in_question",
    "duplicate": "duplicates",
    "held-out question": "heldout_overlap",
    "not confirmed": "not_confirmed",
}


@dataclass
class QuestionWritingArguments:
    """Training questions from a question file, or written by the teacher from the document."""

    questions: str = field(
        default="file",
        metadata={
            "help": "Where training questions come from: 'file' (data_file) or 'generate' (the teacher "
            "writes them from the document; data_file must then be unset)."
        },
    )
    question_unit: str = field(
        default="statement",
        metadata={
            "help": "What the teacher is asked about at once: 'statement' (each line or sentence, with its "
            "passage in view), 'answer' (the question to each name, number, date and amount of each "
            "statement) or 'passage' (all of a passage's statements in one reply)."
        },
    )
    min_statement_words: int = field(
        default=3,
        metadata={"help": "Statements with fewer words (headings) get no questions; they are counted."},
    )
    passage_tokens: int = field(
        default=256, metadata={"help": "Longest passage the teacher reads at once when writing, in tokens."}
    )
    passage_overlap_tokens: int = field(
        default=32, metadata={"help": "Tokens that consecutive passages share (a statement cut at a seam)."}
    )
    questions_per_passage: int = field(
        default=24,
        metadata={
            "help": "Question-answer pairs the teacher is asked for per passage (question_unit: passage)."
        },
    )
    question_wordings: int = field(
        default=2,
        metadata={"help": "Differently worded questions asked for each statement (or answer)."},
    )
    question_max_new_tokens: int = field(
        default=768, metadata={"help": "Longest reply when writing a passage's pairs, in tokens."}
    )
    question_do_sample: bool = field(
        default=True, metadata={"help": "Sample the written pairs (else greedy); seeded by question_seed."}
    )
    question_temperature: float = field(default=0.7, metadata={"help": "Sampling temperature for writing."})
    question_top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling mass for writing."})
    question_seed: int = field(
        default=0, metadata={"help": "Seed of the sampled pairs (same seed, same set)."}
    )
    question_suffix: str = field(
        default=" Answer in a few words.",
        metadata={"help": "Appended to every written question, as the held-out questions end."},
    )
    facts_file: str = field(
        default=None,
        metadata={
            "help": "Optional JSONL of the document's facts (fact, answer, subject): the report counts the "
            "facts the training questions touch. Read for the report only, never for training."
        },
    )

    def check_question_settings(self, data_file) -> None:
        if self.questions not in QUESTION_SOURCES:
            raise UsageError(
                f"questions={self.questions!r} is not valid; choose one of: {', '.join(QUESTION_SOURCES)}"
            )
        if self.question_unit not in QUESTION_UNITS:
            raise UsageError(
                f"question_unit={self.question_unit!r} is not valid; choose one of: "
                f"{', '.join(QUESTION_UNITS)}"
            )
        if self.questions == "generate" and data_file:
            raise UsageError(
                "questions: generate writes the training questions from the document, and data_file "
                f"({data_file}) would be ignored; remove data_file, or set questions: file"
            )
        for name in (
            "passage_tokens",
            "questions_per_passage",
            "question_wordings",
            "question_max_new_tokens",
        ):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_statement_words < 0:
            raise UsageError(f"min_statement_words must be >= 0, got {self.min_statement_words}")
        if not 0 <= self.passage_overlap_tokens < self.passage_tokens:
            raise UsageError(
                f"passage_overlap_tokens must be >= 0 and below passage_tokens ({self.passage_tokens}), "
                f"got {self.passage_overlap_tokens}"
            )
        self.writing_settings()  # checks the sampling settings

    def writing_settings(self) -> GenerationSettings:
        """How a passage's pairs are decoded (every field keys the completion cache)."""
        return GenerationSettings(
            max_new_tokens=self.question_max_new_tokens,
            do_sample=self.question_do_sample,
            temperature=self.question_temperature,
            top_p=self.question_top_p,
            seed=self.question_seed,
        )


def writing_prompt(pairs: int, wordings: int) -> str:
    """The instruction the teacher reads after a passage. It asks for every statement, short answers taken
    from the text (they are scored as short answers) and one fixed format that `parse_pairs` reads."""
    times = "once" if wordings == 1 else f"{wordings} times, each time in different words"
    return (
        f"Write {pairs} questions about the text you have been given, each followed by its answer, so that "
        f"every statement in the text is asked about. Ask about each statement {times}. Each question must "
        "make sense on its own, without the text (name who or what it is about). Each answer is short: a "
        "name, a number, a date or a few words, exactly as the text says it. Write nothing else, in this "
        "format:\nQ: <question>\nA: <answer>"
    )


def statement_prompt(statement: str, wordings: int) -> str:
    """The instruction for one statement (question_unit: statement), read after its passage: every fact in
    it asked about, in the same answer style and format as `writing_prompt`."""
    times = "once" if wordings == 1 else f"{wordings} times, each time in different words"
    return (
        f'Write questions about this statement from the text: "{statement}"\nAsk about every fact in it '
        f"(every name, number, date and place), each fact {times}. Each question must make sense on its "
        "own, without the text (name who or what it is about). Each answer is short: a name, a number, a "
        "date or a few words, exactly as the text says it. Write nothing else, in this format:\n"
        "Q: <question>\nA: <answer>"
    )


def answer_prompt(statement: str, answer: str, wordings: int) -> str:
    """The instruction for one answer of a statement (question_unit: answer), read after its passage: the
    statement and the answer named outright, and the question(s) that ask for it, in the format
    `parse_questions` reads. Named, not blanked out: shown "since ___", a small teacher writes "Who has
    been the harbour master since?" and pairs it with a year; told the answer is "1982", it asks when.
    The other details are left out where they can be ("Who is the harbour master?", not "... since
    1982?"): a student taught only the longer question does not answer the shorter one."""
    what = "a question" if wordings == 1 else f"{wordings} questions, each in different words,"
    return (
        f'This sentence is from the text: "{statement_body(statement)}"\n'
        f'Write {what} whose answer is "{answer}". Each question must make sense on its own, without the '
        f'text (name who or what it is about), and must not contain "{answer}". Leave out the '
        "sentence's other details unless the question needs them. Write nothing else, in this format:\n"
        "Q: <question>"
    )


def longest_instruction(args: QuestionWritingArguments, document: str) -> str:
    """The longest instruction the teacher reads beside a passage when writing (a context-length check):
    the passage's, or the statement's (or one of its answers') for the document's longest statement."""
    if args.question_unit == "passage":
        return writing_prompt(args.questions_per_passage, args.question_wordings)
    longest = max((document[s:e] for s, e in statement_spans(document)), key=len, default="")
    if args.question_unit == "answer":  # an answer is a part of its statement: the statement bounds it
        return max(
            answer_prompt(longest, longest, args.question_wordings),
            statement_prompt(longest, args.question_wordings),
            key=len,
        )
    return statement_prompt(longest, args.question_wordings)


@dataclass(frozen=True)
class _Unit:
    """One request to write pairs: the passage in view, what is asked about, the statement (if one) and
    the answer whose questions are asked for (question_unit: answer; else None: the reply holds pairs)."""

    passage: Passage
    instruction: str
    statement: str | None
    answer: str | None = None


def writing_units(passages: list[Passage], document: str, args: QuestionWritingArguments):
    """The requests to write pairs, and the statements too short to be asked about (question_unit)."""
    if args.question_unit == "passage":
        instruction = writing_prompt(args.questions_per_passage, args.question_wordings)
        return [_Unit(p, instruction, None) for p in passages], []
    units, short = [], []
    for statement in split_statements(document, passages):
        if statement.words() < args.min_statement_words:
            short.append(statement.text)
            continue
        passage = passages[statement.passage]
        answers = answer_spans(statement.text) if args.question_unit == "answer" else []
        for answer in answers:
            instruction = answer_prompt(statement.text, answer, args.question_wordings)
            units.append(_Unit(passage, instruction, statement.text, answer))
        if not answers:  # statement mode, or a statement with no name or number to take as an answer
            instruction = statement_prompt(statement.text, args.question_wordings)
            units.append(_Unit(passage, instruction, statement.text))
    return units, short


def is_heldout(key: str, heldout: set[str]) -> bool:
    """A written question (normalised, without its suffix) is a held-out one when a held-out question,
    normalised, is it or begins with it: whatever instruction the held-out sets end with, the written
    question never carries it here, and a doubtful case is dropped rather than trained."""
    return key in heldout or any(other.startswith(key + " ") for other in heldout)


def confirms(check: str, answer: str) -> bool:
    """The verification rule: the teacher's answer and the written one agree (module docstring)."""
    return contains(check, answer) or contains(answer, check)


def reaimed_answer(record: dict, question_unit: str) -> str | None:
    """Another answer of the question's statement, when the question plainly asks for that one instead.
    A small teacher told the answer is "1982" often writes "Who has been the harbour master since
    1982?"; with the passage in view it answers that with the name. Such a pair is kept with that answer
    when exactly one other name or number of the statement is in the check and not in the question
    (`question_unit: answer` only: the statement's answers are known by their form)."""
    if question_unit != "answer" or record["check"] is None:
        return None
    question = record["prompt"]
    others = [
        span
        for span in answer_spans(record["statement"])
        if span != record["answer"] and contains(record["check"], span) and not contains(question, span)
    ]
    return others[0] if len(others) == 1 else None


@dataclass
class WrittenQuestions:
    rows: list[dict]
    counts: dict
    records: list[dict]
    completions: dict  # {"writing": info, "checking": info} from `ask`
    statements: list[str] = field(default_factory=list)  # those asked about (question_unit: statement)


def write_questions(
    passages: list[Passage],
    document: str,
    ask: Callable,
    args: QuestionWritingArguments,
    answer_settings: GenerationSettings,
    heldout_prompts: list[str] = (),
    by_passage: bool = False,
) -> WrittenQuestions:
    """The training rows written from `passages` and what became of every pair (module docstring).
    `heldout_prompts`: evaluation questions; a written question equal to one of them is dropped, so
    the held-out sets stay unseen. A row's context is the whole `document`, or with `by_passage` (a
    document longer than the teacher reads at once) the passage its pair was written from."""
    units, short = writing_units(passages, document, args)
    written, writing_info = ask(
        [{"context": u.passage.text, "prompt": u.instruction} for u in units], args.writing_settings()
    )
    records, malformed = [], 0
    heldout = {normalize_answer(p) for p in heldout_prompts}
    asked = set()
    for unit, reply in zip(units, written):
        if unit.answer is None:
            parsed = parse_pairs(reply["text"])
        else:
            parsed = parse_questions(reply["text"], unit.answer, args.question_wordings)
        malformed += parsed.malformed
        for question, answer in parsed.pairs:
            # the suffix once, also when the teacher copied it from the held-out style
            question = question.removesuffix(args.question_suffix.strip()).rstrip()
            prompt = question + args.question_suffix
            key = normalize_answer(question)
            if is_heldout(key, heldout):
                status = "held-out question"
            else:
                status = "duplicate" if key in asked else None
            asked.add(key)
            records.append(
                {
                    "passage": unit.passage.index,
                    "statement": unit.statement,
                    "prompt": prompt,
                    "answer": answer,
                    "status": status,
                    "check": None,
                }
            )
            # a question that contains its answer teaches nothing about it: checked only to be re-aimed
            if unit.answer is not None and status is None and contains(question, unit.answer):
                records[-1]["gives_away"] = True
    # the teacher answers each new question with its passage in view; a pair it does not confirm is dropped
    to_check = [r for r in records if r["status"] is None]
    checks, checking_info = ask(
        [{"context": passages[r["passage"]].text, "prompt": r["prompt"]} for r in to_check], answer_settings
    )
    for record, check in zip(to_check, checks):
        record["check"] = check["text"]
        gives_away = record.pop("gives_away", False)
        if not gives_away and confirms(check["text"], record["answer"]):
            record["status"] = "kept"
        elif other := reaimed_answer(record, args.question_unit):
            record |= {"status": "kept", "aimed_at": record["answer"], "answer": other}
        else:
            record["status"] = "answer in question" if gives_away else "not confirmed"
    kept = [r for r in records if r["status"] == "kept"]
    counts = {"passages": len(passages), "statements": None, "short_statements": None}
    if args.question_unit != "passage":
        asked_about = len({(u.passage.index, u.statement) for u in units})
        counts |= {"statements": asked_about + len(short), "short_statements": len(short)}
        counts["answers"] = sum(u.answer is not None for u in units)
    counts |= {"written": len(records), "malformed": malformed}
    counts |= {name: sum(r["status"] == s for r in records) for s, name in DROP_REASONS.items()}
    counts["kept"] = len(kept)
    counts["re_aimed"] = sum("aimed_at" in r for r in kept)
    rows = [
        {
            "context": passages[r["passage"]].text if by_passage else document,
            "prompt": r["prompt"],
            "answer": r["answer"],
            "fact": None,
            "completion": None,
        }
        for r in kept
    ]
    return WrittenQuestions(
        rows,
        counts,
        records,
        {"writing": writing_info, "checking": checking_info},
        list(dict.fromkeys(u.statement for u in units if u.statement is not None)),
    )


def describe_counts(counts: dict) -> str:
    """One line for the report: every pair written accounted for."""
    statements = ""
    if counts.get("statements") is not None:
        statements = (
            f", asked about {counts['statements'] - counts['short_statements']} of their "
            f"{counts['statements']} statements ({counts['short_statements']} too short to ask about)"
        )
        if counts.get("answers"):
            statements += f" for the questions to {counts['answers']} answers taken from them"
    reaimed = ""
    if counts.get("re_aimed"):
        reaimed = (
            f" ({counts['re_aimed']} of them re-aimed: the teacher's check gave another name or number "
            "of the statement, one the question does not contain)"
        )
    return (
        f"{counts['passages']} passages{statements}; {counts['written']} pairs written "
        f"({counts['malformed']} more fragments could not be read as a pair); dropped: "
        f"{counts.get('answer_in_question', 0)} giving their answer away, {counts['duplicates']} duplicates, "
        f"{counts['heldout_overlap']} equal to a held-out question, {counts['not_confirmed']} not "
        f"confirmed by the teacher with the passage in view; kept {counts['kept']}{reaimed}"
    )
