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
from distill_trainer.teacher.teacher import is_self
from distill_trainer.training.parsing import GivenSettings, given_or_inferred
from distill_trainer.training.rollouts import check_on_policy_settings

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
        _document_parts(data_args, result)
    return result


def _document_parts(args, result: ValidatedRecipe) -> None:
    """The passages the teacher writes questions from (questions: generate) and the facts the report
    counts (facts_file), both kept in `result.data`."""
    result.data["passages"] = result.data["facts"] = None
    if args.questions == "generate":
        document = result.data["sets"]["heldout_facts"][0]["context"]
        reader = result.teacher_tokenizer or result.tokenizer  # passages must fit the teacher's context
        passages = split_passages(
            document, tokenizer_counter(reader), args.passage_tokens, args.passage_overlap_tokens
        )
        result.data["passages"] = passages
        result.checks.append(
            (
                "passages",
                f"{len(passages)} passages of at most about {args.passage_tokens} tokens "
                f"({args.passage_overlap_tokens} shared at each seam); the teacher writes the training "
                "questions from them",
            )
        )
    if args.facts_file:
        result.data["facts"] = load_facts(args.facts_file)
        result.checks.append(("facts", f"{len(result.data['facts'])} facts for the coverage report"))


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
    data = {"sets": sets, "forgetting": forgetting}
    described = ", ".join(
        f"{name} {len(rows)} questions" if rows or name != "train" else "train: written by the teacher"
        for name, rows in sets.items()
    )
    first = next(rows[0] for rows in sets.values() if rows)  # every row carries the document
    return data, first, described + f", {len(forgetting)} forgetting prompts"
