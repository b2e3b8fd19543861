"""Ctrl-C: one line saying what was kept and the command that resumes, exit status 130, no traceback; the
command it prints continues the run to the numbers an uninterrupted run gets."""

import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
from helpers import ROOT, write_recipe
from safetensors.torch import load_file

from distill_trainer.run import cli, interrupt
from distill_trainer.run.interrupt import interruption_line, note_run

# pattern_finetune as its command line runs it; with WAIT_AT_CHECKPOINT set, it waits after saving that
# checkpoint (writing a file to say so) until Ctrl-C arrives
SCRIPT = """
import os, pathlib, signal, sys, time, importlib.util
signal.signal(signal.SIGINT, signal.default_int_handler)  # as at a terminal, even under a background job
from transformers import TrainerCallback
from distill_trainer import parse_config
from distill_trainer.run.runner import no_partial_output_dir, run_recipe

spec = importlib.util.spec_from_file_location("recipe", os.environ["RECIPE_FILE"])
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)

class WaitAfterCheckpoint(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if str(state.global_step) == os.environ.get("WAIT_AT_CHECKPOINT"):
            pathlib.Path(os.environ["SAVED_FILE"]).write_text("saved")
            while True:
                time.sleep(0.05)

def main(argv):
    configs, given = parse_config(recipe.CONFIG_TYPES, argv)
    with no_partial_output_dir(configs[-1].output_dir):
        return recipe.run_pattern_finetune(*configs, callbacks=[WaitAfterCheckpoint()], given=given)

run_recipe(main)
"""


def _env(**extra):
    return {
        **os.environ,
        # one thread: with two, these tiny models' float32 sums can round differently from one process to
        # the next, and Adam's first steps magnify that on near-zero gradients (up to 5e-5 apart in about
        # one run of five), while this test compares a resumed run with a whole one bit for bit
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "RECIPE_FILE": str(ROOT / "recipes" / "pattern_finetune.py"),
        **extra,
    }


@pytest.mark.integration
def test_ctrl_c_prints_one_line_with_the_resume_command_and_exits_130(tmp_path, tiny_dirs):
    script = tmp_path / "finetune.py"
    script.write_text(SCRIPT)
    config = write_recipe(tmp_path, tiny_dirs, save_strategy="steps", save_steps=1, max_steps=3)
    saved = tmp_path / "saved"
    run = subprocess.Popen(
        [sys.executable, str(script), "--config", config],
        cwd=ROOT,
        env=_env(WAIT_AT_CHECKPOINT="1", SAVED_FILE=str(saved)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not saved.exists():
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-3000:]
            time.sleep(0.1)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("interrupted:")]
    assert len(lines) == 1, err[-3000:]
    out = tmp_path / "out"
    assert f"kept {out} (at checkpoint-1)" in lines[0]
    command = lines[0].split("resume with: ", 1)[1]
    assert command == shlex.join(
        ["python", str(script), "--config", config, "--resume_from_checkpoint", "true"]
    )
    # the printed command continues the run, from checkpoint-1 ...
    resumed = subprocess.run(
        [sys.executable, *shlex.split(command)[1:]], cwd=ROOT, env=_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 3
    # ... to the weights a run never interrupted trains
    whole = write_recipe(
        tmp_path,
        tiny_dirs,
        "whole",
        output_dir=str(tmp_path / "whole"),
        save_strategy="steps",
        save_steps=1,
        max_steps=3,
    )
    assert (
        subprocess.run(
            [sys.executable, str(script), "--config", whole], cwd=ROOT, env=_env(), capture_output=True
        ).returncode
        == 0
    )
    got, want = load_file(out / "model.safetensors"), load_file(tmp_path / "whole" / "model.safetensors")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in got)


def test_a_comparison_resumes_under_its_run_name_and_names_what_it_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(interrupt, "_runs", [])  # no run noted by an earlier test
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    run_dir = tmp_path / "results" / "compare-20260101-120000"
    (run_dir / "icl_teacher").mkdir(parents=True)
    (run_dir / "icl_teacher" / "method.yaml").write_text("k: 2\n")
    (run_dir / "icl_teacher" / "metrics.json").write_text("{}\n")
    (run_dir / "cd_lora").mkdir()
    (run_dir / "cd_lora" / "method.yaml").write_text("k: 2\n")
    note_run(run_dir, ["--run_name", run_dir.name])
    note_run(run_dir / "cd_lora")  # the method it was running: the comparison's folder is described
    line = interruption_line("python recipes/compare.py", ["--config", "c.yaml"])
    resume = f"resume with: python recipes/compare.py --config c.yaml --run_name {run_dir.name}"
    assert line == f"interrupted: kept {run_dir} (icl_teacher finished); {resume}"  # no cache written yet
    # once the run has written to a cache, the line says its complete entries are kept
    (tmp_path / "cache" / "evaluations").mkdir(parents=True)
    (tmp_path / "cache" / "evaluations" / "evaluation-1.json").write_text("{}")
    line = interruption_line("python recipes/compare.py", ["--config", "c.yaml"])
    assert line == (
        f"interrupted: kept {run_dir} (icl_teacher finished) and the complete entries it wrote to the "
        f"evaluation cache; {resume}"
    )


def test_the_command_line_tool_exits_130_with_one_line(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))

    def interrupted(args, overrides):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_evaluate", interrupted)
    with pytest.raises(SystemExit) as stop:
        cli.main(["evaluate", "--model", "m", "--data", "d.jsonl", "--output_dir", "o"])
    assert stop.value.code == 130
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "interrupted: nothing was written yet; rerun with: distill-trainer evaluate --model m "
        "--data d.jsonl --output_dir o"
    ]


def test_a_caller_that_goes_on_after_a_handled_ctrl_c_can_clear_it(capsys):
    from distill_trainer.run import interrupt

    with pytest.raises(SystemExit) as stopped:
        with interrupt.interruptible(["--config", "x.yaml"], program="python recipes/x.py"):
            raise KeyboardInterrupt
    assert stopped.value.code == interrupt.EXIT_STATUS and interrupt.stopped_by_ctrl_c()
    assert "python recipes/x.py --config x.yaml" in capsys.readouterr().err
    interrupt.clear_ctrl_c()
    assert not interrupt.stopped_by_ctrl_c()
