"""The catalogue of bad inputs: recipe files, data files, models, training runs and command lines.

Every case must end with exactly one `error: ...` line that names the problem and the fix, a non-zero exit
status (2), no traceback, and no partial output directory (or, where an earlier run's results were there,
those results untouched). Cases run in this process through the recipes' own entry point (`run_recipe`)
or the command's `main`; the last tests run a recipe script directly and under `accelerate launch`.

Under `accelerate launch`, a failing recipe prints its error line and then accelerate raises its own
`CalledProcessError` traceback (exit status 1); `accelerate launch --quiet` drops that traceback. A
single-process run can also start the recipe directly (`python recipes/<name>.py`), which exits with 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import CPU, DATA, ROOT, load_recipe, write_recipe

from distill_trainer.run import cli
from distill_trainer.run.runner import run_recipe


@dataclass
class Case:
    id: str
    recipe: str  # a recipe name, or "cli" for the distill-trainer command
    values: dict = field(default_factory=dict)  # recipe-file keys over test_recipes.write_recipe's defaults
    argv: tuple = ()  # extra command-line arguments
    setup: Callable | None = None  # (Context) -> None: files to create, values to change, patches
    problem: str = ""  # regex on the error line: what is wrong
    fix: str = ""  # regex on the error line: what to do
    leaves: str = "nothing"  # "nothing": no output_dir; "untouched": output_dir as it was; "checkpoint"


@dataclass
class Context:
    tmp_path: Path
    tiny_dirs: dict
    values: dict
    monkeypatch: pytest.MonkeyPatch
    config: str | None = None  # a hand-written recipe file instead of the YAML of `values`
    watch: Path | None = None  # what must be left as it was, when not output_dir
    keep: list = field(default_factory=list)  # objects held for the case's duration (a lock)

    @property
    def out(self) -> Path:
        return Path(self.values["output_dir"])


# ---------------------------------------------------------------- setups


def raw_recipe(text):
    def setup(ctx):
        path = ctx.tmp_path / "raw.yaml"
        path.write_text(text)
        ctx.config = str(path)

    return setup


def data_copy(ctx, task, split, change):
    """A copy of the test data in which `change(rows)` rewrites one file's lines (None: delete the file)."""
    root = ctx.tmp_path / "data"
    for source in Path(DATA).glob("*/*.jsonl"):
        target = root / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(source.read_text())
    target = root / task / f"{split}.jsonl"
    lines = change(target.read_text().splitlines())
    if lines is None:
        target.unlink()
    else:
        target.write_text("\n".join(lines) + "\n")
    ctx.values["data_dir"] = str(root)


def data_setup(task, split, change):
    return lambda ctx: data_copy(ctx, task, split, change)


def relabel(rows, label_of):
    return [
        json.dumps({**json.loads(r), "label": label_of(i, json.loads(r)["label"])})
        for i, r in enumerate(rows)
    ]


def earlier_run(*files, resolved=None):
    """An output_dir holding an earlier run's files (checkpoint dirs get a trainer state)."""

    def setup(ctx):
        ctx.out.mkdir(parents=True)
        for name in files:
            if name.startswith("checkpoint-"):
                (ctx.out / name).mkdir()
                (ctx.out / name / "trainer_state.json").write_text('{"global_step": 2}')
                (ctx.out / name / "model.safetensors").write_text("weights")
            else:
                (ctx.out / name).write_text(f"earlier {name}\n")
        if resolved is not None:  # the earlier run's settings: this recipe file's, with `resolved` changed
            earlier = yaml.safe_load(
                Path(write_recipe(ctx.tmp_path, ctx.tiny_dirs, "earlier", **ctx.values)).read_text()
            )
            (ctx.out / "resolved_config.yaml").write_text(yaml.safe_dump({**earlier, **resolved}))

    return setup


def output_under_a_file(ctx):
    (ctx.tmp_path / "a-file").write_text("not a directory\n")
    ctx.values["output_dir"] = str(ctx.tmp_path / "a-file" / "out")


def encoder_model(ctx):
    from transformers import DistilBertConfig

    directory = ctx.tmp_path / "encoder"
    DistilBertConfig(vocab_size=400, dim=32, n_layers=1, n_heads=2, hidden_dim=64).save_pretrained(directory)
    for name in Path(ctx.tiny_dirs["student"]).glob("tokenizer*"):
        (directory / name.name).write_bytes(name.read_bytes())
    ctx.values["model_name_or_path"] = str(directory)


