"""Memory per process at 2 CPU processes: DDP (a whole teacher in each process) against DeepSpeed ZeRO-3
(the teacher partitioned like the student), on the tiny test models and on the embedded Qwen2.5-Coder-0.5B
teacher -> SmolLM2-135M student (two tokenizers: label-word KL), a few optimizer steps each.

    python -m benchmarks.distributed_memory                     # both pairs; writes the table into
                                                                # docs/distributed.md (~5 min, ~8 GB)
    python -m benchmarks.distributed_memory --pairs tiny --no-write

Each (pair, strategy) is one `torchrun --nproc_per_node 2` launch of this module with --worker. A process
measures its anonymous resident memory (RssAnon in /proc/self/status: what its tensors and heap hold; the
resident set would also count the page cache of the memory-mapped checkpoints) just before the trainer is
built and just after (the teacher is then loaded and placed: under ZeRO-3 partitioned), and its peak
(sampled every 5 ms) while it loads the student, while it loads the teacher, and while it trains. The
teacher's share is read from its parameters (a ZeRO-3 partition, ds_tensor) and set beside the analytic
share: the teacher's parameters x bytes per element / world size. Needs the `distributed` extra
(deepspeed); the embedded pair needs its packages (distill_trainer/models/embedded.py).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "distributed.md"
BEGIN, END = "<!-- distributed-memory:begin -->", "<!-- distributed-memory:end -->"
COMMAND = "python -m benchmarks.distributed_memory"
PAIRS = {  # name: (teacher, student); "tiny" is built in a temporary folder first
    "tiny": ("tiny teacher", "tiny student"),
    "qwen-0.5b-smollm2": ("embedded:qwen2.5-coder-0.5b", "embedded:smollm2-135m"),
}
STRATEGIES = ("ddp", "zero3")
PHASES = ("student_load", "teacher_load", "train")  # the peaks each process records, in this order
MIB = 2**20


def restart(meter) -> int:
    """The meter's anonymous peak since the start or the last restart; the next peak counts from now."""
    peak = meter.peak()
    meter.reset()
    return peak


# ---------------------------------------------------------------------------- one process of a launch


def worker(pair: str, teacher: str, student: str, strategy: str, steps: int, output: Path) -> None:
    import torch
    from datasets import Dataset

    from benchmarks.pairs import LABEL_WORDS, build_features, load_rows
    from distill_trainer import ContextDistillationTrainer, DistillationConfig, TwoViewCollator
    from distill_trainer.memory.needed import NeededMemoryMeter
    from distill_trainer.models.loading import load_causal_lm, load_tokenizer
    from distill_trainer.training.cpu_processes import deepspeed_on_cpu_processes

    meter = NeededMemoryMeter()
    torch.set_num_threads(1)  # two processes on two cores
    tokenizer, teacher_tokenizer = load_tokenizer(student), load_tokenizer(teacher)
    two_vocabularies = teacher_tokenizer.get_vocab() != tokenizer.get_vocab()
    demonstrations, rows, pattern, _ = load_rows(4, 2 * 2 * steps)
    features = build_features(
        tokenizer, pattern, demonstrations, rows, teacher_tokenizer if two_vocabularies else None
    )

    def label_ids(tok):
        return [tok(word, add_special_tokens=False)["input_ids"][0] for word in LABEL_WORDS]

    with tempfile.TemporaryDirectory() as scratch:
        args = DistillationConfig(
            output_dir=scratch,
            per_device_train_batch_size=2,
            max_steps=steps,
            optim="sgd",
            learning_rate=1e-4,
            distill_vocab="label_words" if two_vocabularies else "full",
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=strategy == "ddp",
            **(deepspeed_on_cpu_processes(3) if strategy == "zero3" else {}),
        )
        model = load_causal_lm(student)  # after the arguments: under ZeRO-3, created partitioned
        peaks = {"student_load": restart(meter)}
        before = meter.anon_now()
        trainer = ContextDistillationTrainer(  # loads and places the teacher
            model=model,
            teacher=teacher,
            args=args,
            train_dataset=Dataset.from_list(features),
            data_collator=TwoViewCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            teacher_tokenizer=teacher_tokenizer if two_vocabularies else None,
            label_token_ids=label_ids(tokenizer),
            teacher_label_token_ids=label_ids(teacher_tokenizer),
        )
        after = meter.anon_now()
        peaks["teacher_load"] = restart(meter)
        trainer.train()
        peaks["train"] = restart(meter)
    parameters = list(trainer.teacher.model.parameters())
    rank = trainer.accelerator.process_index
    report = {
        "pair": pair,
        "strategy": strategy,
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "teacher_numel": sum(getattr(p, "ds_numel", p.numel()) for p in parameters),
        "teacher_local_numel": sum(
            p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in parameters
        ),
        "teacher_element_size": parameters[0].element_size(),
        "anon_before_teacher": before,
        "anon_after_teacher": after,
        "anon_peaks": peaks,
        "steps": steps,
    }
    Path(output, f"{pair}-{strategy}-rank{rank}.json").write_text(json.dumps(report, indent=1))


