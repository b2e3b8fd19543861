"""Speed benchmark: what context distillation costs on top of fine-tuning, and what removes that cost.

    python benchmarks/speed.py                        # SmolLM2-135M (embedded), 16 demonstrations
    python benchmarks/speed.py --models smollm2-135m opt-125m opt-350m   # + OPT pairs (random init)
    python benchmarks/speed.py --quick                # tiny models, short prompts: a smoke test
    python benchmarks/speed.py --device cuda --models opt-1.3b   # on a GPU, the paper's OPT-1.3B -> OPT-125M
    python benchmarks/speed.py --models qwen-1.5b-0.5b qwen-1.5b-smollm2 --batch-size 2 --demonstrations 4 \
        --steps 2 --queries 4 --icl-queries 4 --icl-cached-queries 16 --icl-repeats 1 \
        --output-dir results/speed/qwen       # the real 1.5B teacher (embedded), a few minutes a pair

One process; per model pair one student, teacher, batch and set of 16 demonstrations. The variants run
interleaved, one optimizer step each per round (warm-up rounds first); each reports the median step
time and its ratio to the fine-tuning step (a):
  (a) pattern-based fine-tuning step of the student alone (cross-entropy on the label word): the floor
  (b) naive distillation as TRL does it: full-sequence logits for both models, and TRL's own
      `generalized_jsd_loss` (trl.experimental.gkd, beta=0: forward KL) masked to the answer positions
  (c) ours: answer-only logits for both models (ContextDistillationTrainer.compute_loss)
  (d) ours + teacher prefix KV cache (the demonstrations run through the teacher once)
  (e) ours + teacher output cache (teacher outputs computed once before training; no teacher at step time)
and ICL evaluation of the teacher (label-word scoring of queries behind the demonstrations) with and
without the prefix cache. Every step is forward + backward + AdamW update of the whole student, fp32.

Models: the embedded SmolLM2-135M-Instruct (teacher = student = the real weights) when its package is
installed, else a random-init model of its shape; OPT pairs are random-init from the published shapes
(`opt-1.3b`: the paper's OPT-1.3B teacher -> OPT-125M student, with a byte-level BPE trained on the query pool
when no real tokenizer is at hand). The real pairs load embedded checkpoints: `qwen-1.5b-0.5b` is the main
job's Qwen2.5-Coder-1.5B-Instruct teacher -> Qwen2.5-Coder-0.5B-Instruct (one tokenizer: full-vocabulary
KL), `qwen-1.5b-smollm2` the same teacher -> SmolLM2-135M-Instruct (different tokenizers: label-word KL,
each view built with its model's tokenizer; variant (b) does not apply there, since full-sequence logits
over two vocabularies and two tokenizations have no position-by-position match, and is skipped).

On CPU the report starts with a matmul probe (`benchmarks/flops.py`: this machine's fp32 / bf16 / int8
GFLOP/s) and, per pair, times the teacher's label-word output-cache pass (prefix cache built beforehand)
and compares its achieved GFLOP/s with the probe's fp32 peak; `benchmarks/teacher_pass.py` explores the
settings of that pass. On `--device cuda` steps are timed between CUDA synchronisations and the
memory columns are CUDA allocated bytes. Memory is explained at the end of the report. Results:
results/speed/speed.{md,json}.
TRL is needed for (b) only: pip install -e ".[bench]".
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# OpenMP threads that spin while waiting lose most of their time when the cores are shared with other
# processes (measured here: a forward 6x slower with 2 threads on a busy 2-core machine); sleeping instead
# costs nothing on an idle one. Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

from distill_trainer import ContextDistillationTrainer, DistillationConfig, TwoViewCollator  # noqa: E402
from distill_trainer.memory.breakdown import model_bytes, optimizer_state_bytes  # noqa: E402
from distill_trainer.memory.peak import CpuMemoryMeter  # noqa: E402
from distill_trainer.memory.units import MIB  # noqa: E402
from distill_trainer.views.text import SEPARATOR  # noqa: E402

if __package__:  # imported as benchmarks.speed
    from benchmarks import flops, teacher_pass  # noqa: E402
    from benchmarks.pairs import (  # noqa: E402
        LABEL_WORDS,
        PAIR_NAMES,
        batches,
        build_features,
        load_rows,
        model_pair,
        pair_with_tokenizers,
    )
    from benchmarks.speed_report import markdown  # noqa: E402
else:  # run as a script: its own directory is on sys.path
    import flops  # noqa: E402
    import teacher_pass  # noqa: E402
    from pairs import (  # noqa: E402
        LABEL_WORDS,
        PAIR_NAMES,
        batches,
        build_features,
        load_rows,
        model_pair,
        pair_with_tokenizers,
    )
    from speed_report import markdown  # noqa: E402

# ---------------------------------------------------------------------------- variants


def label_ids(tokenizer) -> list[int]:
    return [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in LABEL_WORDS]


def make_trainer(
    student, teacher, tmp, train_dataset=None, tokenizer=None, device="cpu", teacher_tokenizer=None, **config
):
    args = DistillationConfig(
        output_dir=os.path.join(tmp, "out"),
        report_to="none",
        use_cpu=device == "cpu",
        disable_tqdm=True,
        save_strategy="no",
        teacher_cache_dir=os.path.join(tmp, "cache"),
        **config,
    )
    return ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=train_dataset,
        data_collator=TwoViewCollator(tokenizer.pad_token_id, padding_side="left"),
        label_token_ids=label_ids(tokenizer),
        teacher_label_token_ids=label_ids(teacher_tokenizer) if teacher_tokenizer is not None else None,
    )


def ours_step(trainer):
    def step(batch):
        return trainer.compute_loss(trainer.model, batch)

    return step


def naive_trl_step(student, teacher):
    """Full (batch, sequence, vocab) logits for both models, then TRL's GKD loss on the answer positions."""
    from trl.experimental.gkd import GKDTrainer

    def step(batch):
        with torch.no_grad():
            teacher_logits = teacher(
                input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]
            ).logits
        student_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        length = student_logits.shape[1]
        # left padding: the views end alike, so the teacher's last `length` positions match the student's;
        # logits at position p predict token p + 1, hence the shift (as GKDTrainer does)
        return GKDTrainer.generalized_jsd_loss(
            student_logits[:, :-1], teacher_logits[:, -length:-1], labels=batch["labels"][:, 1:], beta=0.0
        )

    return step