def teacher_with_other_vocabulary(ctx):
    """A teacher whose config has more logits than the student's (its tokenizer and config are all that
    validation reads: no weights are needed)."""
    directory = ctx.tmp_path / "wide-teacher"
    directory.mkdir()
    for name in Path(ctx.tiny_dirs["teacher"]).iterdir():
        if name.suffix != ".safetensors":
            (directory / name.name).write_bytes(name.read_bytes())
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "vocab_size": config["vocab_size"] + 100}))
    ctx.values["teacher_model_name_or_path"] = str(directory)


def without_bitsandbytes(ctx):
    find_spec = importlib.util.find_spec
    ctx.monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a)
    )


def recipe_without_header(ctx):
    path = ctx.tmp_path / "no-header.yaml"
    path.write_text(yaml.safe_dump(ctx.values))
    ctx.config = str(path)


def damaged_checkpoint(damage):
    """An unfinished run whose only checkpoint (with its manifest) was then damaged."""

    def setup(ctx):
        from distill_trainer.training.checkpoints import write_manifest

        checkpoint = ctx.out / "checkpoint-2"
        checkpoint.mkdir(parents=True)
        (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
        (checkpoint / "model.safetensors").write_bytes(b"w" * 64)
        (checkpoint / "optimizer.pt").write_bytes(b"o" * 64)
        write_manifest(checkpoint)
        if damage == "weights deleted":
            (checkpoint / "model.safetensors").unlink()
        else:
            (checkpoint / "optimizer.pt").write_bytes(b"o" * 10)

    return setup


def with_line(task, split, number, line: bytes):
    """A copy of the test data with raw bytes as line `number` of one file."""

    def setup(ctx):
        data_copy(ctx, task, split, lambda rows: rows)
        path = Path(ctx.values["data_dir"]) / task / f"{split}.jsonl"
        lines = path.read_bytes().splitlines()
        path.write_bytes(b"\n".join(lines[: number - 1] + [line] + lines[number - 1 :]) + b"\n")

    return setup


def change_field(name, value, which=lambda i: True):
    return lambda rows: [
        json.dumps({**json.loads(r), name: value(json.loads(r)) if callable(value) else value})
        if which(i)
        else r
        for i, r in enumerate(rows)
    ]


LONG = "the cat sat on the mat and " * 700  # about 19,000 characters: far more than 1,024 positions


def output_dir_is(path_of):
    """output_dir set to `path_of(ctx)`; the folder watched is tmp_path (nothing may appear there)."""

    def setup(ctx):
        ctx.values["output_dir"] = str(path_of(ctx))
        ctx.watch = ctx.tmp_path / "watched"
        ctx.watch.mkdir()
        ctx.monkeypatch.chdir(ctx.watch)  # output_dir "" would be the current directory

    return setup


def home_dir(ctx):
    home = ctx.tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine\n")
    ctx.monkeypatch.setenv("HOME", str(home))
    ctx.values["output_dir"] = str(home)


def output_dir_in_use(ctx):
    from distill_trainer.run.output_dir import OutputLock

    ctx.keep.append(OutputLock(ctx.out).acquire())  # the first run, still running


def file_at(name, text):
    def setup(ctx):
        (ctx.tmp_path / name).write_text(text)
        ctx.watch = ctx.tmp_path / name

    return setup


def folder_without_model(ctx):
    (ctx.tmp_path / "not-a-model").mkdir()
    (ctx.tmp_path / "not-a-model" / "README.md").write_text("notes\n")


def adapter_without_base(ctx):
    (ctx.tmp_path / "adapter").mkdir()
    (ctx.tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps({"base_model_name_or_path": str(ctx.tmp_path / "deleted-base"), "peft_type": "LORA"})
    )


def evaluation_file(change):
    def setup(ctx):
        rows = (Path(DATA) / "hans" / "validation.jsonl").read_text().splitlines()
        (ctx.tmp_path / "eval.jsonl").write_text("\n".join(change(rows)) + "\n")

    return setup


def evaluate(*extra, data="{tmp}/eval.jsonl", model="{student}"):
    return (
        "evaluate",
        "--model",
        model,
        "--task",
        "hans",
        "--data",
        data,
        "--output_dir",
        "{tmp}/out",
        "--no_progress",
        *extra,
    )


TEACHER = {"teacher_model_name_or_path": "{teacher}"}
DIVERGES = {
    **TEACHER,
    "optim": "sgd",
    "learning_rate": 1e20,
    "max_steps": 4,
    "save_strategy": "steps",
    "save_steps": 1,
}

CASES = [
    # ---- recipe files: keys, syntax, types, ranges
    Case(
        "misspelled-key",
        "icl_eval",
        {"temprature": 2.0},
        problem="unknown key 'temprature' in recipe file",
        fix="did you mean 'temperature'",
    ),
    Case(
        "invalid-yaml",
        "icl_eval",
        setup=raw_recipe("k: [2\n"),
        problem="is not valid YAML",
        fix="fix the syntax",
    ),
    Case(
        "yaml-not-a-mapping",
        "icl_eval",
        setup=raw_recipe("- k\n- 2\n"),
        problem="must be a mapping",
        fix="of key: value",
    ),
    Case(
        "int-given-a-float",
        "icl_eval",
        {"k": 2.5},
        problem=r"k: invalid int value: '2\.5'",
        fix="fix the value",
    ),
    Case(
        "bool-given-a-word",
        "icl_eval",
        {"resample_demonstrations": "sometimes"},
        problem="resample_demonstrations: Truthy value expected",
        fix="fix the value",
    ),
    Case(
        "list-for-one-value",
        "pattern_finetune",
        {"learning_rate": [0.1, 0.2]},
        problem="extra values",
        fix="takes one value",
    ),
    Case(
        "alpha-out-of-range",
        "context_distill",
        {**TEACHER, "alpha": 1.5},
        problem=r"alpha must be in \[0, 1\]",
        fix="1 = distillation only",
    ),
    Case(
        "unknown-loss",
        "context_distill",
        {**TEACHER, "loss": "kl"},
        problem="loss='kl' is not valid",
        fix="choose one of: forward_kl",
    ),
    Case(
        "unknown-scheduler",
        "pattern_finetune",
        {"lr_scheduler_type": "cosinus"},
        problem="lr_scheduler_type: invalid choice: 'cosinus'",
        fix="fix the value",
    ),
    Case(
        "negative-learning-rate",
        "pattern_finetune",
        {"learning_rate": -0.001},
        problem="learning_rate must be > 0",
        fix="set a positive value",
    ),
    Case(
        "learning-rate-that-diverges",
        "pattern_finetune",
        {"learning_rate": 5},
        problem="diverges at once",
        fix="use a value like 1e-5",
    ),
    Case(
        "zero-epochs",
        "pattern_finetune",
        {"max_steps": -1, "num_train_epochs": 0},
        problem="trains nothing",
        fix="set num_train_epochs > 0 or max_steps >= 1",
    ),
    # ---- recipe files: tasks, patterns, label words, demonstrations, lengths
    Case(
        "unknown-task", "icl_eval", {"task": "snli"}, problem="unknown task 'snli'", fix="choose one of: mnli"
    ),
    Case(
        "unknown-pattern",
        "icl_eval",
        {"pattern": "minimall"},
        problem="unknown pattern 'minimall'",
        fix="choose one of",
    ),
    Case(
        "template-without-hypothesis",
        "icl_eval",
        {"pattern": "custom", "template": "{premise} ?", "label_words": [" Yes", " No"]},
        problem=r"lacks \{hypothesis\}",
        fix=r"must contain both \{premise\} and \{hypothesis\}",
    ),
    Case(
        "label-words-collide",
        "icl_eval",
        {"label_words": [" Yes", " Yes question"]},
        problem="collide after tokenization",
        fix="choose words whose first tokens differ",
    ),
    Case(
        "one-label-word-for-two-labels",
        "icl_eval",
        {"label_words": [" Yes"]},
        problem="label_words has 1 words",
        fix="give one word per label",
    ),
    Case(
        "eval-task-with-other-labels",
        "icl_eval",
        {"task": "mnli_3way", "eval_tasks": ["hans"]},
        problem="eval task 'hans' has 2 labels",
        fix="evaluate on tasks with the same labels",
    ),
    Case(
        "more-demonstrations-than-the-pool",
        "icl_eval",
        {"k": 40},
        problem="need 20 of label 0 but only 12 are available",
        fix="ask for fewer or use a larger pool",
    ),
    Case(
        "prompt-longer-than-max-length",
        "icl_eval",
        {"max_length": 90},
        problem=r"the prompt is \d+ tokens \(2 demonstrations.* max_length=90",
        fix="lower k, raise max_length, or set drop_demonstrations_to_fit",
    ),
    Case(
        "query-longer-than-max-length",
        "icl_eval",
        {"max_length": 20},
        problem=r"a query with its answer is \d+ tokens, more than max_length=20",
        fix="raise max_length",
    ),
    # ---- recipe files: what each recipe reads
    Case(
        "teacher-in-pattern-finetune",
        "pattern_finetune",
        {"teacher_model_name_or_path": "t"},
        problem="reads no teacher",
        fix="remove teacher_model_name_or_path",
    ),
    Case(
        "alpha-in-pattern-finetune",
        "pattern_finetune",
        {"alpha": 0.5},
        problem="uses alpha=0",
        fix="remove alpha",
    ),
    Case(
        "distillation-without-teacher",
        "context_distill",
        problem="needs teacher_model_name_or_path",
        fix="run recipes/pattern_finetune.py",
    ),
    Case(
        "self-teacher-without-lora",
        "context_distill",
        {"teacher_model_name_or_path": "self"},
        problem="teacher 'self' is the student's base model",
        fix="needs student_mode: lora",
    ),
    Case(
        "distillation-with-alpha-0",
        "context_distill",
        {**TEACHER, "alpha": 0},
        problem="never reads the teacher",
        fix="set alpha > 0",
    ),
    Case(
        "teacher-setting-in-icl",
        "icl_eval",
        {"teacher_quantization": "8bit"},
        problem="teacher_quantization would be ignored",
        fix="set model_name_or_path to it",
    ),
    Case(
        "quantized-self-teacher",
        "context_distill",
        {"teacher_model_name_or_path": "self", "student_mode": "lora", "teacher_quantization": "8bit"},
        problem="cannot apply to teacher 'self'",
        fix="remove teacher_quantization",
    ),
    Case(
        "quantization-without-bitsandbytes",
        "context_distill",
        {**TEACHER, "teacher_quantization": "8bit"},
        setup=without_bitsandbytes,
        problem="needs bitsandbytes, which is not installed",
        fix=r"pip install 'distill-trainer\[quant\]'",
    ),
    # ---- output directory and resuming
    Case(
        "finished-run-in-output-dir",
        "pattern_finetune",
        setup=earlier_run("metrics.json", "model.safetensors"),
        problem="already holds a run's results",
        fix="set overwrite_output_dir: true",
        leaves="untouched",
    ),
    Case(
        "unfinished-run-in-output-dir",
        "pattern_finetune",
        setup=earlier_run("checkpoint-2"),
        problem="holds checkpoints of an unfinished run",
        fix="set resume_from_checkpoint: true",
        leaves="untouched",
    ),
    Case(
        "resume-without-checkpoint",
        "pattern_finetune",
        {"resume_from_checkpoint": True},
        problem="holds no complete checkpoint",
        fix="remove resume_from_checkpoint",
    ),
    Case(
        "resume-from-a-missing-path",
        "pattern_finetune",
        {"resume_from_checkpoint": "no/such/checkpoint-3"},
        problem="is not a complete checkpoint",
        fix="give one, or true",
    ),
    Case(
        "resume-and-overwrite",
        "pattern_finetune",
        {"resume_from_checkpoint": True, "overwrite_output_dir": True},
        problem="contradict|starts it over",
        fix="set only one of them",
    ),
    Case(
        "resume-with-other-settings",
        "pattern_finetune",
        {"resume_from_checkpoint": True},
        setup=earlier_run("checkpoint-2", resolved={"learning_rate": 0.5}),
        problem=r"trained with other settings \(learning_rate: 0\.5 -> 0\.001\)",
        fix="resume with its own settings",
        leaves="untouched",
    ),
    Case(
        "resume-in-icl",
        "icl_eval",
        {"resume_from_checkpoint": True},
        problem="trains nothing",
        fix="remove resume_from_checkpoint",
    ),
    Case(
        "output-dir-under-a-file",
        "icl_eval",
        setup=output_under_a_file,
        problem="is a file, not a directory",
        fix="choose another output_dir",
    ),
    # ---- data files
    Case(
        "missing-data-dir",
        "icl_eval",
        {"data_dir": "no/such/dir"},
        problem="data_dir no/such/dir does not exist",
        fix="give a directory holding mnli/ and hans/",
    ),
    Case(
        "data-file-missing",
        "icl_eval",
        setup=data_setup("hans", "validation", lambda rows: None),
        problem=r"data file .*hans/validation\.jsonl does not exist",
        fix="a local data dir holds",
    ),
    Case(
        "data-file-missing-a-column",
        "icl_eval",
        setup=data_setup(
            "hans",
            "validation",
            lambda rows: [
                json.dumps({k: v for k, v in json.loads(r).items() if k != "heuristic"}) for r in rows
            ],
        ),
        problem=r"lacks column\(s\) \['heuristic'\]",
        fix="task hans needs",
    ),
    Case(
        "data-file-broken-line",
        "icl_eval",
        setup=data_setup("mnli", "train", lambda rows: rows[:2] + ['{"premise": "cut off'] + rows[2:]),
        problem="line 3 is not valid JSON",
        fix="one JSON object per line",
    ),
    Case(
        "labels-as-words",
        "icl_eval",
        setup=data_setup(
            "mnli", "train", lambda rows: relabel(rows, lambda i, label: ["yes", "maybe", "no"][label])
        ),
        problem="has no rows with the labels of task mnli",
        fix=r"integer ids \[0, 2\]",
    ),
    Case(
        "labels-of-mixed-types",
        "icl_eval",
        setup=data_setup(
            "mnli", "train", lambda rows: relabel(rows, lambda i, label: "no" if i == 5 else label)
        ),
        problem="mixes value types in a column",
        fix="label an integer id",
    ),
    # ---- data rows the task cannot use (issue 12, class 1)
    Case(
        "mnli-file-already-binary",
        "icl_eval",
        setup=data_setup("mnli", "train", lambda rows: relabel(rows, lambda i, label: min(label, 1))),
        problem=r"has no rows of task label 1 \(contradiction, source id 2\)",
        fix="write its labels with the Hub",
    ),
    Case(
        "hans-row-with-label-2",
        "icl_eval",
        setup=data_setup(
            "hans", "validation", lambda rows: relabel(rows, lambda i, label: 2 if i == 3 else label)
        ),
        problem=r"hans/validation\.jsonl line 4: label 2 is not a label id of hans "
        r"\(0 entailment, 1 non-entailment",
        fix="set drop_invalid_rows: true",
    ),
    Case(
        "mnli-row-with-label-7",
        "icl_eval",
        setup=data_setup(
            "mnli", "validation_matched", lambda rows: relabel(rows, lambda i, lab: 7 if i == 0 else lab)
        ),
        problem=r"validation_matched\.jsonl line 1: label 7 is not a label id of mnli",
        fix="fix or remove the row",
    ),
    Case(
        "empty-premise",
        "pattern_finetune",
        setup=data_setup("mnli", "train", change_field("premise", "  ", lambda i: i == 1)),
        problem=r"train\.jsonl line 2: premise is empty",
        fix="drop_invalid_rows: true to drop such rows",
    ),
    Case(
        "null-hypothesis",
        "pattern_finetune",
        setup=data_setup("mnli", "train", change_field("hypothesis", None, lambda i: i == 4)),
        problem=r"train\.jsonl line 5: hypothesis is missing \(null\)",
        fix="counted in metrics.json",
    ),
    Case(
        "empty-hypothesis-in-an-eval-file",
        "icl_eval",
        setup=data_setup("hans", "validation", change_field("hypothesis", "", lambda i: i == 9)),
        problem=r"hans/validation\.jsonl line 10: hypothesis is empty",
        fix="fix or remove the row, or set",
    ),
    Case(
        "bytes-that-are-not-utf8",
        "icl_eval",
        setup=with_line("mnli", "train", 3, b'{"premise": "caf\xe9", "hypothesis": "x", "label": 0}'),
        problem=r"train\.jsonl line 3 is not UTF-8 text \(byte 0xe9 at column 17\)",
        fix="save the file as UTF-8",
    ),
    Case(
        "repeated-row",
        "pattern_finetune",
        setup=data_setup("mnli", "train", lambda rows: rows + rows[:1]),
        problem=r"train\.jsonl line 37: repeats line 1 \(same premise and hypothesis\)",
        fix="drop such rows",
    ),
    # ---- rows longer than the model's positions (class 2)
    Case(
        "long-premise-in-training-rows",
        "pattern_finetune",
        setup=data_setup("mnli", "train", change_field("premise", lambda row: LONG + row["premise"])),
        problem=r"training row \d+ is \d+ tokens with its answer, more than the student's 1024 positions",
        fix="shorten or remove that row",
    ),
    Case(
        "long-premise-in-evaluation-rows",
        "pattern_finetune",
        setup=data_setup("mnli", "validation_matched", change_field("premise", LONG, lambda i: i == 5)),
        problem=r"mnli evaluation row \d+ is \d+ tokens .* student's 1024 positions "
        r"\(premise starts 'the cat",
        fix="queries are never truncated",
    ),
    Case(
        "long-premise-zero-shot",
        "icl_eval",
        {"k": 0},
        setup=data_setup("hans", "validation", change_field("premise", LONG, lambda i: i == 7)),
        problem=r"hans evaluation row \d+ is \d+ tokens with its answer, more than the model's "
        r"1024 positions",
        fix="shorten or remove",
    ),
    # ---- values that parse but are wrong (class 3)
    Case(
        "label-words-read-as-booleans",
        "icl_eval",
        {"label_words": [True, False]},
        problem=r"label_words: YAML read an unquoted yes/no.*\(\[True, False\]\)",
        fix=r"quote the text, e\.g\.",
    ),
    Case(
        "pattern-read-as-a-boolean",
        "icl_eval",
        {"pattern": False},
        problem=r"pattern: YAML read .*\(False\)",
        fix="pattern: 'no'",
    ),
    Case(
        "negative-seed",
        "pattern_finetune",
        {"seed": -1},
        problem="seed must be >= 0, got -1",
        fix="fix it in the recipe file",
    ),
    Case(
        "negative-data-seed",
        "pattern_finetune",
        {"data_seed": -3},
        problem="data_seed must be >= 0, got -3",
        fix="or on the command line",
    ),
    Case(
        "eval-batch-size-0",
        "icl_eval",
        {"per_device_eval_batch_size": 0},
        problem="per_device_eval_batch_size must be >= 1, got 0",
        fix="fix it in the recipe",
    ),
    Case(
        "negative-demonstration-seed",
        "icl_eval",
        {"demonstration_seed": -1},
        problem="demonstration_seed must be >= 0",
        fix="got -1",
    ),
    Case(
        "lora-alpha-0",
        "pattern_finetune",
        {"student_mode": "lora", "lora_alpha": 0},
        problem="lora_alpha must be > 0",
        fix="lora_alpha / lora_r",
    ),
    # ---- unsafe output folders (class 4)
    Case(
        "output-dir-empty",
        "icl_eval",
        setup=output_dir_is(lambda ctx: ""),
        problem="output_dir is empty, which means the current directory",
        fix="a folder of its own",
    ),
    Case(
        "output-dir-root",
        "pattern_finetune",
        setup=output_dir_is(lambda ctx: "/"),
        problem="output_dir / is the file system root",
        fix="such as results/my-run",
    ),
    Case(
        "output-dir-home",
        "icl_eval",
        setup=home_dir,
        problem="is your home directory, which holds other files",
        fix="set output_dir to a folder",
        leaves="untouched",
    ),
    Case(
        "output-dir-in-the-project",
        "pattern_finetune",
        setup=output_dir_is(lambda ctx: ROOT / "recipes"),
        problem="is inside the project's own folders",
        fix="set output_dir to a folder of its own",
    ),
    Case(
        "output-dir-in-use",
        "pattern_finetune",
        setup=output_dir_in_use,
        problem=r"is in use by another run \(pid \d+ on .*started",
        fix="wait for it to finish",
        leaves="untouched",
    ),
    # ---- damaged checkpoints (class 5)
    Case(
        "resume-from-a-checkpoint-without-weights",
        "pattern_finetune",
        {"resume_from_checkpoint": "{out}/checkpoint-2"},
        setup=damaged_checkpoint("weights deleted"),
        problem="checkpoint-2 is not a complete checkpoint: model.safetensors is missing",
        fix="give an earlier checkpoint",
        leaves="untouched",
    ),
    Case(
        "resume-with-only-a-truncated-checkpoint",
        "pattern_finetune",
        {"resume_from_checkpoint": True},
        setup=damaged_checkpoint("optimizer truncated"),
        problem=r"no complete checkpoint-N \(checkpoint-2: optimizer\.pt is 10 bytes, 64 when saved",
        fix="remove resume_from_checkpoint to start afresh",
        leaves="untouched",
    ),
    # ---- distill-trainer evaluate (class 7)
    Case(
        "evaluate-a-folder-that-is-no-model",
        "cli",
        argv=evaluate(model="{tmp}/not-a-model", data="{hans}"),
        setup=folder_without_model,
        problem="is a folder without config.json or adapter_config.json",
        fix="give a folder written by a recipe",
    ),
    Case(
        "evaluate-an-adapter-whose-base-is-gone",
        "cli",
        argv=evaluate(model="{tmp}/adapter", data="{hans}"),
        setup=adapter_without_base,
        problem=r"cannot load the config of LoRA adapter .*base model .*deleted-base",
        fix="give a local model directory",
    ),
    Case(
        "evaluate-zero-examples",
        "cli",
        argv=evaluate("--num_examples", "0", data="{hans}"),
        problem="argument --num_examples: must be >= 1, got 0",
        fix="see distill-trainer evaluate --help",
    ),
    Case(
        "evaluate-negative-batch-size",
        "cli",
        argv=evaluate("--batch_size", "-2", data="{hans}"),
        problem="argument --batch_size: must be >= 1, got -2",
        fix="evaluate --help",
    ),
    Case(
        "evaluate-unknown-dtype",
        "cli",
        argv=evaluate("--dtype", "float8", data="{hans}"),
        problem="argument --dtype: invalid choice: 'float8'",
        fix="--help",
    ),
    Case(
        "evaluate-output-dir-is-a-file",
        "cli",
        argv=(
            "evaluate",
            "--model",
            "{student}",
            "--task",
            "hans",
            "--data",
            "{hans}",
            "--output_dir",
            "{tmp}/a-file",
        ),
        setup=file_at("a-file", "mine\n"),
        problem=r"a-file/? is a file, not a directory|a-file is a file",
        fix="choose another output_dir",
    ),
    Case(
        "evaluate-a-row-too-long",
        "cli",
        argv=evaluate(),
        setup=evaluation_file(change_field("premise", LONG, lambda i: i == 2)),
        problem=r"eval\.jsonl row 3 is \d+ tokens with its answer, more than the model's 1024 positions",
        fix="shorten or remove that row",
    ),
    Case(
        "evaluate-a-file-with-label-2",
        "cli",
        argv=evaluate(),
        setup=evaluation_file(lambda rows: relabel(rows, lambda i, label: 2 if i == 0 else label)),
        problem=r"eval\.jsonl line 1: label 2 is not a label id of hans",
        fix="or remove the row",
    ),
    # ---- models
    Case(
        "no-model",
        "icl_eval",
        {"model_name_or_path": None},
        problem="no model given",
        fix="set model_name_or_path",
    ),
    Case(
        "student-path-missing",
        "pattern_finetune",
        {"model_name_or_path": "no/such/model"},
        problem="cannot load the tokenizer of student 'no/such/model'",
        fix="give a local model directory",
    ),
    Case(
        "unknown-embedded-alias",
        "icl_eval",
        {"model_name_or_path": "embedded:nope"},
        problem="unknown embedded model 'embedded:nope'",
        fix="known: embedded:smollm2-135m",
    ),
    Case(
        "not-a-causal-lm",
        "pattern_finetune",
        setup=encoder_model,
        problem="is a distilbert model, not a causal language",
        fix="give a decoder-only LM",
    ),
    Case(
        "lora-target-absent",
        "pattern_finetune",
        {"student_mode": "lora", "lora_target_modules": ["c_attn"]},
        problem=r"lora_target_modules \['c_attn'\] are not modules of this model",
        fix="set lora_target_modules to some of its linear layers: .*q_proj",
    ),
    Case(
        "teacher-with-another-vocabulary",
        "context_distill",
        setup=teacher_with_other_vocabulary,
        problem=r"vocabularies differ \(teacher 5\d\d logits",
        fix="set distill_vocab: label_words",
    ),
    # ---- training
    Case(
        "loss-becomes-nan",
        "context_distill",
        DIVERGES,
        problem="the loss is nan at step 2",
        fix="last good checkpoint: .*checkpoint-1.*Lower the learning rate",
        leaves="checkpoint",
    ),
    Case(
        "loss-becomes-nan-before-a-checkpoint",
        "context_distill",
        {**DIVERGES, "save_strategy": "no"},
        problem="the loss is nan at step 2",
        fix=r"last good checkpoint: none\). Lower the learning rate",
    ),
    # ---- command lines
    Case(
        "misspelled-flag",
        "icl_eval",
        argv=("--demonstration_sed", "3"),
        problem="unknown key 'demonstration_sed' in the command line",
        fix="did you mean 'demonstration_seed'",
    ),
    Case(
        "flag-value-out-of-range",
        "pattern_finetune",
        argv=("--per_device_train_batch_size", "0"),
        problem="per_device_train_batch_size must be > 0",
        fix="set a positive value",
    ),
    Case(
        "config-flag-without-path",
        "icl_eval",
        argv=("--config",),
        problem="--config needs a path",
        fix="path to a recipe YAML",
    ),
    Case(
        "recipe-file-missing",
        "icl_eval",
        setup=lambda ctx: setattr(ctx, "config", "no/such/recipe.yaml"),
        problem="recipe file no/such/recipe.yaml does not exist",
        fix="pass --config with the path",
    ),
    Case(
        "command-without-subcommand",
        "cli",
        argv=(),
        problem="required: COMMAND",
        fix="distill-trainer --help",
    ),
    Case("unknown-subcommand", "cli", argv=("train",), problem="invalid choice: 'train'", fix="--help"),
    Case(
        "validate-without-config",
        "cli",
        argv=("validate",),
        problem="required: --config",
        fix="distill-trainer validate --help",
    ),
    Case(
        "validate-cannot-tell-the-recipe",
        "cli",
        argv=("validate", "--config", "{config}"),
        setup=recipe_without_header,
        problem="cannot tell which recipe",
        fix="pass --recipe",
    ),
    Case(
        "validate-misspelled-flag",
        "cli",
        argv=("validate", "--config", "{config}", "--recipe", "icl_eval", "--alfa", "1"),
        problem="unknown key 'alfa' in the command line",
        fix="did you mean 'alpha'",
    ),
]


def fill(value, names):
    if isinstance(value, str):
        return value.format(**names) if "{" in value and "}" in value and "{premise}" not in value else value
    if isinstance(value, (list, tuple)):
        return type(value)(fill(v, names) for v in value)
    return value


def snapshot(directory: Path):
    """Every file under `directory` with its content, or None when it does not exist."""
    if not directory.exists():
        return None
    if directory.is_file():
        return directory.read_bytes()
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None for p in directory.rglob("*")
    }


