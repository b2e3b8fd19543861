"""The student's training step with and without its shared-prefix forward (`share_student_prefix`).

    python -m benchmarks.student_step             # the document preset's student (Qwen2.5-Coder-0.5B, LoRA)
    python -m benchmarks.student_step --quick     # tiny random model: a smoke test

Rows are chat-templated questions about the handbook (the dev wordings of recipes/data/handbook-dev, so
no evaluation question) with a short sentence as the answer, the shape of the document recipe's training
rows: the template's system prompt and turn markers come first in every row. The student is the document
preset's (its model, LoRA settings and float32), trained by cross-entropy on the answers: the student's
forward and backward, which the setting changes, are the whole step (a CD step adds only the loss over
cached teacher outputs). Both settings run the same batches, interleaved, one optimizer step each per
round after a warm-up round; the report gives the median step time of each, their ratio, and the tokens
each forward runs (the shared prefix once, each row's own tokens; padded rows otherwise), and checks that
the two reach the same loss. Results: results/student-step/student_step.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# sleeping OpenMP threads: spinning ones lose most of their time on a shared machine (see speed.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PRESET = REPO / "recipes" / "configs" / "embedded" / "document-generated.yaml"
QUESTIONS = REPO / "recipes" / "data" / "handbook-dev" / "dev-wordings.jsonl"


def student_and_tokenizer(quick: bool):
    import yaml

    from distill_trainer.models.loading import load_tokenizer, prepare_student
    from distill_trainer.testing import build_chat_tokenizer, build_model

    preset = yaml.safe_load(PRESET.read_text())
    lora = dict(lora_r=preset["lora_r"], lora_alpha=preset["lora_alpha"])
    lora["lora_target_modules"] = preset["lora_target_modules"]
    torch.manual_seed(0)
    if quick:
        tokenizer = build_chat_tokenizer()
        model = build_model(len(tokenizer))
    else:
        from distill_trainer.models.loading import load_causal_lm

        tokenizer = load_tokenizer(preset["model_name_or_path"])
        model = load_causal_lm(preset["model_name_or_path"], dtype=preset["dtype"])
    return prepare_student(model, "lora", **lora), tokenizer


def training_rows(tokenizer, count: int, answer: str = "The answer is {answer}."):
    """`count` chat-templated rows of the dev questions, each answered by `answer` filled in."""
    from distill_trainer.context.steps import chat_view_dataset

    questions = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()][:count]
    rows = [
        dict(prompt=q["prompt"], context="", completion=answer.format(answer=q["answer"])) for q in questions
    ]
    return chat_view_dataset(tokenizer, rows, [None] * len(rows), "system")


def tokens_per_step(batches, share: bool) -> float:
    """The tokens one forward runs, averaged over the batches: padded rows, or the shared prefix once and
    each row's own tokens."""
    from distill_trainer.training.student_forward import MIN_SHARED_PREFIX, batch_shared_prefix

    counts = []
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        prefix = batch_shared_prefix(ids, mask, batch["answer_positions"]) if share else 0
        if prefix < MIN_SHARED_PREFIX:
            counts.append(ids.numel())
        else:
            counts.append(prefix + int(mask[:, prefix:].sum()))
    return statistics.mean(counts)


def timed_step(signal, model, batch, optimizer) -> tuple[float, float]:
    """(seconds, loss) of one training step: the loss, its backward and the optimizer's step."""
    start = time.perf_counter()
    loss = signal.loss(model, batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start, float(loss.detach())


def preset_batches(quick: bool, batch_size: int, count: int):
    """(student, batches): `count` batches of the preset's size, collated as the trainer does."""
    from distill_trainer import TwoViewCollator

    model, tokenizer = student_and_tokenizer(quick)
    rows = training_rows(tokenizer, batch_size * count)
    collate = TwoViewCollator(tokenizer.pad_token_id)
    batches = [
        collate([rows[i] for i in range(start, min(start + batch_size, len(rows)))])
        for start in range(0, len(rows), batch_size)
    ]
    return model, batches


def time_steps(model, batches, rounds: int) -> dict:
    """{setting: [seconds of each step]}, the settings alternating step by step over the same batches."""
    from distill_trainer.training.teacher_signal import GoldLabelsOnly, LossSettings

    signals = {
        share: GoldLabelsOnly(LossSettings(0.0, "forward_kl", 1.0, 0.5, "full", 0, 256, share_prefix=share))
        for share in (False, True)
    }
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    times, losses = {False: [], True: []}, {False: [], True: []}
    model.train()
    for step in range(rounds + 1):  # round 0 warms up (first-touch allocations, kernels)
        batch = batches[step % len(batches)]
        for share, signal in signals.items():
            seconds, loss = timed_step(signal, model, batch, optimizer)
            if step:
                times[share].append(seconds)
                losses[share].append(loss)
    return {"times": times, "losses": losses}


def preset_step_arguments(description: str, count: str, count_help: str, output_dir: str):
    """The options of a benchmark timing the preset student's steps: --quick, --<count> (6),
    --batch-size (8) and --output-dir (results/<output_dir>)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny random model: a smoke test")
    parser.add_argument(f"--{count}", type=int, default=6, help=count_help)
    parser.add_argument("--batch-size", type=int, default=8, help="the preset's per_device_train_batch_size")
    parser.add_argument("--output-dir", default=str(REPO / "results" / output_dir))
    return parser


def write_report(output_dir: str, name: str, report: dict, lines: list[str]) -> dict:
    """Write `report` as <name>.json and `lines` as <name>.md into `output_dir`, print the lines and
    return the report."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


def main(argv=None) -> dict:
    parser = preset_step_arguments(
        __doc__.splitlines()[0], "rounds", "timed steps per setting", "student-step"
    )
    args = parser.parse_args(argv)

    model, batches = preset_batches(args.quick, args.batch_size, args.rounds)
    measured = time_steps(model, batches, args.rounds)
    plain, shared = (statistics.median(measured["times"][share]) for share in (False, True))
    drift = max(abs(a - b) for a, b in zip(measured["losses"][False], measured["losses"][True]))
    report = {
        "model": "tiny random (--quick)" if args.quick else "Qwen2.5-Coder-0.5B-Instruct, LoRA, float32",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "rounds": args.rounds,
        "seconds_per_step": {"plain": round(plain, 3), "shared_prefix": round(shared, 3)},
        "speedup": round(plain / shared, 2),
        "tokens_per_forward": {
            "plain": round(tokens_per_step(batches, False), 1),
            "shared_prefix": round(tokens_per_step(batches, True), 1),
        },
        "largest_loss_difference": drift,
    }
    lines = [
        "# The student's step with and without the shared-prefix forward",
        "",
        f"{report['model']}, {report['threads']} threads, batch {args.batch_size}, median of {args.rounds} "
        "steps each (interleaved, after a warm-up round). Command: `python -m benchmarks.student_step`.",
        "",
        "| forward | seconds per step | tokens per forward |",
        "| --- | --- | --- |",
        f"| plain (padded rows) | {plain:.2f} | {report['tokens_per_forward']['plain']} |",
        f"| shared prefix | {shared:.2f} | {report['tokens_per_forward']['shared_prefix']} |",
        "",
        f"Speed-up: {report['speedup']}x. Largest difference between the two losses: {drift:.1e}.",
    ]
    return write_report(args.output_dir, "student_step", report, lines)


if __name__ == "__main__":
    main()
