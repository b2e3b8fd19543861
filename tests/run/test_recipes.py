"""The three recipes end to end on tiny models: through `accelerate launch` (one subprocess each, 2 steps),
in process for variants. The bad inputs are catalogued in run/test_bad_*.py."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CPU, ROOT, load_recipe, write_recipe

from distill_trainer import parse_config
from distill_trainer.errors import UsageError


def launch(recipe, config, *extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--config_file",
        CPU,
        "--num_cpu_threads_per_process",
        "2",
        f"recipes/{recipe}.py",
        "--config",
        config,
        *extra,
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_outputs(output_dir, n_tasks=2):
    output_dir = Path(output_dir)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"mnli", "hans"}
    for task, task_metrics in metrics["eval"].items():
        lines = (output_dir / f"predictions_{task}.jsonl").read_text().splitlines()
        assert len(lines) == task_metrics["n"] > 0
        records = [json.loads(line) for line in lines]
        assert task_metrics["accuracy"] == sum(r["prediction"] == r["label"] for r in records) / len(records)
    assert set(metrics["eval"]["hans"]["per_heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}
    return metrics


def check_resolved_config(recipe, output_dir, **expected):
    """The resolved config loads back into the recipe's dataclasses and holds the run's settings."""
    module = load_recipe(recipe)
    parsed, _ = parse_config(
        module.CONFIG_TYPES, ["--config", str(Path(output_dir) / "resolved_config.yaml")]
    )
    merged = {k: v for obj in parsed for k, v in vars(obj).items()}
    for key, value in expected.items():
        assert merged[key] == value, key


# ---------------------------------------------------------------- through accelerate launch


@pytest.mark.integration
def test_icl_eval_through_accelerate_launch(tmp_path, tiny_dirs):
    config = write_recipe(tmp_path, tiny_dirs, model_name_or_path=tiny_dirs["teacher"])
    result = launch("icl_eval", config, "--k", "4")  # a CLI flag overrides the YAML's k: 2
    metrics = read_outputs(tmp_path / "out")
    assert metrics["method"] == "icl" and metrics["k"] == 4
    assert metrics["eval"]["mnli"]["num_demonstrations"] == 4
    assert metrics["eval"]["mnli"]["n"] == 16 and metrics["eval"]["hans"]["n"] == 30
    assert "==== in-context learning" in result.stdout and "lexical_overlap" in result.stdout
    check_resolved_config("icl_eval", tmp_path / "out", k=4, model_name_or_path=tiny_dirs["teacher"])


@pytest.mark.integration
def test_pattern_finetune_through_accelerate_launch(tmp_path, tiny_dirs):
    result = launch("pattern_finetune", write_recipe(tmp_path, tiny_dirs))
    metrics = read_outputs(tmp_path / "out")
    assert metrics["train"]["global_step"] == 2 and metrics["train"]["num_examples"] == 8
    losses = [log for log in metrics["log_history"] if "ce_loss" in log]
    assert len(losses) == 2 and all("kd_loss" not in log for log in losses)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "==== pattern-based fine-tuning" in result.stdout
    check_resolved_config("pattern_finetune", tmp_path / "out", max_steps=2, num_train_examples=8)


@pytest.mark.integration
def test_context_distill_through_accelerate_launch(tmp_path, tiny_dirs):
    config = write_recipe(tmp_path, tiny_dirs, teacher_model_name_or_path=tiny_dirs["teacher"])
    result = launch("context_distill", config)
    metrics = read_outputs(tmp_path / "out")
    assert metrics["train"]["global_step"] == 2 and metrics["teacher"] == tiny_dirs["teacher"]
    assert len([log for log in metrics["log_history"] if "kd_loss" in log]) == 2
    assert (tmp_path / "out" / "model.safetensors").is_file()
    assert "==== context distillation" in result.stdout
    check_resolved_config(
        "context_distill", tmp_path / "out", teacher_model_name_or_path=tiny_dirs["teacher"]
    )


# ---------------------------------------------------------------- in process


@pytest.mark.integration
def test_context_distill_lora_student_with_self_teacher(tmp_path, tiny_dirs, capsys):
    config = write_recipe(
        tmp_path,
        tiny_dirs,
        teacher_model_name_or_path="self",
        student_mode="lora",
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
        distill_vocab="label_words",
        resample_demonstrations=True,
        learning_rate=1e-2,
    )
    metrics = load_recipe("context_distill").main(["--config", config])
    assert (
        metrics["method"] == "cd_lora" and metrics["parameters"]["trainable"] < metrics["parameters"]["total"]
    )
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    assert "student without demonstrations" in capsys.readouterr().out


def test_the_same_settings_train_pbft_and_cd_on_the_same_queries(tmp_path, tiny_dirs):
    from distill_trainer.nli.data import prepare_data

    pbft = load_recipe("pattern_finetune").CONFIG_TYPES
    (_, data_args, _), _ = parse_config(pbft, ["--config", write_recipe(tmp_path, tiny_dirs)])
    (_, cd_args, _), _ = parse_config(
        load_recipe("context_distill").CONFIG_TYPES,
        ["--config", write_recipe(tmp_path, tiny_dirs, "cd", teacher_model_name_or_path="x")],
    )
    assert prepare_data(data_args).train_rows["premise"] == prepare_data(cd_args).train_rows["premise"]


# ---------------------------------------------------------------- bad input
# The bad-input cases (unknown task and pattern, template fields, colliding label words, too few
# rows for k, misspelled keys and flags, missing data dir or column, prompts over max_length, a
# teacher where none is read, ...) and the script's exit status 2 are in run/test_bad_*.py.


def test_holdout_rows_are_never_training_queries(tmp_path, tiny_dirs, capsys):
    from distill_trainer.nli.data import prepare_data

    types = load_recipe("context_distill").CONFIG_TYPES
    recipe = write_recipe(tmp_path, tiny_dirs, "cd", teacher_model_name_or_path="x")
    (_, data_args, _), _ = parse_config(types, ["--config", recipe])
    chosen = prepare_data(data_args).train_rows
    # hold out half of the queries the run would otherwise train on
    holdout = tmp_path / "dev.jsonl"
    held = [chosen[i] for i in range(0, len(chosen), 2)]
    # written as a dev file is (select_prompt's dev.jsonl): the source's label ids (binary 1 = source 2)
    source = [{**row, "label": 2 * row["label"]} for row in held]
    holdout.write_text("".join(json.dumps(row) + "\n" for row in source))
    (_, held_args, _), _ = parse_config(types, ["--config", recipe, "--holdout_rows", str(holdout)])
    capsys.readouterr()
    data = prepare_data(held_args)
    pairs = set(zip(data.train_rows["premise"], data.train_rows["hypothesis"]))
    assert len(data.train_rows) == len(chosen)
    assert not pairs & {(row["premise"], row["hypothesis"]) for row in held}
    # the held-out file is read like any data file, and reported
    assert f"{holdout}: {len(held)} rows read" in capsys.readouterr().err
    missing = dataclasses.replace(held_args, holdout_rows=str(tmp_path / "missing.jsonl"))
    with pytest.raises(UsageError, match="holdout_rows: .*missing.jsonl does not exist"):
        prepare_data(missing)
