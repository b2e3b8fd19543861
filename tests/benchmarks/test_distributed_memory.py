"""The distributed memory benchmark: its meter sees an allocation, its table computes the analytic shares,
it rewrites only its own block of the docs, and docs/distributed.md holds the table it wrote."""

import re
from pathlib import Path

from benchmarks import distributed_memory as bench

MIB = 2**20


def _report(strategy, rank, held):
    return {
        "pair": "tiny",
        "strategy": strategy,
        "rank": rank,
        "world_size": 2,
        "teacher_numel": 1000 * MIB // 4,
        "teacher_local_numel": int(held * 1000 * MIB // 4),
        "teacher_element_size": 4,
        "anon_before_teacher": 100 * MIB,
        "anon_after_teacher": 600 * MIB,
        "anon_peaks": {phase: 700 * MIB for phase in bench.PHASES},
    }


def test_the_table_sets_the_measured_share_beside_the_analytic_one():
    text = bench.table([_report("zero3", 0, 0.5), _report("ddp", 0, 1.0)])
    ddp, zero3 = text.splitlines()[2:]
    assert "| ddp | 0 of 2 | 262,144,000 of 262,144,000 (100.0%) | 1,000.0 MiB of 1,000.0 |" in ddp
    assert "| zero3 | 0 of 2 | 131,072,000 of 262,144,000 (50.0%) | 500.0 MiB of 1,000.0 |" in zero3
    assert zero3.endswith("| 500.0 MiB | 700 MiB | 700 MiB | 700 MiB |")


def test_writing_replaces_only_the_block(tmp_path, monkeypatch):
    doc = tmp_path / "distributed.md"
    doc.write_text(f"intro\n{bench.BEGIN}\nold table\n{bench.END}\noutro\n")
    monkeypatch.setattr(bench, "DOC", doc)
    bench.write_into_doc("| new |", "python -m benchmarks.distributed_memory")
    assert doc.read_text() == (
        f"intro\n{bench.BEGIN}\nWritten by `python -m benchmarks.distributed_memory`:\n\n| new |\n"
        f"{bench.END}\noutro\n"
    )


def test_the_docs_hold_the_table_for_both_pairs_and_strategies():
    doc = (Path(__file__).parents[2] / "docs" / "distributed.md").read_text()
    block = doc.split(bench.BEGIN)[1].split(bench.END)[0]
    assert f"Written by `{bench.COMMAND}`" in block
    rows = [line for line in block.splitlines() if re.match(r"\| (tiny|qwen)", line)]
    assert {tuple(row.split(" | ")[:3]) for row in rows} == {
        (f"| {pair}", strategy, f"{rank} of 2")
        for pair in bench.PAIRS
        for strategy in bench.STRATEGIES
        for rank in (0, 1)
    }
    for row in rows:
        if " zero3 " in row:  # each process holds half of the teacher
            assert "(50.0%)" in row
