"""The validate step of the recipes that distil whole replies (`distill_context`, `distill_document`):
everything that can be checked before a model loads, run by the recipe itself as its first step and by
`distill-trainer validate`.

    checked = validate_reply_recipe("distill_context", student_args, data_args, config)
    checked.data, checked.tokenizer      # the loaded rows and the checked tokenizer, reused by the recipe

In order of cost: the recipe's settings (a teacher, a shared vocabulary, `self` with a LoRA student, the
on-policy settings), training settings that would train nothing, the output folder under the rules of
every recipe (fresh, or resumed / overwritten as the settings say), quantization support, the data (rows
read, skipped rows counted by reason) and the tokenizer (its chat template takes a row; a separate
teacher reads the same tokens, or another tokenizer whose cross-tokenizer loss the settings allow).
"""

from __future__ import annotations

from distill_trainer.context.config import ContextDataArguments
from distill_trainer.context.coverage import load_facts
from distill_trainer.context.data import load_run_rows
from distill_trainer.context.knowledge_data import (
    KnowledgeArguments,
    load_forgetting_prompts,
    load_question_sets,
)
from distill_trainer.context.passages import split_passages, tokenizer_counter
from distill_trainer.context.question_writing import longest_instruction
from distill_trainer.context.steps import check_reply_settings, checked_tokenizers
from distill_trainer.errors import UsageError
from distill_trainer.nli.row_checks import print_reports
from distill_trainer.run.validate import (
    RecipeRules,
    ValidatedRecipe,
    check_output_dir,
    check_quantization,
    check_training_settings,
    describe_output,
)
from distill_trainer.run.validate_models import load_config_checked
from distill_trainer.teacher.teacher import is_self
from distill_trainer.training.parsing import GivenSettings, given_or_inferred
from distill_trainer.training.rollouts import check_on_policy_settings
from distill_trainer.views.chat import chat_prompt_ids

# the data arguments each recipe reads (the student's and the training ones are shared)
REPLY_RECIPES = {"distill_context": ContextDataArguments, "distill_document": KnowledgeArguments}
RULES = RecipeRules(trains=True, teacher="required")


def validate_reply_recipe(
    recipe: str, student_args, data_args, config, *, given: GivenSettings | None = None
) -> ValidatedRecipe:
    """Every check for `recipe` (see the module docstring); `.data` holds its rows, `.tokenizer` the
    student's tokenizer. `given`: the settings given explicitly (`parse_config`), None for a config built
    in Python."""
    configs = (student_args, data_args, config)
    given = given_or_inferred(given, configs)
    if recipe not in REPLY_RECIPES:
        raise UsageError(f"unknown reply recipe {recipe!r}; choose one of: {', '.join(REPLY_RECIPES)}")
    check_reply_settings(student_args, config, recipe)
    check_on_policy_settings(config)
    check_training_settings(data_args, config)
    result = ValidatedRecipe(recipe)
    result.checks.append(("settings", f"{len(given)} given, types and ranges checked"))
    result.resume_from = check_output_dir(recipe, RULES, configs, given)
    result.checks.append(("output_dir", describe_output(config.output_dir, result.resume_from)))
    check_quantization(config)
    if recipe == "distill_context":
        result.data, first, described = _context_rows(data_args)
    else:
        result.data, first, described = _question_sets(data_args)
    result.checks.append(("data", described))
    placement = data_args.context_placement
    result.tokenizer, result.teacher_tokenizer = checked_tokenizers(student_args, config, first, placement)
    teacher = config.teacher_model_name_or_path
    if is_self(teacher):
        reads = ""
    elif result.teacher_tokenizer is None:
        reads = f"; {teacher} reads the same tokens"
    else:
        reads = f"; {teacher} reads another tokenizer: the cross-tokenizer loss grades the replies"
    result.checks.append(("tokenizer", f"the chat template takes a row ({placement} placement){reads}"))
    if recipe == "distill_document":
        _check_writing_settings(data_args, given)
        _document_parts(data_args, student_args, config, result)
    return result


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
    """{"mode": "document" or "passage", "limit", "prompt_tokens"}: the whole document when it fits the
    teacher's context (or teacher_context says so), else one passage per question."""
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
    return {"mode": mode, "limit": limit, "prompt_tokens": prompt_tokens}


def _context_rows(data_args):
    train_rows, eval_rows, reports = load_run_rows(data_args)
    print_reports(reports)
    data = {"train": train_rows, "eval": eval_rows, "reports": reports}
    described = f"{len(train_rows)} training prompts" + (
        f", {len(eval_rows)} held-out prompts" if eval_rows else ", no held-out prompts"
    )
    return data, train_rows[0], described


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
