"""The document recipe's own validate steps (`recipes/distill_document.py`), after the checks every reply
recipe shares (`run/validate_replies.py`): its question sets and forgetting prompts, question-writing
settings that `questions: file` would ignore, what the teacher reads beside each question (the document,
or one passage when it is longer than the teacher reads at once), the passages and the facts file.

    checked = validate_reply_recipe(DOCUMENT_RECIPE, student_args, knowledge_args, config)
    checked.data["passages"], checked.data["teacher_context"], checked.data["facts"]
"""

from __future__ import annotations

from distill_trainer.context.coverage import load_facts
from distill_trainer.context.knowledge_data import (
    KnowledgeArguments,
    load_forgetting_prompts,
    load_question_sets,
)
from distill_trainer.context.passages import split_passages, tokenizer_counter
from distill_trainer.context.question_writing import longest_instruction
from distill_trainer.errors import UsageError
from distill_trainer.run.validate import ValidatedRecipe
from distill_trainer.run.validate_models import load_config_checked
from distill_trainer.run.validate_replies import ReplyRecipe
from distill_trainer.teacher.teacher import is_self
from distill_trainer.views.chat import chat_prompt_ids

# the settings of questions: generate that nothing reads when the questions come from a file (the passage
# settings are read there too, by a document longer than the teacher's context)
WRITING_SETTINGS = (
    "question_unit",
    "min_statement_words",
    "questions_per_passage",
    "question_wordings",
    "question_max_new_tokens",
    "question_do_sample",
    "question_temperature",
    "question_top_p",
    "question_seed",
    "question_suffix",
)


def _check_writing_settings(args, given) -> None:
    """Question-writing settings given with questions: file would be ignored: refused, with the fix."""
    ignored = [name for name in WRITING_SETTINGS if name in given]
    if args.questions != "generate" and ignored:
        these = "it" if len(ignored) == 1 else "them"
        raise UsageError(
            f"{', '.join(ignored)} only shape{'s' if len(ignored) == 1 else ''} the questions the teacher "
            f"writes, and questions: {args.questions} reads them from data_file, so they would be ignored; "
            f"remove {these}, or set questions: generate"
        )


def _document_parts(args, student_args, config, result: ValidatedRecipe) -> None:
    """What the teacher reads with each question (`teacher_context`: the document, or passages when it
    is longer than the teacher reads at once), the passages (for questions: generate or passage mode) and
    the facts the report counts (facts_file), all kept in `result.data`."""
    data = result.data
    data["passages"] = data["facts"] = None
    document = data["document"]
    reader = result.teacher_tokenizer or result.tokenizer  # passages must fit the teacher's context
    data["teacher_context"] = context = _teacher_context(args, student_args, config, reader, data)
    if args.questions == "generate" or context["mode"] == "passage":
        passages = split_passages(
            document, tokenizer_counter(reader), args.passage_tokens, args.passage_overlap_tokens
        )
        data["passages"] = passages
        uses = []
        if args.questions == "generate":
            uses.append("the teacher writes the training questions from them")
        if context["mode"] == "passage":
            uses.append("each question is answered with one passage in view")
        result.checks.append(
            (
                "passages",
                f"{len(passages)} passages of at most about {args.passage_tokens} tokens "
                f"({args.passage_overlap_tokens} shared at each seam); " + "; ".join(uses),
            )
        )
    if args.facts_file:
        data["facts"] = load_facts(args.facts_file)
        result.checks.append(("facts", f"{len(data['facts'])} facts for the coverage report"))


def _context_limit(args, student_args, config) -> tuple[int | None, str]:
    """The most prompt tokens the teacher reads at once, and where that number comes from."""
    if args.max_context_tokens:
        return args.max_context_tokens, "max_context_tokens"
    teacher = config.teacher_model_name_or_path
    name = student_args.model_name_or_path if is_self(teacher) else teacher
    model_config = load_config_checked("teacher", name)
    positions = getattr(model_config, "max_position_embeddings", None)
    if not positions:
        return None, "no max_position_embeddings in its config"
    longest = max(args.max_new_tokens, args.question_max_new_tokens if args.questions == "generate" else 0)
    return positions - longest, f"its max_position_embeddings {positions:,} less {longest} answer tokens"


def _teacher_context(args, student_args, config, reader, data) -> dict:
    """{"mode": "document" or "passage", "limit", "prompt_tokens", "fits"}: the whole document when it
    fits the teacher's context (or teacher_context says so), else one passage per question."""
    first = data["first"]
    prompt_tokens = len(chat_prompt_ids(reader, first["prompt"], data["document"], args.context_placement))
    limit, source = _context_limit(args, student_args, config)
    fits = limit is None or prompt_tokens <= limit
    mode = args.teacher_context if args.teacher_context != "auto" else ("document" if fits else "passage")
    if mode == "document" and not fits:
        raise UsageError(
            f"the document in the teacher's prompt (chat template and a question included) is "
            f"{prompt_tokens:,} tokens, more than the teacher reads at once ({limit:,}: {source}); set "
            "teacher_context: passage (or auto) to answer each question with one passage in view"
        )
    if mode == "passage" and limit is not None:
        # the longest thing asked beside a passage: a question, or the instruction to write them
        asked = [row["prompt"] for rows in data["sets"].values() for row in rows]
        if args.questions == "generate":
            asked.append(longest_instruction(args, data["document"]))
        longest = max(asked, key=len)
        bare = len(chat_prompt_ids(reader, longest, "", args.context_placement))
        if bare + args.passage_tokens > limit:
            raise UsageError(
                f"a passage of passage_tokens {args.passage_tokens} with the chat template and the longest "
                f"prompt ({bare} tokens) is more than the teacher reads at once ({limit:,}: {source}); "
                "lower passage_tokens"
            )
    return {"mode": mode, "limit": limit, "prompt_tokens": prompt_tokens, "fits": fits}


def _question_sets(args):
    sets = load_question_sets(args)
    forgetting = load_forgetting_prompts(args)
    first = next(rows[0] for rows in sets.values() if rows)  # every row carries the document
    data = {"sets": sets, "forgetting": forgetting, "document": first["context"], "first": first}
    described = ", ".join(
        f"{name} {len(rows)} questions" if rows or name != "train" else "train: written by the teacher"
        for name, rows in sets.items()
    )
    return data, first, described + f", {len(forgetting)} forgetting prompts"


def _document_checks(args, student_args, config, result: ValidatedRecipe, given) -> None:
    _check_writing_settings(args, given)
    _document_parts(args, student_args, config, result)


DOCUMENT_RECIPE = ReplyRecipe("distill_document", KnowledgeArguments, _question_sets, _document_checks)
