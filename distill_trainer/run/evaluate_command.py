"""`distill-trainer evaluate`: score any causal LM on an NLI JSONL file and print/write the recipes' metrics.

    distill-trainer evaluate --model results/latest/cd_lora --task mnli --data dev.jsonl
    distill-trainer evaluate --model embedded:qwen2.5-coder-1.5b --task mnli --data dev.jsonl --k 4 \
        --demonstration_seed 2 --pattern gpt3 --output_dir results/eval-teacher

`--model` is a saved student (a full model folder, or a LoRA adapter folder: its base model is loaded and
the adapter put on top), a Hub id or an embedded alias. The file has the shared data's columns (premise,
hypothesis, label with the Hub dataset's label ids; HANS also heuristic, subcase, template). A folder
written by a recipe holds its resolved_config.yaml: the pattern it was trained with is then the default.
With `--k N` the model reads N demonstrations from the task's training pool before each query.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

from distill_trainer.errors import UsageError
from distill_trainer.integrity import write_text_atomically

ADAPTER_CONFIG = "adapter_config.json"
RECIPE_CONFIG = "resolved_config.yaml"
PATTERN_KEYS = ("pattern", "template", "label_words")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (a count of rows, a batch size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from distill_trainer.training.config import DTYPES

    parser.add_argument(
        "--model",
        required=True,
        help="A saved student folder (full or LoRA adapter), a Hub id "
        "or an embedded alias such as embedded:smollm2-135m.",
    )
    parser.add_argument(
        "--task", default="mnli", help="Task whose labels the file uses: mnli, mnli_3way or hans."
    )
    parser.add_argument(
        "--data", required=True, help="NLI JSONL file with premise, hypothesis, label columns."
    )
    parser.add_argument("--k", type=int, default=0, help="Demonstrations before each query (0: zero-shot).")
    parser.add_argument(
        "--pattern",
        default=None,
        help="Pattern name; default: the one in the model folder's "
        f"{RECIPE_CONFIG}, else DataArguments' default.",
    )
    parser.add_argument(
        "--label_words", nargs="+", default=None, help="One word per label, e.g. ' Yes' ' No'."
    )
    parser.add_argument(
        "--template", default=None, help="With --pattern custom: text with {premise}, {hypothesis}."
    )
    parser.add_argument(
        "--demonstration_ids",
        type=int,
        nargs="+",
        default=None,
        help="idx values of training-pool rows to use as the k demonstrations.",
    )
    parser.add_argument("--demonstration_seed", type=int, default=0, help="Seed for drawing demonstrations.")
    parser.add_argument(
        "--data_dir", default=None, help="Local data directory holding the demonstration pool."
    )
    parser.add_argument(
        "--num_examples", type=positive_int, default=None, help="Evaluate only this many rows (balanced)."
    )
    parser.add_argument("--batch_size", type=positive_int, default=16)
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="Weights dtype.")
    parser.add_argument(
        "--drop_invalid_rows",
        action="store_true",
        help="Drop rows the task cannot use (empty "
        "text, unknown labels, repeats) and count them, instead of stopping at the first one.",
    )
    parser.add_argument(
        "--output_dir", default=None, help="Write metrics.json and predictions_<task>.jsonl here."
    )
    parser.add_argument("--no_progress", action="store_true", help="No progress bar.")


def saved_pattern_settings(model: str) -> dict:
    """pattern / template / label_words from a recipe's resolved config beside the weights, if any."""
    path = Path(model) / RECIPE_CONFIG
    if not path.is_file():
        return {}
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {key: values[key] for key in PATTERN_KEYS if values.get(key) is not None}


def check_data_file(data: str) -> None:
    """--data names one JSONL file; a folder (a data dir, say) is told apart from a missing file, with
    the files inside it that could be meant."""
    folder = Path(data)
    if not folder.is_dir():
        return  # a missing or unreadable file is reported where it is read
    found = sorted(str(p) for p in folder.rglob("*.jsonl"))
    hint = f"e.g. --data {found[0]}" if found else "it holds no .jsonl file"
    raise UsageError(
        f"--data {data} is a folder, not a file; give one JSONL file with premise, hypothesis and label "
        f"columns ({hint})"
    )


