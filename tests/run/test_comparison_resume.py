"""A comparison run again under its run_name after it was killed (found by checks/faults.py: the rerun
stopped at "output_dir ... already holds a run's results"): the methods that finished are kept, the one
that was interrupted continues from its last complete checkpoint, and the result is the uninterrupted one."""

import shutil

import pytest
from test_comparison import write_config

from distill_trainer.run import comparison
from recipes import compare


@pytest.mark.integration
def test_a_killed_comparison_keeps_finished_methods_and_resumes_the_interrupted_one(
    tmp_path, tiny_dirs, monkeypatch
):
    config = write_config(
        tmp_path,
        tiny_dirs,
        methods=["zero_shot", "pbft_full"],
        fresh_process_per_method=False,
        save_strategy="steps",
        save_steps=1,
        max_steps=3,
    )
    whole = compare.main(["--config", config])
    run_dir = tmp_path / "results" / "tiny"
    method = run_dir / "pbft_full"
    weights = (method / "model.safetensors").read_bytes()
    # what a SIGKILL during pbft_full's third step leaves: zero_shot finished, pbft_full at checkpoint-2
    shutil.rmtree(method / "checkpoint-3")
    for name in ("model.safetensors", "metrics.json", "fingerprint.json", "predictions_mnli.jsonl"):
        (method / name).unlink()
    (run_dir / "summary.json").unlink()
    (method / ".run.lock").write_text("pid 1 (killed)\n")
    ran, real_run = [], comparison.run_in_this_process

    def recording_run(scripts, recipe, config_path, tracker, name, extra=()):
        ran.append((name, list(extra)))
        return real_run(scripts, recipe, config_path, tracker, name, extra)

    monkeypatch.setattr(comparison, "run_in_this_process", recording_run)
    again = compare.main(["--config", config])
    assert ran == [("pbft_full", ["--resume_from_checkpoint", "true"])]  # zero_shot kept as it was
    assert (method / "model.safetensors").read_bytes() == weights  # the uninterrupted run's student
    assert [row["eval"] for row in again["methods"]] == [row["eval"] for row in whole["methods"]]
    assert again["settings"]["reused"] == [] and not (method / ".run.lock").exists()