def release_memory():
    gc.collect()
    try:  # hand freed heap pages back to the OS, so the next measurement starts from a true baseline
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def optimizer_step(loss_fn, batch, optimizer) -> float:
    loss = loss_fn(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


class CudaAllocatedMeter:
    """CUDA allocated bytes behind the CPU meter's interface (current, reset, peak)."""

    method = "cuda_allocated"

    def __init__(self, device):
        self.device = torch.device(device)

    def current(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def reset(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)


def synchronize(meter) -> None:
    if isinstance(meter, CudaAllocatedMeter):  # kernels run asynchronously: wait for them before the clock
        torch.cuda.synchronize(meter.device)


def timed(meter, fn):
    """(seconds, peak memory above the start) of one call: resident bytes on CPU, allocated bytes on CUDA."""
    release_memory()
    synchronize(meter)
    base = meter.current()
    meter.reset()
    start = time.perf_counter()
    out = fn()
    synchronize(meter)
    return time.perf_counter() - start, meter.peak() - base, out


def run_interleaved(variants: dict, student, rounds: int, warmup: int, meter) -> dict:
    """One optimizer step of every variant per round, round after round.

    Interleaving makes a slow patch of a shared machine hit every variant alike instead of whichever
    ran then. One AdamW serves all variants: its state exists after the first step, so a step's "extra"
    memory is what the variant itself allocates (gradients, activations, logits, caches).
    """
    student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    records = {key: {"times_s": [], "warmup_s": [], "extra": []} for key in variants}
    for r in range(rounds):
        for key, (label, loss_fn, batches_) in variants.items():
            step = functools.partial(optimizer_step, loss_fn, batches_[r % len(batches_)], optimizer)
            seconds, extra, loss = timed(meter, step)
            record = records[key]
            if r < warmup:
                record["warmup_s"].append(seconds)
            else:
                record["times_s"].append(seconds)
                record["extra"].append(extra)
            print(f"[speed]   round {r + 1}/{rounds} {label}: {seconds:.2f}s, loss {loss:.4f}", flush=True)
    adam_bytes = optimizer_state_bytes(optimizer)
    out = {}
    for key, record in records.items():
        out[key] = {
            "median_s": statistics.median(record["times_s"]),
            "times_s": record["times_s"],
            "warmup_s": record["warmup_s"],
            "extra_mib": max(record["extra"]) / MIB,
            "optimizer_state_mib": adam_bytes / MIB,
        }
    return out


def run_icl(teacher, tokenizer, rows, pattern, demonstrations, options, meter) -> dict:
    """Label-word scoring behind the demonstrations: `icl_queries` rows without and with the prefix cache
    (alternating), and `icl_cached_queries` rows with it, where the one-off prefix pass is amortised as in
    a real evaluation set. Without the cache, time grows linearly with the rows, so its per-query time
    holds for any count."""
    from distill_trainer.nli.evaluation import score_label_words

    texts = [pattern.query(row) for row in rows]
    block = SEPARATOR.join(demonstrations)
    runs = {
        "no_prefix_cache": (False, options.icl_queries),
        "prefix_cache": (True, options.icl_queries),
        "prefix_cache_many": (True, options.icl_cached_queries),
    }
    records = {name: {"times_s": [], "extra": []} for name in runs}
    scores = {}
    for _ in range(options.icl_repeats):
        for name, (prefix_cache, count) in runs.items():
            score = functools.partial(
                score_label_words,
                teacher,
                tokenizer,
                texts[:count],
                list(LABEL_WORDS),
                demonstrations=block,
                batch_size=options.batch_size,
                progress=False,
                prefix_cache=prefix_cache,
            )
            seconds, extra, scores[name] = timed(meter, score)
            records[name]["times_s"].append(seconds)
            records[name]["extra"].append(extra)
            print(f"[speed]   ICL {name}, {count} queries: {seconds:.2f}s", flush=True)
    first = options.icl_queries
    result = {
        "max_abs_logprob_diff": float(
            max(
                (scores["no_prefix_cache"].logprobs - scores[name].logprobs[:first]).abs().max()
                for name in ("prefix_cache", "prefix_cache_many")
            )
        )
    }
    for name, (_, count) in runs.items():
        median = statistics.median(records[name]["times_s"])
        result[name] = {
            "queries": count,
            "median_s": median,
            "times_s": records[name]["times_s"],
            "per_query_s": median / count,
            "extra_mib": max(records[name]["extra"]) / MIB,
        }
    return result


def time_teacher_pass(teacher, features, teacher_tokenizer, batch_size, probe) -> dict:
    """The teacher's label-word output-cache pass over the features (prefix cache built first, untimed):
    seconds per query and achieved GFLOP/s against the probe's fp32 peak."""
    from datasets import Dataset

    dataset = Dataset.from_list(features)
    setting = teacher_pass.Setting("speed", threads=torch.get_num_threads(), batch_size=batch_size)
    collator = TwoViewCollator(teacher_tokenizer.pad_token_id)
    run = teacher_pass.run_setting(teacher, dataset, collator, label_ids(teacher_tokenizer), setting)
    prefix = features[0]["teacher_prefix_length"]
    needed = sum(
        flops.forward_flops(teacher, len(f["teacher_input_ids"]) - prefix, prefix, len(f["answer_ids"]))
        for f in features
    )
    gflops = needed / run["seconds"] / 1e9
    return {
        "queries": len(features),
        "batch_size": batch_size,
        "per_query_s": run["seconds"] / len(features),
        "gflop_per_query": needed / len(features) / 1e9,
        "gflops": gflops,
        "peak_share": gflops / probe["peak"]["fp32"],
    }


# ---------------------------------------------------------------------------- one model pair


def load_pair(name: str, device: str, shared: dict):
    """(teacher, student, tokenizer, teacher tokenizer or None when the student's serves both,
    description), on `device`, the teacher frozen."""
    teacher_tokenizer = None
    with_tokenizers = pair_with_tokenizers(name)
    if with_tokenizers is not None:
        teacher, student, tokenizer, teacher_tokenizer, description = with_tokenizers
    else:
        with torch.device(device):  # random init straight on the GPU: a 1.3B init on the CPU takes a while
            teacher, student, tokenizer, description = model_pair(name, shared)
    teacher.eval().requires_grad_(False)
    return teacher.to(device), student.to(device), tokenizer, teacher_tokenizer, description


def run_pair(name, options, shared, meter):
    print(f"[speed] == {name} ==", flush=True)
    device = options.device
    teacher, student, tokenizer, teacher_tokenizer, description = load_pair(name, device, shared)
    # two vocabularies: the distillation runs over the label words, each model's own first tokens
    vocab = {"distill_vocab": "full" if teacher_tokenizer is None else "label_words"}
    demonstrations, rows, pattern, data_dir = load_rows(
        options.demonstrations, max(options.queries, options.icl_queries, options.icl_cached_queries)
    )
    features = build_features(tokenizer, pattern, demonstrations, rows[: options.queries], teacher_tokenizer)
    result = {
        "pair": name,
        "models": description,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "teacher_tokens": statistics.mean(len(f["teacher_input_ids"]) for f in features),
        "student_tokens": statistics.mean(len(f["input_ids"]) for f in features),
        "prefix_tokens": features[0]["teacher_prefix_length"],
        "data": str(data_dir.name),
        "distill_vocab": vocab["distill_vocab"],
    }
    if device == "cpu":
        result["teacher_pass"] = time_teacher_pass(
            teacher, features, teacher_tokenizer or tokenizer, options.batch_size, shared["probe"]
        )
    common = dict(tokenizer=tokenizer, device=device, teacher_tokenizer=teacher_tokenizer, **vocab)
    measured, prefix_cache_bytes = time_variants(
        student, teacher, features, common, options, shared, meter, result
    )
    # resident besides a step's own allocations: the weights the variant needs, the optimizer state, and
    # for (d) the demonstrations' KV cache
    student_bytes, teacher_bytes = model_bytes(student), model_bytes(teacher)
    resident = {
        "a": student_bytes,
        "b": student_bytes + teacher_bytes,
        "c": student_bytes + teacher_bytes,
        "d": student_bytes + teacher_bytes + prefix_cache_bytes,
        "e": student_bytes,
    }
    floor = measured["a"]["median_s"]
    for key, v in measured.items():
        v["ratio_to_a"] = v["median_s"] / floor
        v["resident_mib"] = resident[key] / MIB + v["optimizer_state_mib"]
        v["peak_mib"] = v["resident_mib"] + v["extra_mib"]
    result["variants"] = measured
    result["prefix_cache_mib"] = prefix_cache_bytes / MIB
    icl_tokenizer = teacher_tokenizer or tokenizer
    result["icl"] = run_icl(teacher, icl_tokenizer, rows, pattern, demonstrations, options, meter)
    return result


def time_variants(student, teacher, features, common: dict, options, shared: dict, meter, result: dict):
    """The variants' steps, interleaved: ({variant: timings}, bytes of the demonstrations' KV cache)."""
    from datasets import Dataset

    tokenizer, device = common["tokenizer"], common["device"]
    rounds = options.warmup + options.steps
    train = batches(features, options.batch_size, tokenizer.pad_token_id, rounds, device)
    with tempfile.TemporaryDirectory() as tmp:
        pbft = make_trainer(student, None, tmp, alpha=0.0, **common)
        answer_only = make_trainer(student, teacher, tmp, teacher_prefix_cache=False, **common)
        prefix = make_trainer(student, teacher, tmp, teacher_prefix_cache=True, **common)
        # (e): the one-off teacher pass (with the prefix cache) is timed apart; its steps never run the
        # teacher
        build_seconds, _, cached = timed(
            meter,
            functools.partial(
                make_trainer,
                student,
                teacher,
                tmp,
                train_dataset=Dataset.from_list(features),
                teacher_output_cache=True,
                per_device_eval_batch_size=options.batch_size,
                **common,
            ),
        )
        assert cached.teacher is None
        train_cached = batches(
            [cached.train_dataset[i] for i in range(len(features))],
            options.batch_size,
            tokenizer.pad_token_id,
            rounds,
            device,
        )
        variants = {"a": ("(a) fine-tuning", ours_step(pbft), train)}
        if shared["trl"] and common["teacher_tokenizer"] is None:
            variants["b"] = ("(b) naive TRL-style", naive_trl_step(student, teacher), train)
        elif common["teacher_tokenizer"] is not None:
            result["b_skipped"] = (
                "(b) skipped: teacher and student tokenize differently, so their full-sequence logits have "
                "neither the same positions nor the same vocabulary to compare"
            )
        variants |= {
            "c": ("(c) answer-only", ours_step(answer_only), train),
            "d": ("(d) + prefix cache", ours_step(prefix), train),
            "e": ("(e) + output cache", ours_step(cached), train_cached),
        }
        measured = run_interleaved(variants, student, rounds, options.warmup, meter)
        prefix_teacher = prefix.teacher.runner.prefix_teacher
        prefix_cache_bytes = sum(
            t.numel() * t.element_size()
            for layer in prefix_teacher._prefix_cache.layers
            for t in (layer.keys, layer.values)
        )
        del pbft, answer_only, prefix, cached
    measured["e"]["cache_build_s"] = build_seconds
    measured["e"]["cache_build_examples"] = len(features)
    return measured, prefix_cache_bytes


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, 1 warm-up + 2 steps: a smoke test")
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        help=f"model pairs: {PAIR_NAMES} (default: smollm2-135m)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, or cuda / cuda:N")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--demonstrations", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--queries", type=int, default=16, help="distinct training examples (cycled)")
    parser.add_argument(
        "--icl-queries", type=int, default=8, help="ICL rows scored without and with the cache"
    )
    parser.add_argument("--icl-cached-queries", type=int, default=64, help="ICL rows scored with the cache")
    parser.add_argument("--icl-repeats", type=int, default=2)
    parser.add_argument("--output-dir", default=str(REPO / "results" / "speed"))
    options = parser.parse_args(argv)
    if options.quick:  # everything runs, on tiny models and short prompts
        options.models = options.models or ["tiny"]
        options.steps, options.icl_repeats, options.demonstrations, options.batch_size = 2, 1, 4, 4
        options.queries, options.icl_queries, options.icl_cached_queries = 8, 8, 16
    options.models = options.models or ["smollm2-135m"]
    return options


