"""Determinism: the same seed gives the same demonstrations, data order, losses, metrics and weights, and
`resolved_config.yaml` holds the seed and every resolved setting, so a run repeats exactly from it."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import yaml
from helpers import load_recipe, write_recipe
from safetensors.torch import load_file

from distill_trainer import TwoViewCollator, parse_config
from distill_trainer.nli.data import prepare_data
from distill_trainer.run.runner import INVOCATION_KEYS

BATCHES = []  # what RecordingCollator saw in the current run


class RecordingCollator(TwoViewCollator):
    """Records what every training batch holds: which examples, in which order, with which teacher prompt."""

    def __call__(self, features):
        BATCHES.append([(f["example_index"], tuple(f["teacher_input_ids"])) for f in features])
        return super().__call__(features)


def run(monkeypatch, config, *extra):
    """One context-distillation run in this process; returns its recorded training batches and outputs."""
    module = load_recipe("context_distill")
    monkeypatch.setattr(module, "TwoViewCollator", RecordingCollator)
    BATCHES.clear()
    configs, given = parse_config(module.CONFIG_TYPES, ["--config", config, *extra])
    module.run_context_distill(*configs, given=given)
    output_dir = Path(configs[-1].output_dir)
    metrics = json.loads((output_dir / "metrics.json").read_text())
    losses = [
        (log["step"], log["loss"], log["kd_loss"]) for log in metrics["log_history"] if "kd_loss" in log
    ]
    predictions = {task: (output_dir / f"predictions_{task}.jsonl").read_text() for task in metrics["eval"]}
    return {
        "batches": list(BATCHES),
        "losses": losses,
        "eval": metrics["eval"],
        "predictions": predictions,
        "weights": load_file(str(output_dir / "model.safetensors")),
        "configs": configs,
    }


@pytest.mark.integration
def test_the_same_seed_repeats_the_run_and_the_resolved_config_repeats_it(tmp_path, tiny_dirs, monkeypatch):
    # demonstrations drawn per query (they depend on the seeds), 2 epochs of shuffled batches
    config = write_recipe(
        tmp_path,
        tiny_dirs,
        teacher_model_name_or_path=tiny_dirs["teacher"],
        num_train_examples=8,
        resample_demonstrations=True,
        max_steps=4,
        seed=3,
        demonstration_seed=5,
        subset_seed=7,
        learning_rate=1e-2,
        eval_tasks=["mnli"],
        num_eval_examples=8,
        output_dir=str(tmp_path / "first"),
    )
    first = run(monkeypatch, config)
    # the second run reads nothing but the first run's resolved_config.yaml
    resolved = tmp_path / "first" / "resolved_config.yaml"
    second = run(monkeypatch, str(resolved), "--output_dir", str(tmp_path / "second"))

    assert len(first["batches"]) == 4 and first["batches"] == second["batches"]  # data order and prompts
    assert first["losses"] == second["losses"] and len(first["losses"]) == 4
    assert first["eval"] == second["eval"] and first["predictions"] == second["predictions"]
    assert all(torch.equal(first["weights"][name], second["weights"][name]) for name in first["weights"])

    # every resolved setting came back from the file (not only the ones the recipe file gave)
    values = yaml.safe_load(resolved.read_text())
    assert values["seed"] == 3 and values["demonstration_seed"] == 5 and values["subset_seed"] == 7
    for one, other in zip(first["configs"], second["configs"]):
        for f in dataclasses.fields(one):
            if f.init and f.name not in ("output_dir", "logging_dir", *INVOCATION_KEYS):
                assert getattr(one, f.name) == getattr(other, f.name), f.name

    # the seeds matter: another training seed reorders the batches, another demonstration seed changes prompts
    reseeded = run(monkeypatch, str(resolved), "--output_dir", str(tmp_path / "third"), "--seed", "4")
    order = [[index for index, _ in batch] for batch in first["batches"]]
    assert order != [[index for index, _ in batch] for batch in reseeded["batches"]]
    data_args = first["configs"][1]
    rows = prepare_data(data_args).train_rows
    demonstrations = [prepare_data(data_args).sampler.for_query(row) for row in rows]
    assert demonstrations == [prepare_data(data_args).sampler.for_query(row) for row in rows]
    other_seed = dataclasses.replace(data_args, demonstration_seed=6)
    assert demonstrations != [prepare_data(other_seed).sampler.for_query(row) for row in rows]
