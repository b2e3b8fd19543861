"""The validate step of the recipes that distil whole replies (`distill_context`, `distill_document`):
everything that can be checked before a model loads, run by the recipe itself as its first step and by
`distill-trainer validate`.

    checked = validate_reply_recipe(CONTEXT_RECIPE, student_args, data_args, config)
    checked.data, checked.tokenizer      # the loaded rows and the checked tokenizer, reused by the recipe

What differs between the recipes (their data arguments, how their rows load, checks of their own) is a
`ReplyRecipe`; the document recipe's is in `run/validate_document.py`, so the code of one recipe's checks
is not in the other's code digest (an edit to the document recipe leaves the system-prompt tables current).

In order of cost: the recipe's settings (a teacher, a shared vocabulary, `self` with a LoRA student, the
on-policy settings), training settings that would train nothing, the output folder under the rules of
every recipe (fresh, or resumed / overwritten as the settings say), quantization support, the data (rows
read, skipped rows counted by reason) and the tokenizer (its chat template takes a row; a separate
teacher reads the same tokens, or another tokenizer whose cross-tokenizer loss the settings allow).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from distill_trainer.context.config import ContextDataArguments
from distill_trainer.context.data import load_run_rows
from distill_trainer.context.steps import check_reply_settings, checked_tokenizers
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

RULES = RecipeRules(trains=True, teacher="required")


@dataclass(frozen=True)
class ReplyRecipe:
    """What one reply recipe checks beyond the shared steps."""

    name: str
    data_arguments: type  # its data arguments (the student's and the training ones are shared)
    load_data: Callable  # data_args -> (data, its first row, a line describing it)
    own_checks: Callable | None = None  # (data_args, student_args, config, result, given) -> None


def validate_reply_recipe(
    recipe: ReplyRecipe, student_args, data_args, config, *, given: GivenSettings | None = None
) -> ValidatedRecipe:
    """Every check for `recipe` (see the module docstring); `.data` holds its rows, `.tokenizer` the
    student's tokenizer. `given`: the settings given explicitly (`parse_config`), None for a config built
    in Python."""
    configs = (student_args, data_args, config)
    given = given_or_inferred(given, configs)
    name = recipe.name
    check_reply_settings(student_args, config, name)
    check_on_policy_settings(config)
    check_training_settings(data_args, config)
    result = ValidatedRecipe(name)
    result.checks.append(("settings", f"{len(given)} given, types and ranges checked"))
    result.resume_from = check_output_dir(name, RULES, configs, given)
    result.checks.append(("output_dir", describe_output(config.output_dir, result.resume_from)))
    check_quantization(config)
    result.data, first, described = recipe.load_data(data_args)
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
    if recipe.own_checks is not None:
        recipe.own_checks(data_args, student_args, config, result, given)
    return result


def _context_rows(data_args):
    train_rows, eval_rows, reports = load_run_rows(data_args)
    print_reports(reports)
    data = {"train": train_rows, "eval": eval_rows, "reports": reports}
    described = f"{len(train_rows)} training prompts" + (
        f", {len(eval_rows)} held-out prompts" if eval_rows else ", no held-out prompts"
    )
    return data, train_rows[0], described


CONTEXT_RECIPE = ReplyRecipe("distill_context", ContextDataArguments, _context_rows)