def run_facts(options, argv, trl_version, gpu, meter, load_average: str, probe) -> dict:
    """What the report says about the run: command, machine, versions, settings, memory method, probe."""
    import transformers

    return {
        "command": "python benchmarks/speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch "
        "threads",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "trl": trl_version,
        "settings": {
            k: getattr(options, k)
            for k in (
                "batch_size",
                "demonstrations",
                "warmup",
                "steps",
                "queries",
                "icl_queries",
                "icl_cached_queries",
                "icl_repeats",
                "models",
                "device",
            )
        },
        "gpu": gpu,
        "cuda": torch.version.cuda if gpu else None,
        "memory_method": meter.method,
        "load_average": load_average,
        "probe": probe,
    }


def main(argv=None):
    options = parse_options(argv)

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:
        trl_version = None
        print('[speed] trl is not installed: variant (b) is skipped (pip install -e ".[bench]")')
    torch.manual_seed(0)
    load_average = " / ".join(f"{x:.1f}" for x in os.getloadavg())  # the machine may be shared: say how busy
    meter = CudaAllocatedMeter(options.device) if options.device.startswith("cuda") else CpuMemoryMeter()
    gpu = (
        torch.cuda.get_device_name(torch.device(options.device))
        if options.device.startswith("cuda")
        else None
    )
    probe = None
    if not options.device.startswith("cuda"):  # the CPU's floor for the teacher's arithmetic
        probe = flops.probe(flops.QUICK_SHAPES, 0.05) if options.quick else flops.probe()
        print(f"[speed] matmul probe: peak GFLOP/s {probe['peak']}", flush=True)
    shared = {"trl": trl_version is not None, "probe": probe}
    started = time.perf_counter()
    pairs = []
    for name in options.models:
        pairs.append(run_pair(name, options, shared, meter))
        release_memory()  # the pair's models are gone once run_pair returns
    report = {
        **run_facts(options, argv, trl_version, gpu, meter, load_average, probe),
        "total_seconds": time.perf_counter() - started,
        "pairs": pairs,
    }
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stem = "speed-quick" if options.quick else "speed"
    (output / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (output / f"{stem}.md").write_text(markdown(report))
    print(markdown(report))
    print(f"[speed] wrote {output / stem}.md and .json in {report['total_seconds']:.0f} s")


if __name__ == "__main__":
    main()