# ---------------------------------------------------------------------------- the launches and the table


def launch(pair: str, teacher: str, student: str, strategy: str, steps: int, output: Path) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "benchmarks.distributed_memory", "--worker", pair, teacher, student, strategy]
    command += ["--steps", str(steps), "--output", str(output)]
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        DS_ACCELERATOR="cpu",
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        # freed tensors go back to the system at once, so RssAnon follows what is alive
        MALLOC_MMAP_THRESHOLD_="131072",
    )
    print(f"[distributed_memory] {pair} {strategy}", file=sys.stderr)
    subprocess.run(command, env=env, cwd=REPO, check=True)


def table(reports: list[dict]) -> str:
    lines = [
        "| pair | strategy | process | teacher parameters held | analytic share | teacher resident "
        "(RssAnon after - before placing it) | peak RssAnon: loading the student | loading the teacher "
        "| training |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(reports, key=lambda r: (list(PAIRS).index(r["pair"]), r["strategy"], r["rank"])):
        whole = r["teacher_numel"] * r["teacher_element_size"]
        analytic = whole / (r["world_size"] if r["strategy"] == "zero3" else 1)
        held = r["teacher_local_numel"] / r["teacher_numel"]
        lines.append(
            f"| {r['pair']} | {r['strategy']} | {r['rank']} of {r['world_size']} | "
            f"{r['teacher_local_numel']:,} of {r['teacher_numel']:,} ({held:.1%}) | "
            f"{analytic / MIB:,.1f} MiB of {whole / MIB:,.1f} | "
            f"{(r['anon_after_teacher'] - r['anon_before_teacher']) / MIB:,.1f} MiB | "
            + " | ".join(f"{r['anon_peaks'][phase] / MIB:,.0f} MiB" for phase in PHASES)
            + " |"
        )
    return "\n".join(lines)


def write_into_doc(text: str, command: str) -> None:
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} block to write the table into")
    block = f"{BEGIN}\nWritten by `{command}`:\n\n{text}\n{END}"
    head, rest = doc.split(BEGIN, 1)
    DOC.write_text(head + block + rest.split(END, 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated: {', '.join(PAIRS)}")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated: ddp, zero3")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table; leave the docs alone")
    parser.add_argument("--worker", nargs=4, metavar=("PAIR", "TEACHER", "STUDENT", "STRATEGY"))
    parser.add_argument("--output", help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.worker:
        worker(*a.worker, a.steps, Path(a.output))
        return
    pairs = a.pairs.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch)
        for pair in pairs:
            teacher, student = PAIRS[pair]
            if pair == "tiny":
                teacher, student = build_tiny(output)
            for strategy in a.strategies.split(","):
                launch(pair, teacher, student, strategy, a.steps, output)
        reports = [json.loads(p.read_text()) for p in sorted(output.glob("*-rank*.json"))]
    text = table(reports)
    print(text)
    if not a.no_write:
        flags = "" if a.pairs == ",".join(PAIRS) else f" --pairs {a.pairs}"
        flags += "" if a.strategies == ",".join(STRATEGIES) else f" --strategies {a.strategies}"
        write_into_doc(text, f"{COMMAND}{flags}" + (f" --steps {a.steps}" if a.steps != 3 else ""))


def build_tiny(folder: Path) -> tuple[str, str]:
    """(teacher, student) folders of the tiny models the tests build (tests/conftest.py `tiny_dirs`)."""
    from distill_trainer.testing import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    for name, seed, width in (("student", 0, 32), ("teacher", 1, 48)):
        build_model(len(tokenizer), seed=seed, hidden_size=width).save_pretrained(folder / name)
        tokenizer.save_pretrained(folder / name)
    return str(folder / "teacher"), str(folder / "student")


if __name__ == "__main__":
    main()