def test_the_catalogue_has_25_distinct_cases():
    assert len(CASES) >= 25 + 30 and len({case.id for case in CASES}) == len(CASES)
    assert len({(case.problem, case.fix) for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch):
    names = {
        "student": tiny_dirs["student"],
        "teacher": tiny_dirs["teacher"],
        "tmp": str(tmp_path),
        "out": str(tmp_path / "out"),
        "hans": str(Path(DATA) / "hans" / "validation.jsonl"),
    }
    values = {"output_dir": str(tmp_path / "out"), **{k: fill(v, names) for k, v in case.values.items()}}
    ctx = Context(tmp_path, tiny_dirs, values, monkeypatch)
    if case.setup is not None:
        case.setup(ctx)
    config = ctx.config or write_recipe(tmp_path, tiny_dirs, **ctx.values)
    watched = ctx.watch or (ctx.out if case.id != "output-dir-under-a-file" else tmp_path / "a-file")
    before = snapshot(watched)

    if case.recipe == "cli":
        code = cli.main([fill(a, {**names, "config": config}) for a in case.argv])
    else:
        argv = ["--config", config, *case.argv] if case.argv != ("--config",) else ["--config"]
        with pytest.raises(SystemExit) as exit_:
            run_recipe(load_recipe(case.recipe).main, argv)
        code = exit_.value.code

    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2
    assert len(errors) == 1, err[-2000:]
    assert re.search(case.problem, errors[0]), errors[0]
    assert re.search(case.fix, errors[0]), errors[0]
    assert "Traceback" not in err
    if case.leaves == "checkpoint":  # progress that can be resumed is kept, and the message names it
        assert sorted(p.name for p in ctx.out.iterdir()) == ["checkpoint-1", "resolved_config.yaml"]
    else:
        assert snapshot(watched) == before  # None: no output_dir was left behind


# ---------------------------------------------------------------- real processes


def subprocess_env():
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


def test_a_recipe_script_exits_with_status_2_and_one_line(tmp_path, tiny_dirs):
    command = [
        sys.executable,
        "recipes/icl_eval.py",
        "--config",
        write_recipe(tmp_path, tiny_dirs),
        "--pattern",
        "nope",
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown pattern 'nope'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_under_accelerate_launch_quiet_the_error_line_is_the_last_word(tmp_path, tiny_dirs):
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--quiet",
        "--config_file",
        CPU,
        "recipes/pattern_finetune.py",
        "--config",
        write_recipe(tmp_path, tiny_dirs, alpha=0.5),
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "pattern_finetune uses alpha=0" in errors[0]
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_good_recipe_passes_validate_without_loading_weights(tmp_path, tiny_dirs, capsys, monkeypatch):
    """The control for the catalogue: the same checks accept a good recipe, from tokenizers and configs
    alone."""
    from transformers import AutoModelForCausalLM

    def no_weights(*args, **kwargs):
        raise AssertionError("validate loaded model weights")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_weights)
    config = write_recipe(
        tmp_path,
        tiny_dirs,
        teacher_model_name_or_path=tiny_dirs["teacher"],
        student_mode="lora",
        lora_target_modules=["q_proj", "v_proj"],
    )
    assert cli.main(["validate", "--config", config, "--recipe", "context_distill", "--k", "3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ok: recipes/context_distill.py") and "--k 3" in out
    assert "3 fixed demonstrations" in out and "8 training queries" in out and "lora" in out
    assert not (tmp_path / "out").exists()
