"""The `distill-trainer` command.

    # check a recipe file, load no model
    distill-trainer validate --config recipes/configs/paper/cd-full.yaml
    distill-trainer validate --config my.yaml --recipe context_distill --learning_rate 1e-4
    # see run/evaluate_command.py
    distill-trainer evaluate --model results/latest/cd_lora --task mnli --data dev.jsonl
    # see run/reply_command.py
    distill-trainer evaluate-replies --model results/system-prompt --data heldout.jsonl --teacher self
    # the published tables the current code would no longer reproduce (code_stamp.py)
    distill-trainer stale-results docs/results

Each subcommand is one `add_<name>_command(subcommands)` function, listed in `COMMANDS`, that adds its
parser and sets `run` (a function of the parsed arguments and the arguments it left over, returning the
exit status). A mistake is one `error: ...` line on stderr and exit status 2, as in the recipes.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from distill_trainer.errors import UsageError
from distill_trainer.quiet_logs import install_quiet_logs
from distill_trainer.run.interrupt import interruptible


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line as a UsageError (one line) instead of usage + exit."""

    def error(self, message):
        raise UsageError(f"{message}; see {self.prog} --help")


# ---------------------------------------------------------------- validate


def recipe_of(config_path: str) -> str | None:
    """The recipe a YAML file is for, from the launch command in its header comment (`recipes/<name>.py`)."""
    try:
        lines = Path(config_path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return None  # parse_config reports the missing file
    for line in lines:
        if not line.startswith("#"):
            break
        match = re.search(r"recipes/(\w+)\.py", line)
        if match:
            return match.group(1)
    return None


def run_validate(args, overrides: list[str]) -> int:
    from distill_trainer.nli.arguments import DataArguments
    from distill_trainer.run.reply_recipes import REPLY_RECIPES
    from distill_trainer.run.validate import RECIPES, describe, validate_recipe
    from distill_trainer.run.validate_replies import validate_reply_recipe
    from distill_trainer.training.config import DistillationConfig, StudentArguments
    from distill_trainer.training.parsing import parse_config

    recipe = args.recipe or recipe_of(args.config)
    if recipe == "compare":  # one recipe per method, each method's file written by the comparison
        raise UsageError(
            f"{args.config} is a comparison, which runs one recipe per method; check every method with "
            f"python recipes/compare.py --config {args.config} --check_only true"
        )
    known = [*RECIPES, *REPLY_RECIPES]
    if recipe not in known:
        found = (
            f"it names recipes/{recipe}.py, which validate does not know"
            if recipe
            else "its header names no recipes/<name>.py"
        )
        raise UsageError(
            f"cannot tell which recipe {args.config} is for ({found}); pass --recipe {' | '.join(known)}"
        )
    data_type = REPLY_RECIPES[recipe].data_arguments if recipe in REPLY_RECIPES else DataArguments
    configs, given = parse_config(
        (StudentArguments, data_type, DistillationConfig), ["--config", args.config, *overrides]
    )
    if recipe in REPLY_RECIPES:
        result = validate_reply_recipe(REPLY_RECIPES[recipe], *configs, given=given)
    else:
        result = validate_recipe(recipe, *configs, given=given)
    print(
        f"ok: recipes/{recipe}.py --config {args.config}" + (f" {' '.join(overrides)}" if overrides else "")
    )
    print(describe(result))
    return 0


def add_validate_command(subcommands) -> None:
    parser = subcommands.add_parser(
        "validate",
        help="check a recipe file before running it (no model weights are loaded)",
        description="Check a recipe file (and --key value overrides) the way the recipe does before it loads "
        "any model: keys, types and ranges, the data, label words and templates, tokenizer "
        "compatibility, LoRA targets, quantization support and the output directory.",
    )
    parser.add_argument("--config", required=True, help="the recipe YAML")
    parser.add_argument(
        "--recipe",
        help="icl_eval, pattern_finetune, context_distill, distill_context or distill_document; default: "
        "the recipe named in the file's header comment",
    )
    parser.set_defaults(run=run_validate, takes_overrides=True)


# ---------------------------------------------------------------- evaluate


def run_evaluate(args, overrides: list[str]) -> int:
    from distill_trainer.run.evaluate_command import evaluate_file

    evaluate_file(args)
    return 0


def add_evaluate_command(subcommands) -> None:
    from distill_trainer.run.evaluate_command import add_arguments

    parser = subcommands.add_parser(
        "evaluate",
        help="score a causal LM (a saved student, a Hub id, an alias) on an NLI JSONL file",
        description="Score a model on an NLI JSONL file with the recipes' label-word metrics.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run_evaluate, takes_overrides=False)


# ---------------------------------------------------------------- evaluate-replies


def run_evaluate_replies(args, overrides: list[str]) -> int:
    from distill_trainer.run.reply_command import evaluate_replies

    evaluate_replies(args)
    return 0


def add_evaluate_replies_command(subcommands) -> None:
    from distill_trainer.run.reply_command import add_arguments

    parser = subcommands.add_parser(
        "evaluate-replies",
        help="a chat model's replies without the context: rule-following rate and KL to a teacher with it",
        description="Generate a model's replies to prompts without their context, check them with a rule "
        "(--checker) and, with --teacher, measure the KL to the teacher that reads the context.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run_evaluate_replies, takes_overrides=False)


# ---------------------------------------------------------------- compare-replies


def run_compare_replies(args, overrides: list[str]) -> int:
    from distill_trainer.context.run_comparison import compare_replies

    compare_replies(args)
    return 0


def add_compare_replies_command(subcommands) -> None:
    from distill_trainer.context.run_comparison import add_arguments

    parser = subcommands.add_parser(
        "compare-replies",
        help="distill_context runs side by side on their held-out prompts, with paired differences",
        description="The trained students of several distill_context runs on the same held-out prompts: "
        "rule-following rate, cut-off replies, KL and time, and each run's paired difference from the first.",
    )
    add_arguments(parser)
    parser.set_defaults(run=run_compare_replies, takes_overrides=False)


# ---------------------------------------------------------------- stale-results


def run_stale_results(args, overrides: list[str]) -> int:
    from distill_trainer.code_stamp import stale_tables

    for folder in args.folders:
        if not Path(folder).is_dir():
            raise UsageError(
                f"{folder} is not a folder; give the folder of published tables, e.g. docs/results"
            )
    stale = [found for folder in args.folders for found in stale_tables(folder)]
    for path, why in stale:
        print(f"{path}: {'; '.join(why)}")
    print(
        f"{len(stale)} table(s) the current code would not reproduce, or naming no code: regenerate them"
        if stale
        else "ok: every table names the current code's digest"
    )
    return 1 if stale else 0


def add_stale_results_command(subcommands) -> None:
    parser = subcommands.add_parser(
        "stale-results",
        help="list the published tables the current code (library, scripts, packages) would not reproduce",
        description="Every .md and .json table under the folders names the digest of the code and packages "
        "that made it; list those whose digest differs from the current code's (with the files and "
        "package versions that changed) or that name none. Exit status 1 when any is listed.",
    )
    parser.add_argument("folders", nargs="*", default=["docs/results"], help="default: docs/results")
    parser.set_defaults(run=run_stale_results, takes_overrides=False)


# ---------------------------------------------------------------- the command

COMMANDS = [
    add_validate_command,
    add_evaluate_command,
    add_evaluate_replies_command,
    add_compare_replies_command,
    add_stale_results_command,
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="distill-trainer", description="Context distillation of causal LMs.")
    subcommands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subcommands.required = True
    for add_command in COMMANDS:
        add_command(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    install_quiet_logs()
    with interruptible(argv, program="distill-trainer"):
        try:
            args, rest = build_parser().parse_known_args(argv)
            if rest and not getattr(args, "takes_overrides", False):
                raise UsageError(
                    f"unrecognized arguments: {' '.join(rest)}; see distill-trainer {args.command} --help"
                )
            return args.run(args, rest)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2


def command_line() -> int:
    """The `distill-trainer` program. Its teardown guard and top-level Ctrl-C handler come first
    (`quiet_start`, as in the recipes), so a Ctrl-C at any moment after the interpreter's own start-up
    is the one line and status 130; `main` alone is what Python callers and tests use."""
    import distill_trainer.run.quiet_start  # noqa: F401

    return main()


if __name__ == "__main__":
    sys.exit(command_line())
