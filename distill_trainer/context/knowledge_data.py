"""`KnowledgeArguments` and the question sets of knowledge injection (`recipes/distill_document.py`): a
document the teacher reads, questions with short gold answers that train the student, and two held-out
sets, other wordings of the trained facts and facts never trained.

    args = KnowledgeArguments(document_file="document.md", data_file="train.jsonl", ...)
    sets = load_question_sets(args)   # {"train": rows, "heldout_wordings": rows, "heldout_facts": rows}
    # each row: {"context": the document, "prompt", "answer" (gold), "fact", "completion": None}

Question files are JSONL with `prompt` and `answer` on every row and, optionally, `fact` (an id shared by
the wordings of one fact; recipes/data/handbook/make_handbook.py writes them). With fact ids, the sets are
checked against each other: every held-out wording asks about a trained fact, no held-out fact is trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from distill_trainer.context.data import read_records
from distill_trainer.context.question_writing import QuestionWritingArguments
from distill_trainer.errors import UsageError
from distill_trainer.teacher.generation import GenerationSettings
from distill_trainer.views.chat import CONTEXT_PLACEMENTS

# the evaluation sets, in the order of the report's columns
HELDOUT_SETS = ("heldout_wordings", "heldout_facts")
# what the teacher (and the open-book student) reads beside each question (KnowledgeArguments.teacher_context)
TEACHER_CONTEXTS = ("auto", "document", "passage")


@dataclass
class KnowledgeArguments(QuestionWritingArguments):
    """Where the document and the questions come from, how answers are written, and what is measured."""

    document_file: str = field(default=None, metadata={"help": "The document the teacher reads (text)."})
    data_file: str = field(
        default=None,
        metadata={
            "help": "Training questions: JSONL rows with prompt, answer (and fact); unset with questions: "
            "generate."
        },
    )
    heldout_wordings_file: str = field(
        default=None, metadata={"help": "Other wordings of the trained facts (JSONL, same columns)."}
    )
    heldout_facts_file: str = field(
        default=None, metadata={"help": "Questions about facts that are never trained (JSONL)."}
    )
    num_train_questions: int = field(default=None, metadata={"help": "Use the first N training rows."})
    num_heldout_questions: int = field(
        default=None, metadata={"help": "Use the first N rows of each held-out file."}
    )
    context_placement: str = field(
        default="system",
        metadata={"help": "Teacher prompt: the document as the system message, or before the question."},
    )
    teacher_context: str = field(
        default="auto",
        metadata={
            "help": "What the teacher (and the open-book student) reads with each question: document (the "
            "whole document), passage (the question's own passage: the one it was written from, else the "
            "one sharing the most words with it), or auto: the document when it fits max_context_tokens, "
            "else passages."
        },
    )
    max_context_tokens: int = field(
        default=None,
        metadata={
            "help": "The most prompt tokens the teacher reads at once (the document or a passage, with the "
            "chat template and question); default: its max_position_embeddings less the longest answer."
        },
    )
    max_new_tokens: int = field(default=24, metadata={"help": "Longest answer generated, in tokens."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    completion_cache_dir: str = field(
        default=None,
        metadata={
            "help": "Where generated answers are kept; default: teacher_completions in the cache home."
        },
    )
    sft_baseline: bool = field(
        default=True,
        metadata={"help": "Also train the student on the gold answers (cross-entropy, same settings)."},
    )
    forgetting_file: str = field(
        default=None,
        metadata={
            "help": "Unrelated prompts (JSONL with prompt): the student's KL to its base model on them."
        },
    )
    num_forgetting_prompts: int = field(default=8, metadata={"help": "Use the first N forgetting prompts."})
    forgetting_max_new_tokens: int = field(
        default=48, metadata={"help": "Length of the base model's replies the forgetting KL is measured on."}
    )
    kl_batch_size: int = field(default=4, metadata={"help": "Rows per batch when measuring the KL."})

    def __post_init__(self):
        required = ["document_file", "heldout_wordings_file", "heldout_facts_file"]
        if self.questions != "generate":  # generated questions need no file of training questions
            required.insert(1, "data_file")
        for name in required:
            if not getattr(self, name):
                raise UsageError(f"{name} is not set; give the path of the file")
        self.check_question_settings(self.data_file)
        if self.questions == "generate" and self.num_train_questions is not None:
            raise UsageError(
                "num_train_questions limits a question file, and questions: generate reads none; remove "
                "it (question_unit and question_wordings set how many pairs the teacher writes)"
            )
        if self.context_placement not in CONTEXT_PLACEMENTS:
            raise UsageError(
                f"context_placement={self.context_placement!r} is not valid; choose one of: "
                f"{', '.join(CONTEXT_PLACEMENTS)}"
            )
        if self.teacher_context not in TEACHER_CONTEXTS:
            raise UsageError(
                f"teacher_context={self.teacher_context!r} is not valid; choose one of: "
                f"{', '.join(TEACHER_CONTEXTS)}"
            )
        for name in (
            "max_context_tokens",
            "num_train_questions",
            "num_heldout_questions",
            "generation_batch_size",
            "num_forgetting_prompts",
            "forgetting_max_new_tokens",
            "kl_batch_size",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be >= 1, got {value}")
        self.generation_settings()  # checks max_new_tokens

    def generation_settings(self, max_new_tokens: int | None = None) -> GenerationSettings:
        """Greedy decoding of at most `max_new_tokens` (default: this recipe's answers)."""
        return GenerationSettings(max_new_tokens=max_new_tokens or self.max_new_tokens)


def read_document(path) -> str:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"document_file {path} does not exist; give the path of a text file")
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise UsageError(f"document_file {path} is empty; give the document the teacher reads")
    return text


