"""`distill-trainer evaluate-replies`: a model's replies to prompts WITHOUT their context, the share that
follow a checkable rule, and (with a teacher) the KL to the teacher WITH the context on its completions.

    distill-trainer evaluate-replies --model results/system-prompt \
        --data recipes/data/python-functions/heldout.jsonl --checker python_function \
        --context "Answer with one Python function ..." --teacher self --output_dir results/replies

`--model` is a saved student (full folder or LoRA adapter), a Hub id or an embedded alias. The rows are
read as by the distill_context recipe (a prompt column, a context column or `--context`, SDFT or chat
`messages` rows). `--teacher self` is a LoRA student's base model with its adapters off. A folder written
by the recipe holds its resolved_config.yaml: its context, columns, checker and decoding settings are then
the defaults.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from distill_trainer.errors import UsageError
from distill_trainer.run.evaluate_command import (
    RECIPE_CONFIG,
    load_model_and_tokenizer,
    load_model_tokenizer,
    positive_int,
)
from distill_trainer.teacher.teacher import check_self_teacher, is_self

# settings read from a recipe's resolved config beside the model, unless given on the command line
SAVED_KEYS = (
    "context",
    "context_placement",
    "prompt_column",
    "context_column",
    "messages_column",
    "checker",
    "max_new_tokens",
    "do_sample",
    "generation_temperature",
    "top_p",
    "generation_seed",
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="A saved student folder, a Hub id or an embedded alias."
    )
    parser.add_argument(
        "--data", required=True, help="Rows: a JSONL/JSON file, a save_to_disk folder or a Hub id."
    )
    parser.add_argument("--context", default=None, help="The context of rows without one (a system prompt).")
    parser.add_argument("--context_placement", default=None, choices=("system", "user"))
    parser.add_argument("--prompt_column", default=None)
    parser.add_argument("--context_column", default=None)
    parser.add_argument("--messages_column", default=None)
    parser.add_argument("--checker", default=None, help="Rule checked on each reply, e.g. python_function.")
    parser.add_argument(
        "--teacher",
        default=None,
        help="Teacher for the KL (reads the context): a model with --model's tokenizer, or self (LoRA).",
    )
    parser.add_argument("--max_new_tokens", type=positive_int, default=None)
    parser.add_argument("--do_sample", action="store_true", default=None)
    parser.add_argument("--num_examples", type=positive_int, default=None, help="Use the first N rows.")
    parser.add_argument("--batch_size", type=positive_int, default=8)
    parser.add_argument("--completion_cache_dir", default=None, help="Where teacher completions are kept.")
    parser.add_argument("--output_dir", default=None, help="Write metrics.json and replies.jsonl here.")


def _settings(args) -> dict:
    """The command line's values over those of the recipe that trained `--model` (if it wrote any)."""
    saved = {}
    path = Path(args.model) / RECIPE_CONFIG
    if path.is_file():
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        saved = {key: values[key] for key in SAVED_KEYS if values.get(key) is not None}
    given = {key: getattr(args, key) for key in SAVED_KEYS if getattr(args, key, None) is not None}
    return {**saved, **given}


