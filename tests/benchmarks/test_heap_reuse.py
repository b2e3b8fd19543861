"""The heap-reuse benchmark runs end to end on a tiny model: each heap setting trains in a process of its
own, both reach the same loss, and the report and its files agree."""

import json

from benchmarks import heap_reuse


def test_quick_run_gives_equal_losses_under_both_heap_settings(tmp_path):
    report = heap_reuse.main(["--quick", "--steps", "4", "--output-dir", str(tmp_path)])
    assert report["steps_per_run"] == 4 and report["runs_per_setting"] == 1
    assert report["largest_loss_difference"] == 0.0  # the same arithmetic, only the allocator differs
    assert report["seconds_per_step"]["default"] > 0 and report["seconds_per_step"]["reuse"] > 0
    assert json.loads((tmp_path / "heap_reuse.json").read_text()) == report
    assert "| freed memory kept for reuse |" in (tmp_path / "heap_reuse.md").read_text()
