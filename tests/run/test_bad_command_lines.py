"""Bad inputs, command lines (the catalogue's rules are in bad_inputs.py): `distill-trainer evaluate` and
the other subcommands; then recipe scripts run as real processes, directly and under `accelerate launch`
(`--quiet` drops accelerate's own traceback), and the whole catalogue's count.

Under `accelerate launch`, a failing recipe prints its error line and then accelerate raises its own
`CalledProcessError` traceback (exit status 1); `accelerate launch --quiet` drops that traceback. A
single-process run can also start the recipe directly (`python recipes/<name>.py`), which exits with 2.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from bad_inputs import (
    LONG,
    Case,
    adapter_without_base,
    change_field,
    check_bad_input,
    comparison_file,
    evaluate,
    evaluation_file,
    file_at,
    folder_without_model,
    recipe_without_header,
    relabel,
)
from helpers import CPU, ROOT, refuse_weight_loading, write_recipe
from test_bad_data import CASES as DATA_CASES
from test_bad_output_dirs import CASES as OUTPUT_DIR_CASES
from test_bad_recipe_files import CASES as RECIPE_FILE_CASES

from distill_trainer.run import cli

CASES = [
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
        "validate-a-comparison",
        "cli",
        argv=("validate", "--config", "{config}"),
        setup=comparison_file,
        problem="is a comparison, which runs one recipe per method",
        fix="recipes/compare.py --config .* --check_only true",
    ),
    Case(
        "validate-misspelled-flag",
        "cli",
        argv=("validate", "--config", "{config}", "--recipe", "icl_eval", "--alfa", "1"),
        problem="unknown key 'alfa' in the command line",
        fix="did you mean 'alpha'",
    ),
]


def test_the_catalogue_has_55_distinct_cases():
    catalogue = [*RECIPE_FILE_CASES, *DATA_CASES, *OUTPUT_DIR_CASES, *CASES]
    assert len(catalogue) >= 25 + 30 and len({case.id for case in catalogue}) == len(catalogue)
    assert len({(case.problem, case.fix) for case in catalogue}) == len(catalogue)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch):
    check_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch)


# ---------------------------------------------------------------- real processes


def subprocess_env():
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }


@pytest.mark.integration
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


@pytest.mark.integration
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
    refuse_weight_loading(monkeypatch, "validate loaded model weights")
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
