"""The catalogue of bad inputs, shared by its four parts (test_bad_recipe_files.py, test_bad_data.py,
test_bad_output_dirs.py, test_bad_command_lines.py): what a case is, the setups that make inputs bad, and
`check_bad_input`, which runs one case and checks its single error line.

Every case must end with exactly one `error: ...` line that names the problem and the fix, a non-zero exit
status (2), no traceback, and no partial output directory (or, where an earlier run's results were there,
those results untouched). Cases run in this process through the recipes' own entry point (`run_recipe`)
or the command's `main`.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from helpers import DATA, load_recipe, write_recipe

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


def comparison_file(ctx):
    path = ctx.tmp_path / "comparison.yaml"
    path.write_text("# python recipes/compare.py --config comparison.yaml\n" + yaml.safe_dump(ctx.values))
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


def check_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch):
    """Run `case` and check its one error line, exit status 2 and what it leaves behind."""
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