def load_questions(path, document: str, limit: int | None = None) -> list[dict]:
    """The first `limit` rows of a question file as {"context", "prompt", "answer", "fact", "completion"}."""
    if not Path(str(path)).is_file():
        raise UsageError(f"{path} does not exist; give a JSONL file of questions (prompt, answer)")
    records, where = read_records(path)
    if not records:
        raise UsageError(f"{where} has no rows; give a file with at least one question")
    rows = []
    for number, record in enumerate(records[:limit] if limit else records, start=1):
        for column in ("prompt", "answer"):
            value = record.get(column) if isinstance(record, dict) else None
            if not isinstance(value, str) or not value.strip():
                raise UsageError(f"{where} row {number} has no {column!r} text; give every row a {column}")
        rows.append(
            {
                "context": document,
                "prompt": record["prompt"],
                "answer": record["answer"],
                "fact": record.get("fact"),
                "completion": None,
            }
        )
    return rows


def check_fact_split(sets: dict[str, list[dict]]) -> None:
    """With fact ids on every row: held-out wordings ask about trained facts, held-out facts are not."""
    if any(row["fact"] is None for rows in sets.values() for row in rows):
        return
    trained = {row["fact"] for row in sets["train"]}
    untrained = sorted({row["fact"] for row in sets["heldout_wordings"]} - trained)
    if untrained:
        raise UsageError(
            f"{len(untrained)} held-out wordings ask about facts that are not trained "
            f"(e.g. {untrained[0]!r}); "
            "set num_heldout_questions to at most half of num_train_questions (the files list facts in "
            "one order)"
        )
    leaked = sorted({row["fact"] for row in sets["heldout_facts"]} & trained)
    if leaked:
        raise UsageError(
            f"{len(leaked)} held-out facts are also trained (e.g. {leaked[0]!r}); held-out facts must "
            "never appear in data_file"
        )
    prompts = {row["prompt"] for row in sets["train"]}
    for name in HELDOUT_SETS:
        repeated = [row["prompt"] for row in sets[name] if row["prompt"] in prompts]
        if repeated:
            raise UsageError(f"{name} repeats a training question ({repeated[0]!r}); remove it from one file")


def load_question_sets(args: KnowledgeArguments, document: str | None = None) -> dict[str, list[dict]]:
    """{"train", "heldout_wordings", "heldout_facts"}: rows carrying the document as their context. With
    questions: generate, "train" is empty here: the teacher writes it when it loads."""
    document = read_document(args.document_file) if document is None else document
    generated = args.questions == "generate"
    sets = {
        "train": [] if generated else load_questions(args.data_file, document, args.num_train_questions),
        "heldout_wordings": load_questions(args.heldout_wordings_file, document, args.num_heldout_questions),
        "heldout_facts": load_questions(args.heldout_facts_file, document, args.num_heldout_questions),
    }
    if not generated:  # the split is the question files' own; written questions carry no fact ids
        check_fact_split(sets)
    return sets


def load_forgetting_prompts(args: KnowledgeArguments) -> list[dict]:
    """Unrelated prompts, as rows without a context ({"context": "", "prompt"}); none without a file."""
    if not args.forgetting_file:
        return []
    if not Path(args.forgetting_file).is_file():
        raise UsageError(f"forgetting_file {args.forgetting_file} does not exist; give a JSONL of prompts")
    records, where = read_records(args.forgetting_file)
    prompts = [r.get("prompt") for r in records[: args.num_forgetting_prompts] if isinstance(r, dict)]
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise UsageError(f"{where}: every forgetting row needs a prompt (text); fix the file")
    return [{"context": "", "prompt": p} for p in prompts]