def check_model_folder(model: str):
    """Before any weights load: the model (or a LoRA adapter's base model) has a loadable tokenizer and
    a causal-LM config. Returns (tokenizer, config) of the model that will be scored."""
    from distill_trainer.models.provenance import trained_base
    from distill_trainer.run.validate_models import load_config_checked, load_tokenizer_checked

    folder = Path(model)
    if folder.is_dir() and not (folder / ADAPTER_CONFIG).is_file() and not (folder / "config.json").is_file():
        raise UsageError(
            f"--model {model} is a folder without config.json or {ADAPTER_CONFIG}, so it holds no "
            "model; give a folder written by a recipe (a saved student), a Hub id or an embedded alias"
        )
    if (folder / ADAPTER_CONFIG).is_file():
        try:
            base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
                "base_model_name_or_path"
            )
        except ValueError:
            raise UsageError(f"{folder / ADAPTER_CONFIG} is not valid JSON; save the adapter again") from None
        if not base:
            raise UsageError(
                f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path; add the base model's id "
                "or path there"
            )
        base = trained_base(folder, base)
        config = load_config_checked(f"LoRA adapter {model}'s base model", base)
        has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
        return load_tokenizer_checked("model", str(folder) if has_tokenizer else base), config
    return load_tokenizer_checked("model", model), load_config_checked("model", model)


def load_model_and_tokenizer(model: str, dtype: str = "float32"):
    """A full model (folder, Hub id, alias), or a LoRA adapter folder on top of its base model."""
    from distill_trainer.models.loading import load_causal_lm

    folder = Path(model)
    if not (folder / ADAPTER_CONFIG).is_file():
        return load_causal_lm(model, dtype=dtype), load_model_tokenizer(model)
    from peft import PeftModel

    base = load_causal_lm(_adapter_base(folder), dtype=dtype)
    return PeftModel.from_pretrained(base, str(folder)), load_model_tokenizer(model)


def load_model_tokenizer(model: str):
    """The tokenizer `load_model_and_tokenizer` gives with `model`, without loading any weights: a LoRA
    adapter folder's own, else its base model's."""
    from distill_trainer.models.loading import load_tokenizer

    folder = Path(model)
    if not (folder / ADAPTER_CONFIG).is_file():
        return load_tokenizer(model)
    has_tokenizer = any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json"))
    return load_tokenizer(str(folder) if has_tokenizer else _adapter_base(folder))


def _adapter_base(folder: Path) -> str:
    """The base model a LoRA adapter folder was trained on (an embedded alias's Hub id gives the alias)."""
    from distill_trainer.models.provenance import trained_base

    base_name = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get(
        "base_model_name_or_path"
    )
    if not base_name:
        raise UsageError(
            f"{folder / ADAPTER_CONFIG} names no base_model_name_or_path; add the base model's id "
            "or path there"
        )
    return trained_base(folder, base_name)


def data_arguments(args, task):
    """The recipes' DataArguments for this evaluation, which check the pattern, k and demonstration ids as
    the recipes do; the pattern comes from the model folder's recipe unless the command line names one."""
    from distill_trainer.nli.arguments import DataArguments

    pattern_settings = saved_pattern_settings(args.model)
    for key in PATTERN_KEYS:
        if getattr(args, key) is not None:
            pattern_settings[key] = getattr(args, key)
    return DataArguments(
        task=task.name,
        k=args.k,
        demonstration_ids=args.demonstration_ids,
        demonstration_seed=args.demonstration_seed,
        data_dir=args.data_dir,
        data_source="local" if args.data_dir else "auto",
        **pattern_settings,
    )


