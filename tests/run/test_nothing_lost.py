"""Nothing lost silently: dropped rows are counted, a damaged checkpoint is passed over, two runs never
share an output folder, and every recipe and command answers --help. (The one-line errors are catalogued
in run/test_bad_*.py; the teacher output cache's damage tests are in teacher/test_output_cache.py.)"""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bad_inputs import change_field, data_copy, relabel
from test_recipes import ROOT, load_recipe, write_recipe
from transformers import TrainerCallback

from distill_trainer import parse_config
from distill_trainer.run import cli
from distill_trainer.run.runner import run_recipe


class _Values:
    def __init__(self, tmp_path):
        self.tmp_path, self.values = tmp_path, {}


@pytest.mark.integration
def test_dropped_rows_are_printed_and_written_into_metrics(tmp_path, tiny_dirs, capsys):
    ctx = _Values(tmp_path)
    data_copy(ctx, "hans", "validation", lambda rows: relabel(rows, lambda i, label: 2 if i < 2 else label))
    train = Path(ctx.values["data_dir"]) / "mnli" / "train.jsonl"
    rows = train.read_text().splitlines()
    train.write_text("\n".join(change_field("premise", "", lambda i: i == 0)(rows) + rows[1:2]) + "\n")
    config = write_recipe(tmp_path, tiny_dirs, data_dir=ctx.values["data_dir"], drop_invalid_rows=True)
    metrics = load_recipe("icl_eval").main(["--config", config])
    data = {
        Path(where).parent.name + "/" + Path(where).name: report for where, report in metrics["data"].items()
    }
    assert data["hans/validation.jsonl"]["dropped"] == {"label 2 is not a label id of hans": 2}
    assert data["hans/validation.jsonl"]["kept"] == 58
    train_report = data["mnli/train.jsonl"]
    assert train_report["read"] == 37 and train_report["dropped"]["premise is empty"] == 1
    assert train_report["dropped"]["repeated rows"] == 1
    assert (
        train_report["dropped"]["neutral (label 1, not in task mnli)"] >= 11
    )  # MNLI's neutral rows, by design
    assert train_report["kept"] + sum(train_report["dropped"].values()) == 37
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["data"] == metrics["data"]
    err = capsys.readouterr().err
    assert "hans/validation.jsonl: 60 rows read, 58 kept; dropped: 2 label 2 is not a label id of hans" in err


class StepRecorder(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


@pytest.mark.integration
def test_a_damaged_checkpoint_is_passed_over_for_the_previous_one(tmp_path, tiny_dirs, caplog):
    recipe = load_recipe("pattern_finetune")
    config = write_recipe(tmp_path, tiny_dirs, save_strategy="steps", save_steps=1, max_steps=2)
    configs, given = parse_config(recipe.CONFIG_TYPES, ["--config", config])
    recipe.run_pattern_finetune(*configs, given=given)
    out = tmp_path / "out"
    assert (out / "checkpoint-2" / "checkpoint_manifest.json").is_file()
    optimizer = out / "checkpoint-2" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[:100])  # a disk that filled up while it was copied
    caplog.set_level(logging.WARNING, logger="distill_trainer")
    recorder = StepRecorder()
    configs, given = parse_config(
        recipe.CONFIG_TYPES, ["--config", config, "--resume_from_checkpoint", "true"]
    )
    metrics = recipe.run_pattern_finetune(*configs, callbacks=[recorder], given=given)
    assert recorder.steps == [2]  # resumed from checkpoint-1, not from scratch and not from the damaged one
    warnings = [r.getMessage() for r in caplog.records if "skipping checkpoint" in r.getMessage()]
    assert (
        len(warnings) == 1
        and str(out / "checkpoint-2") in warnings[0]
        and "optimizer.pt is 100 bytes" in warnings[0]
    )
    assert metrics["train"]["global_step"] == 2
    assert (out / "checkpoint-2" / "optimizer.pt").stat().st_size > 100  # saved again, whole


FIRST_RUN = """
import pathlib, sys, time
import importlib.util
from transformers import TrainerCallback
from distill_trainer import parse_config
from distill_trainer.run.runner import no_partial_output_dir, run_recipe

spec = importlib.util.spec_from_file_location("recipe", "recipes/pattern_finetune.py")
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)
config, started, go = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])

class WaitForTheSecondRun(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        started.write_text("training")
        while not go.exists():
            time.sleep(0.1)

def main(argv):
    configs, given = parse_config(recipe.CONFIG_TYPES, argv)
    with no_partial_output_dir(configs[-1].output_dir):
        return recipe.run_pattern_finetune(*configs, callbacks=[WaitForTheSecondRun()], given=given)

run_recipe(main, ["--config", config])
"""


@pytest.mark.integration
def test_a_second_run_into_the_same_folder_fails_at_once_and_the_first_finishes(tmp_path, tiny_dirs, capsys):
    config = write_recipe(tmp_path, tiny_dirs)
    started, go = tmp_path / "started", tmp_path / "go"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    first = subprocess.Popen(
        [sys.executable, "-c", FIRST_RUN, config, str(started), str(go)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not started.exists():
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.1)
        before = time.monotonic()
        with pytest.raises(SystemExit) as exit_:
            run_recipe(load_recipe("pattern_finetune").main, ["--config", config])
        assert exit_.value.code == 2 and time.monotonic() - before < 10
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"is in use by another run (pid {first.pid} " in errors[0], errors
    finally:
        go.write_text("go")
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 and (tmp_path / "out" / "model.safetensors").is_file()
    assert not (tmp_path / "out" / ".run.lock").exists()  # released when the first run ended


@pytest.mark.parametrize(
    "command",
    [
        ("recipe", "icl_eval"),
        ("recipe", "pattern_finetune"),
        ("recipe", "context_distill"),
        ("cli",),
        ("cli", "validate"),
        ("cli", "evaluate"),
    ],
)
def test_help_prints_help_and_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        if command[0] == "recipe":
            load_recipe(command[1]).main(["--help"])
        else:
            cli.main([*command[1:], "--help"])
    assert exit_.value.code == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("usage:") and "error:" not in captured.err
