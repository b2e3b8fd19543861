"""`distill-trainer evaluate` on saved tiny students (a full model folder and a LoRA adapter folder)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill_trainer.models.loading import load_causal_lm, load_tokenizer, prepare_student
from distill_trainer.nli.evaluation import evaluate_task
from distill_trainer.nli.patterns import get_pattern
from distill_trainer.nli.tasks import get_task, load_split
from distill_trainer.run.cli import main

DATA = Path(__file__).parents[1] / "data"
MNLI_FILE = str(DATA / "mnli" / "validation_matched.jsonl")
HANS_FILE = str(DATA / "hans" / "validation.jsonl")


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_dirs):
    """A LoRA adapter whose B matrices are non-zero, so it scores differently from its base model."""
    model = prepare_student(load_causal_lm(tiny_dirs["student"]), "lora", lora_r=4)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    directory = tmp_path_factory.mktemp("adapter") / "student"
    model.save_pretrained(directory)
    load_tokenizer(tiny_dirs["student"]).save_pretrained(directory)
    return str(directory), model


def expected_metrics(model, tokenizer, data_file, task="mnli", pattern="minimal"):
    task = get_task(task)
    rows = load_split(task, "file", data_file=data_file)
    metrics, _ = evaluate_task(
        model, tokenizer, rows, task, get_pattern(pattern, task.num_labels), progress=False
    )
    return metrics


def run(*argv):
    assert main(["evaluate", *argv, "--no_progress"]) == 0


def read(output_dir, task="mnli"):
    metrics = json.loads((Path(output_dir) / "metrics.json").read_text())["eval"][task]
    predictions = [
        json.loads(line) for line in (Path(output_dir) / f"predictions_{task}.jsonl").read_text().splitlines()
    ]
    return metrics, predictions


def test_full_student_folder(tmp_path, tiny_dirs, capsys):
    run("--model", tiny_dirs["student"], "--task", "mnli", "--data", MNLI_FILE, "--output_dir", str(tmp_path))
    metrics, predictions = read(tmp_path)
    expected = expected_metrics(
        load_causal_lm(tiny_dirs["student"]), load_tokenizer(tiny_dirs["student"]), MNLI_FILE
    )
    assert metrics["n"] == len(predictions) == 16  # neutral rows dropped: binary MNLI
    assert metrics["accuracy"] == expected["accuracy"] and metrics["auc"] == pytest.approx(expected["auc"])
    assert metrics["k"] == 0 and metrics["pattern"] == "minimal"
    assert "==== evaluate:" in capsys.readouterr().out


def test_lora_adapter_folder_loads_base_and_adapter(tmp_path, tiny_dirs, lora_dir):
    directory, in_memory = lora_dir
    run("--model", directory, "--data", MNLI_FILE, "--output_dir", str(tmp_path / "adapter"))
    run("--model", tiny_dirs["student"], "--data", MNLI_FILE, "--output_dir", str(tmp_path / "base"))
    adapter, adapter_predictions = read(tmp_path / "adapter")
    _, base_predictions = read(tmp_path / "base")
    expected = expected_metrics(in_memory, load_tokenizer(tiny_dirs["student"]), MNLI_FILE)
    assert adapter["auc"] == pytest.approx(expected["auc"]) and adapter["accuracy"] == expected["accuracy"]
    # the adapter is really applied: the label-word scores differ from the base model's
    assert [p["logprobs"] for p in adapter_predictions] != [p["logprobs"] for p in base_predictions]


def test_hans_file_with_demonstrations_and_a_recipe_pattern(tmp_path, tiny_dirs):
    # a folder written by a recipe carries its pattern in resolved_config.yaml
    folder = tmp_path / "student"
    folder.mkdir()
    for name in Path(tiny_dirs["student"]).iterdir():
        (folder / name.name).write_bytes(name.read_bytes())
    (folder / "resolved_config.yaml").write_text("pattern: gpt3\nk: 2\n")
    run(
        "--model",
        str(folder),
        "--task",
        "hans",
        "--data",
        HANS_FILE,
        "--k",
        "2",
        "--demonstration_ids",
        "21",
        "57",
        "--data_dir",
        str(DATA),
        "--output_dir",
        str(tmp_path / "out"),
    )
    metrics, predictions = read(tmp_path / "out", "hans")
    assert metrics["pattern"] == "gpt3" and metrics["num_demonstrations"] == 2
    assert set(metrics["per_heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}
    assert len(predictions) == metrics["n"] == 60 and all(p["num_demonstrations"] == 2 for p in predictions)


def test_mistakes_exit_with_status_2(tmp_path, tiny_dirs, capsys):
    assert main(["evaluate", "--model", tiny_dirs["student"], "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--model",
                tiny_dirs["student"],
                "--data",
                MNLI_FILE,
                "--k",
                "2",
                "--demonstration_ids",
                "21",
            ]
        )
        == 2
    )
    assert "demonstration_ids has 1 ids but k=2" in capsys.readouterr().err


@pytest.mark.integration
def test_console_script(tmp_path, tiny_dirs):
    script = Path(sys.executable).parent / "distill-trainer"
    if not script.exists():
        pytest.skip("the package is not installed with its console script")
    result = subprocess.run(
        [str(script), "evaluate", "--model", tiny_dirs["student"], "--data", MNLI_FILE, "--no_progress"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "mnli" in result.stdout and "accuracy" in result.stdout