def evaluate_replies(args) -> dict:
    from distill_trainer.context.completion_cache import cut_offs
    from distill_trainer.context.config import ContextDataArguments
    from distill_trainer.context.data import load_context_rows
    from distill_trainer.context.generation_eval import rule_following
    from distill_trainer.context.steps import chat_view_dataset, completions, measure_student
    from distill_trainer.models.loading import load_causal_lm
    from distill_trainer.nli.row_checks import print_reports
    from distill_trainer.run.output_dir import check_output_location
    from distill_trainer.teacher.teacher import Teacher

    if args.output_dir is not None:  # before any generation: a bad output_dir must not waste the run
        check_output_location(args.output_dir)
    check_arguments(args)
    data_args = ContextDataArguments(data_file=args.data, **_settings(args))
    rows, report = load_context_rows(args.data, **data_args.column_settings(), limit=args.num_examples)
    print_reports([report])
    model, tokenizer = load_model_and_tokenizer(args.model)
    settings = data_args.generation_settings()
    placement = data_args.context_placement
    teacher, views, result = None, None, {}
    if args.teacher is not None:
        if is_self(args.teacher):
            base = getattr(getattr(model, "peft_config", {}).get("default"), "base_model_name_or_path", None)
            teacher = Teacher.for_model(model, "self", base or args.model)
        else:
            teacher = Teacher.for_model(load_causal_lm(args.teacher), args.teacher, args.teacher)
        replies, info = completions(
            teacher,
            tokenizer,
            rows,
            settings,
            placement=placement,
            cache_dir=args.completion_cache_dir,
            batch_size=args.batch_size,
            show_progress=True,
        )
        views = chat_view_dataset(tokenizer, rows, replies, placement)
        result["teacher"] = {"replies": [r["text"] for r in replies], "completions": info}
        if data_args.checker:
            result["teacher"]["rule"], result["teacher"]["checks"] = rule_following(
                result["teacher"]["replies"], data_args.checker, cut_offs(tokenizer, replies)
            )
    result["model"] = measure_student(
        model,
        tokenizer,
        rows,
        views,
        settings,
        checker=data_args.checker,
        teacher=teacher,
        placement=placement,
        batch_size=args.batch_size,
        label="model",
    )
    summary = {
        "model": args.model,
        "teacher": args.teacher,
        "data": report.as_dict() | {"where": report.where},
        "checker": data_args.checker,
        "decoding": settings.as_dict(),
        **{key: {k: v for k, v in value.items() if k in ("rule", "kl")} for key, value in result.items()},
    }
    _print(summary)
    if args.output_dir:
        _write(Path(args.output_dir), summary, rows, result)
    return {"metrics": summary, "replies": result}


def _print(summary: dict) -> None:
    for key in ("teacher", "model"):
        entry = summary.get(key)
        if not entry:
            continue
        line = f"{key:<8}"
        if "rule" in entry:
            rule = entry["rule"]
            line += f" rule followed {rule['rate']:.3f} ± {rule['stderr']:.3f} ({rule['passed']}/{rule['n']})"
        if "kl" in entry:
            line += f"  KL to the teacher {entry['kl']['kl_per_token']:.4f} per token"
        print(line, flush=True)


def _write(output_dir: Path, summary: dict, rows: list[dict], result: dict) -> None:
    from distill_trainer.context.generation_eval import reply_records
    from distill_trainer.integrity import write_text_atomically

    output_dir.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(record) + "\n" for record in reply_records(rows, result)]
    write_text_atomically(output_dir / "replies.jsonl", "".join(lines))
    write_text_atomically(output_dir / "metrics.json", json.dumps(summary, indent=2) + "\n")


def check_arguments(args) -> None:
    """What the command cannot do, refused before any weights load."""
    is_adapter = (Path(args.model) / "adapter_config.json").is_file()
    check_self_teacher(args.teacher, student_is_lora=is_adapter, fix="give a LoRA adapter folder as --model")
    if args.teacher is not None and not is_self(args.teacher):
        check_teacher_tokenizer(args.model, args.teacher)


def check_teacher_tokenizer(model: str, teacher: str) -> None:
    """The KL to the teacher compares logit i of both models at the model's tokens of the teacher's replies,
    so it needs one tokenizer: a teacher with another one is refused with the fix, not measured wrongly."""
    from distill_trainer.models.loading import load_tokenizer
    from distill_trainer.views.cross_tokenizer import tokenizers_differ

    if tokenizers_differ(load_model_tokenizer(model), load_tokenizer(teacher)):
        raise UsageError(
            f"--teacher {teacher} reads another tokenizer than --model {model}: the KL to the teacher "
            "compares the two models token id by token id, which only means something when both read one "
            "tokenizer; omit --teacher (the model's replies and rule-following are scored without it), or "
            "give a teacher with the model's tokenizer (or --teacher self with a LoRA adapter as --model)"
        )
