"""The student-step benchmark runs end to end on a tiny model: the shared-prefix forward runs fewer tokens
per step than the padded one, and both reach the same loss."""

import json

from benchmarks import student_step


def test_quick_run_counts_fewer_tokens_and_equal_losses(tmp_path):
    report = student_step.main(["--quick", "--rounds", "2", "--output-dir", str(tmp_path)])
    tokens = report["tokens_per_forward"]
    assert tokens["shared_prefix"] < 0.8 * tokens["plain"]  # the chat template's lead-in, once per batch
    assert report["largest_loss_difference"] <= 1e-5
    assert json.loads((tmp_path / "student_step.json").read_text()) == report
    assert "| shared prefix |" in (tmp_path / "student_step.md").read_text()