def fixed_demonstrations(args, task, data_args, pattern, rows) -> list[str]:
    """The k demonstrations shown before every row, from the task's training pool (MNLI's for a task
    without one), never one of the rows evaluated."""
    from distill_trainer.nli.demonstrations import DemonstrationSampler, row_key
    from distill_trainer.nli.tasks import get_task, load_split

    source = task if task.train_split else get_task("mnli")
    pool = load_split(
        source,
        source.train_split,
        data_args.data_source,
        data_args.data_dir,
        keep_idx=args.demonstration_ids is not None,
    )
    sampler = DemonstrationSampler(
        pool,
        pattern,
        task.num_labels,
        args.k,
        args.demonstration_seed,
        exclude_keys={row_key(row) for row in rows},
        demonstration_ids=args.demonstration_ids,
    )
    return sampler.fixed


def write_results(output_dir: Path, task, metrics: dict, predictions: list[dict]) -> list[Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = [output_dir / "metrics.json", output_dir / f"predictions_{task.name}.jsonl"]
    # predictions first: metrics.json, written last, marks a finished evaluation
    write_text_atomically(paths[1], "".join(json.dumps(r) + "\n" for r in predictions))
    write_text_atomically(paths[0], json.dumps({"eval": {task.name: metrics}}, indent=2) + "\n")
    return paths


def evaluate_file(args) -> dict:
    """Run the evaluation `args` describe; returns {"metrics": ..., "predictions": ...}."""
    from distill_trainer.nli.data import model_max_length
    from distill_trainer.nli.demonstrations import balanced_subset, fit_demonstrations
    from distill_trainer.nli.evaluation import evaluate_task
    from distill_trainer.nli.row_checks import print_reports
    from distill_trainer.nli.tasks import get_task, load_split
    from distill_trainer.run.output_dir import check_output_location
    from distill_trainer.run.runner import format_summary
    from distill_trainer.run.validate_models import check_rows_fit

    if args.output_dir is not None:  # before any scoring: a bad output_dir must not waste the run
        check_output_location(args.output_dir)
    task = get_task(args.task)
    check_data_file(args.data)
    data_args = data_arguments(args, task)
    pattern = data_args.get_pattern()
    reports = []
    rows = load_split(
        task, "file", data_file=args.data, drop_invalid_rows=args.drop_invalid_rows, reports=reports
    )
    if args.num_examples is not None:
        rows = balanced_subset(rows, args.num_examples, task.num_labels, seed=0, what="rows (--num_examples)")
    demonstrations = fixed_demonstrations(args, task, data_args, pattern, rows) if args.k else None
    print_reports(reports)

    # every row must fit the model's positions before any weights load or any scoring starts
    tokenizer, model_config = check_model_folder(args.model)
    max_length = model_max_length(model_config, data_args)
    check_rows_fit(tokenizer, rows, pattern, max_length, f"{args.data}", "model")
    if demonstrations:
        longest = max(rows, key=lambda row: len(pattern.query(row)))
        fit_demonstrations(
            tokenizer, demonstrations, pattern.query(longest), max(pattern.label_words, key=len), max_length
        )
    model, tokenizer = load_model_and_tokenizer(args.model, args.dtype)
    metrics, predictions = evaluate_task(
        model,
        tokenizer,
        rows,
        task,
        pattern,
        demonstrations,
        batch_size=args.batch_size,
        max_length=max_length,
        progress=not args.no_progress,
    )
    metrics.update(data_report={r.where: r.as_dict() for r in reports})
    metrics.update(
        model=args.model,
        data=args.data,
        pattern=pattern.name,
        label_words=list(pattern.label_words),
        k=args.k,
        demonstration_ids=args.demonstration_ids,
    )
    paths = write_results(Path(args.output_dir), task, metrics, predictions) if args.output_dir else []
    print(
        format_summary(
            f"evaluate: {args.model}",
            {
                "data": f"{args.data} ({len(rows)} rows, task {task.name})",
                "prompt": f"pattern {pattern.name}, k={args.k} demonstrations",
            },
            {task.name: metrics},
            paths or ["(not written; pass --output_dir)"],
        ),
        flush=True,
    )
    return {"metrics": metrics, "predictions": predictions}
