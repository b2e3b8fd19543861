"""Peak memory and time of the per-token reply loss: the chunked loss against the naive one.

    python -m benchmarks.loss_memory            # Qwen2.5 sizes: 151,936 tokens, 0.5B student, 1.5B teacher
    python -m benchmarks.loss_memory --chunk-sizes 32,64,256,1024   # what the chunk size trades
    python -m benchmarks.loss_memory --quick    # small vocabulary: a smoke test

The naive loss builds both models' logits over every reply position, (batch, length, vocabulary), then
their log-softmaxes, and keeps them for the backward pass; the chunked loss
(`training.sequence_loss.chunked_sequence_loss`) holds one chunk of positions at a time. Each loss runs in
a fresh process (its peak cannot hide in another's freed memory), from the final hidden states of a
LoRA-style student (frozen head, hidden states that need a gradient) and a teacher, through forward and
backward; the peak resident memory above the inputs is what the loss itself costs. Prints the table and
writes results/loss-memory/loss_memory.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from distill_trainer.code_digest import code_record
from distill_trainer.code_stamp import stamp_json, stamp_markdown

REPO = Path(__file__).resolve().parents[1]
QWEN = {"vocab": 151_936, "student_hidden": 896, "teacher_hidden": 1536}


def run_one(method: str, options: dict) -> dict:
    """In this process: build the inputs, then time and measure one loss's forward and backward.
    `method`: "naive", or "chunked <positions per chunk>"."""
    import torch

    from distill_trainer.memory.peak import CpuMemoryMeter
    from distill_trainer.memory.units import MIB
    from distill_trainer.models.output_head import OutputHead
    from distill_trainer.training.losses import distillation_loss
    from distill_trainer.training.sequence_loss import chunked_sequence_loss

    torch.manual_seed(0)
    batch, length, vocab = options["batch"], options["length"], options["vocab"]
    student_head = torch.nn.Linear(options["student_hidden"], vocab, bias=False).requires_grad_(False)
    teacher_head = torch.nn.Linear(options["teacher_hidden"], vocab, bias=False).requires_grad_(False)
    hidden = torch.randn(batch, length, options["student_hidden"], requires_grad=True)
    teacher_hidden = torch.randn(batch, length, options["teacher_hidden"])
    mask = torch.ones(batch, length, dtype=torch.bool)

    def step():
        if method == "naive":
            loss = distillation_loss(
                student_head(hidden), teacher_head(teacher_hidden), mask, kind="reverse_kl"
            )
        else:
            loss, _, _ = chunked_sequence_loss(
                hidden,
                OutputHead(student_head),
                mask,
                teacher_hidden=teacher_hidden,
                teacher_head=OutputHead(teacher_head),
                kind="reverse_kl",
                chunk_size=int(method.split()[1]),
            )
        loss.backward()
        hidden.grad = None
        return float(loss)

    meter = CpuMemoryMeter()
    before = meter.current()
    meter.reset()
    value = step()
    above = meter.peak() - before
    meter.close()
    times = []
    for _ in range(options["repeats"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "method": method,
        "loss": value,
        "peak_above_inputs_mib": above / MIB,
        "inputs_rss_mib": before / MIB,
        "seconds": statistics.median(times),
    }


def measure(method: str, options: dict) -> dict:
    """`run_one` twice, each in a fresh process: once with an RSS that tracks live tensors (see
    memory/peak.py) for the peak, once with the C heap's default settings for the time. Forcing every
    large allocation through mmap, as the first does, makes each allocation fault in fresh pages: that
    would charge the chunked loss, which allocates once per chunk, for the measurement itself."""
    memory = _child(method, options, {"MALLOC_MMAP_THRESHOLD_": "131072"})
    timed = _child(method, options, {})
    return dict(memory, seconds=timed["seconds"])


def _child(method: str, options: dict, env: dict) -> dict:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env, PYTHONPATH=str(REPO))
    command = [
        sys.executable,
        "-m",
        "benchmarks.loss_memory",
        "--child",
        method,
        "--options",
        json.dumps(options),
    ]
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {method} loss failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(options: dict, rows: list[dict]) -> str:
    naive = next(r for r in rows if r["method"] == "naive")
    lines = [
        f"# Reply loss: peak memory and time, vocabulary {options['vocab']:,}",
        "",
        f"batch {options['batch']} x {options['length']} reply tokens; student hidden "
        f"{options['student_hidden']}, teacher hidden {options['teacher_hidden']}; reverse KL over the whole "
        "vocabulary, forward + backward; chunked: so many positions per chunk. Peak resident memory above "
        f"the inputs' (the heads and hidden states, {naive['inputs_rss_mib']:.0f} MiB), with every large "
        "allocation in its own pages so that RSS follows live tensors; time: median of "
        f"{options['repeats']} repeats in another process with the C heap's default settings.",
        "",
        "| loss | peak above inputs (MiB) | vs naive | seconds | vs naive | loss value |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        above, naive_above = r["peak_above_inputs_mib"], naive["peak_above_inputs_mib"]
        lines.append(
            f"| {r['method']} | {above:.0f} | {above / naive_above:.2f}x | {r['seconds']:.2f} "
            f"| {r['seconds'] / naive['seconds']:.2f}x | {r['loss']:.6f} |"
        )
    one = options["batch"] * options["length"] * options["vocab"] * 4 / 2**20
    lines += ["", f"One fp32 (batch, length, vocabulary) tensor here: {one:.0f} MiB.", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small vocabulary: a smoke test")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="reply tokens per row")
    parser.add_argument(
        "--chunk-sizes", default="64,256", help="positions per chunk, comma-separated (256: the library's)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-dir", default=str(REPO / "results" / "loss-memory"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(run_one(args.child, json.loads(args.options))))
        return
    sizes = dict(vocab=4096, student_hidden=64, teacher_hidden=96) if args.quick else QWEN
    options = dict(sizes, batch=args.batch, length=args.length, repeats=args.repeats)
    chunks = [int(size) for size in args.chunk_sizes.split(",")]
    rows = [measure(method, options) for method in ["naive", *(f"chunked {size}" for size in chunks)]]
    text = table(options, rows)
    print(text)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    code = code_record(["benchmarks/loss_memory.py"])  # the table names the code that made it
    (out / "loss_memory.md").write_text(stamp_markdown(text, code), encoding="utf-8")
    (out / "loss_memory.json").write_text(
        json.dumps({"options": options, "results": rows, "code": stamp_json(code)}, indent=2),
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
