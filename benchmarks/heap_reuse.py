"""The document recipe's CD step with freed memory kept in the C heap (`heap.reusing_freed_memory`, what
the recipe does) against glibc's default thresholds.

    python -m benchmarks.heap_reuse            # the document preset's student (Qwen2.5-Coder-0.5B, LoRA)
    python -m benchmarks.heap_reuse --quick    # tiny random model: a smoke test

The step is the preset's: the student's forward and backward over chat-templated question rows (shared
prefix on), and forward KL over the whole vocabulary on every answer token against cached top-64 teacher
outputs (random here: the arithmetic does not depend on them). Blocks of steps alternate between the two
settings over the same batches, twice each; the first step of a block is a warm-up and is not timed (with
reuse the heap is filled by it; by default nothing is kept, so it is like any other). The report gives
the median step time of each setting, their ratio, the largest difference between their losses (none is
expected: the arithmetic is the same), and the largest anonymous memory seen after a step in each
setting: what keeping freed blocks costs. Results: results/heap-reuse/heap_reuse.{md,json}.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping OpenMP threads: see speed.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.student_step import preset_batches, preset_step_arguments, timed_step  # noqa: E402

TOP_K = 64


def with_cached_teacher_outputs(batch: dict, vocab: int) -> dict:
    """The batch plus top-k teacher log-probabilities, ids and tail at its answer positions, as the
    teacher output cache stores them."""
    generator = torch.Generator().manual_seed(0)
    shape = (*batch["answer_mask"].shape, TOP_K)
    head_mass, tail_mass = 0.95, 0.05  # the top-k's share of the teacher's probability, and the rest
    logprobs = torch.log_softmax(torch.randn(shape, generator=generator), dim=-1) + math.log(head_mass)
    positions = shape[0] * shape[1]
    ids = torch.stack([torch.randperm(vocab, generator=generator)[:TOP_K] for _ in range(positions)])
    tail = torch.full(shape[:2], math.log(tail_mass))
    return dict(
        batch, teacher_topk_logprobs=logprobs, teacher_topk_ids=ids.view(shape), teacher_tail_logprob=tail
    )


def anonymous_bytes() -> int:
    from distill_trainer.memory.needed import proc_status

    return proc_status().get("RssAnon", 0)


def time_blocks(model, batches, steps: int) -> dict:
    """{setting: {"times", "losses", "anonymous"}}, blocks of `steps` + 1 steps alternating, twice each."""
    import contextlib

    from distill_trainer.heap import reusing_freed_memory
    from distill_trainer.training.teacher_signal import CachedTeacherOutputs, LossSettings

    signal = CachedTeacherOutputs(
        LossSettings(1.0, "forward_kl", 1.0, 0.5, "full", 0, 256, share_prefix=True)
    )
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    result = {name: {"times": [], "losses": [], "anonymous": 0} for name in ("default", "reuse")}
    model.train()
    for name in ("default", "reuse") * 2:
        with reusing_freed_memory() if name == "reuse" else contextlib.nullcontext():
            for step in range(steps + 1):
                seconds, loss = timed_step(signal, model, batches[step % len(batches)], optimizer)
                if step:  # step 0 warms the block up
                    result[name]["times"].append(seconds)
                    result[name]["losses"].append(loss)
                result[name]["anonymous"] = max(result[name]["anonymous"], anonymous_bytes())
    return result


def main(argv=None) -> dict:
    description, steps_help = __doc__.splitlines()[0], "timed steps per block (two blocks each)"
    args = preset_step_arguments(description, "steps", steps_help, "heap-reuse").parse_args(argv)

    from distill_trainer.memory.units import MIB

    model, _, batches = preset_batches(args.quick, args.batch_size, args.steps)
    vocab = model.get_output_embeddings().weight.shape[0]
    batches = [with_cached_teacher_outputs(batch, vocab) for batch in batches]
    measured = time_blocks(model, batches, args.steps)
    default, reuse = (statistics.median(measured[name]["times"]) for name in ("default", "reuse"))
    pairs = zip(measured["default"]["losses"], measured["reuse"]["losses"])
    report = {
        "model": "tiny random (--quick)" if args.quick else "Qwen2.5-Coder-0.5B-Instruct, LoRA, float32",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps_per_setting": 2 * args.steps,
        "seconds_per_step": {"default": round(default, 3), "reuse": round(reuse, 3)},
        "speedup": round(default / reuse, 2),
        "largest_loss_difference": max(abs(a - b) for a, b in pairs),
        "anonymous_mib": {name: round(measured[name]["anonymous"] / MIB) for name in ("default", "reuse")},
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "heap_reuse.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# The CD step with freed memory kept in the heap, against glibc's defaults",
        "",
        f"{report['model']}, {report['threads']} threads, batch {args.batch_size}, median of "
        f"{report['steps_per_setting']} steps each (blocks alternating, each after a warm-up step). Command: "
        "`python -m benchmarks.heap_reuse`.",
        "",
        "| heap | seconds per step | largest anonymous memory (MiB) |",
        "| --- | --- | --- |",
        f"| glibc's defaults | {default:.2f} | {report['anonymous_mib']['default']} |",
        f"| freed memory kept for reuse | {reuse:.2f} | {report['anonymous_mib']['reuse']} |",
        "",
        f"Speed-up: {report['speedup']}x. Largest difference between the two losses: "
        f"{report['largest_loss_difference']:.1e}.",
    ]
    (out / "heap_reuse.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
