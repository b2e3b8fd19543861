"""The loss-memory benchmark at its quick size: both losses give the same value, and the chunked one's
peak is the smaller."""

import json

import pytest

from benchmarks import loss_memory


@pytest.mark.integration
def test_quick_loss_memory_benchmark_agrees_and_chunking_saves_memory(tmp_path):
    argv = ["--quick", "--repeats", "1", "--chunk-sizes", "16,64", "--output-dir", str(tmp_path)]
    loss_memory.main(argv)
    saved = json.loads((tmp_path / "loss_memory.json").read_text())
    rows = {r["method"]: r for r in saved["results"]}
    assert set(rows) == {"naive", "chunked 16", "chunked 64"}
    for size in (16, 64):
        assert abs(rows["naive"]["loss"] - rows[f"chunked {size}"]["loss"]) < 1e-5
        assert rows[f"chunked {size}"]["peak_above_inputs_mib"] < rows["naive"]["peak_above_inputs_mib"]
    assert "| chunked 16 |" in (tmp_path / "loss_memory.md").read_text()
