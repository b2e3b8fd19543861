"""The document recipe's CD training with freed memory kept in the C heap (`heap.reusing_freed_memory`, what
the recipe does) against glibc's default thresholds.

    python -m benchmarks.heap_reuse            # the document preset's student (Qwen2.5-Coder-0.5B, LoRA)
    python -m benchmarks.heap_reuse --quick    # tiny random model: a smoke test

Each setting trains in a process of its own (the heap and its thresholds belong to a process), with the
recipe's trainer and the preset's step: the student's forward and backward over chat-templated question
rows (shared prefix on; sentence-long answers, as the teacher's are) and forward KL over the whole
vocabulary on every answer token against cached top-64 teacher outputs (random here: the arithmetic does
not depend on them). The two settings run the same rows in the same order, one after the other,
`--repeats` times each. A trainer's process is what shows the difference: a small process that calls the
loss alone does not. The report gives the median step time of each setting (the first two steps of a run
left out: warm-up), their ratio, the largest difference between their final losses (none is expected: the
arithmetic is the same) and each setting's largest anonymous memory. Results:
results/heap-reuse/heap_reuse.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping OpenMP threads: see speed.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks.student_step import (  # noqa: E402
    preset_step_arguments,
    student_and_tokenizer,
    training_rows,
    write_report,
)

TOP_K = 64
SETTINGS = ("default", "reuse")
WARM_UP_STEPS = 2
# about 16 tokens, the length of the 0.5B teacher's answers the preset trains on
SENTENCE_ANSWER = "As the handbook of the town says, the answer to that question is {answer}."


def with_cached_teacher_outputs(rows, vocab: int):
    """The dataset plus top-k teacher log-probabilities, ids and tail at each row's answer positions, as
    the teacher output cache stores them."""
    generator = torch.Generator().manual_seed(0)
    head_mass, tail_mass = 0.95, 0.05  # the top-k's share of the teacher's probability, and the rest

    def add(row):
        length = len(row["answer_positions"])
        logits = torch.randn(length, TOP_K, generator=generator)
        ids = [torch.randperm(vocab, generator=generator)[:TOP_K].tolist() for _ in range(length)]
        return dict(
            teacher_topk_logprobs=(torch.log_softmax(logits, dim=-1) + math.log(head_mass)).tolist(),
            teacher_topk_ids=ids,
            teacher_tail_logprob=[math.log(tail_mass)] * length,
        )

    return rows.map(add)


def train_once(setting: str, quick: bool, steps: int, batch_size: int) -> dict:
    """{"times": seconds of each step, "loss", "anonymous"} of one training run under `setting`."""
    import contextlib

    from transformers import TrainerCallback

    from distill_trainer import ContextDistillationTrainer, DistillationConfig, TwoViewCollator
    from distill_trainer.heap import reusing_freed_memory
    from distill_trainer.memory.needed import proc_status

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times, self.anonymous, self.started = [], 0, None

        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.started)
            self.anonymous = max(self.anonymous, proc_status().get("RssAnon", 0))

    with reusing_freed_memory() if setting == "reuse" else contextlib.nullcontext():
        model, tokenizer = student_and_tokenizer(quick)
        vocab = model.get_output_embeddings().weight.shape[0]
        rows = training_rows(tokenizer, batch_size * steps, SENTENCE_ANSWER)
        rows = with_cached_teacher_outputs(rows, vocab)
        with tempfile.TemporaryDirectory() as output_dir:
            config = DistillationConfig(
                output_dir=output_dir, use_cpu=True, max_steps=steps, per_device_train_batch_size=batch_size,
                learning_rate=2e-3, alpha=1.0, loss="forward_kl", distill_vocab="full", seed=0,
                save_strategy="no", report_to="none", logging_steps=steps, disable_tqdm=True,
            )  # fmt: skip
            timer = StepTimes()
            trainer = ContextDistillationTrainer(
                model=model, args=config, train_dataset=rows,
                data_collator=TwoViewCollator(tokenizer.pad_token_id), callbacks=[timer],
            )  # fmt: skip
            result = trainer.train()
    return {"times": timer.times, "loss": result.training_loss, "anonymous": timer.anonymous}


def run_setting(setting: str, args) -> dict:
    """`train_once` in a fresh process."""
    command = [sys.executable, "-m", "benchmarks.heap_reuse", "--child", setting, "--steps", str(args.steps)]
    command += ["--batch-size", str(args.batch_size)] + (["--quick"] if args.quick else [])
    reply = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if reply.returncode:
        raise SystemExit(f"the {setting} run failed:\n{reply.stderr[-3000:]}")
    return json.loads(reply.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    description, steps_help = __doc__.splitlines()[0], "training steps per run"
    parser = preset_step_arguments(description, "steps", steps_help, "heap-reuse")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting, alternating")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)  # one run, for the parent
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(train_once(args.child, args.quick, args.steps, args.batch_size)))
        return {}

    from distill_trainer.memory.units import MIB

    runs = {setting: [] for setting in SETTINGS}
    for _ in range(args.repeats):
        for setting in SETTINGS:
            runs[setting].append(run_setting(setting, args))
    default, reuse = (
        statistics.median(t for run in runs[setting] for t in run["times"][WARM_UP_STEPS:])
        for setting in SETTINGS
    )
    losses = [run["loss"] for setting in SETTINGS for run in runs[setting]]
    report = {
        "model": "tiny random (--quick)" if args.quick else "Qwen2.5-Coder-0.5B-Instruct, LoRA, float32",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "steps_per_run": args.steps,
        "runs_per_setting": args.repeats,
        "seconds_per_step": {"default": round(default, 3), "reuse": round(reuse, 3)},
        "speedup": round(default / reuse, 2),
        "largest_loss_difference": max(losses) - min(losses),
        "anonymous_mib": {s: round(max(r["anonymous"] for r in runs[s]) / MIB) for s in SETTINGS},
    }
    lines = [
        "# CD training with freed memory kept in the heap, against glibc's defaults",
        "",
        f"{report['model']}, {report['threads']} threads, batch {args.batch_size}, {args.repeats} run(s) of "
        f"{args.steps} steps per setting, each in a fresh process; median step after {WARM_UP_STEPS} warm-up "
        "steps. Command: `python -m benchmarks.heap_reuse`.",
        "",
        "| heap | seconds per step | largest anonymous memory (MiB) |",
        "| --- | --- | --- |",
        f"| glibc's defaults | {default:.2f} | {report['anonymous_mib']['default']} |",
        f"| freed memory kept for reuse | {reuse:.2f} | {report['anonymous_mib']['reuse']} |",
        "",
        f"Speed-up: {report['speedup']}x. Largest difference between the two losses: "
        f"{report['largest_loss_difference']:.1e}.",
    ]
    return write_report(args.output_dir, "heap_reuse", report, lines)


if __name__ == "__main__":
    main()
