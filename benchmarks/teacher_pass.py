"""The teacher's output-cache pass at the real teacher's scale: which inference settings are fastest, and do
they keep the teacher's predictions?

    python -m benchmarks.teacher_pass                       # Qwen2.5-Coder-1.5B (embedded), 32 MNLI queries
    python -m benchmarks.teacher_pass --queries 64 --only baseline "batch 16" "bf16 weights"
    python -m benchmarks.teacher_pass --compile             # + torch.compile (slow to compile on a CPU)
    python -m benchmarks.teacher_pass --quick               # tiny random model: a smoke test

It runs the library's own label-word pass (`output_cache.compute_teacher_outputs` through the prefix KV
cache, as `teacher_output_cache: true` does) over the main job's prompt (the gpt3 pattern, its k fixed
demonstrations and its MNLI training queries, read from `--config` with the recipes' data loading), once
per setting: torch threads, batch size, length-sorted batches or not, bf16 (autocast, or weights
converted), SDPA or eager attention, optionally `torch.compile`. Each reports seconds per query, the
achieved GFLOP/s (FLOPs a query needs, `benchmarks/flops.py`; padding not counted) and its share of this
machine's fp32 matmul peak (the probe, at the same thread count), and against the baseline setting: the
agreement of the label-word predictions and the largest label-word log-probability difference. A setting
is kept when it is faster by more than the noise (5%) and agrees on >= 99% of queries with log-probs
within `--logprob-tolerance` (0.05 nats: the distillation targets then move by at most ~5% relative, well
inside the spread of ICL over demonstration seeds). One baseline batch is also profiled by operator, to
show where the time goes. Results: results/teacher-pass/teacher_pass.{md,json}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

# sleeping OpenMP threads: spinning ones lose most of their time on a shared machine (see speed.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

if __package__:  # python -m benchmarks.teacher_pass, or imported
    from benchmarks import flops  # noqa: E402
    from benchmarks.pairs import load_teacher  # noqa: E402
else:  # run as a script: its own directory is on sys.path
    import flops  # noqa: E402
    from pairs import load_teacher  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEACHER = "embedded:qwen2.5-coder-1.5b"
# the main job's prompt, training queries' source and demonstrations
DEFAULT_CONFIG = REPO / "recipes" / "configs" / "embedded" / "compare.yaml"
MIN_AGREEMENT = 0.99
MIN_SPEEDUP = 1.05  # faster than the baseline by more than run-to-run noise
# --quick: the mechanics of each kind of change, on a model too small to time
QUICK_SETTINGS = ("baseline", "packed", "batch 1", "unsorted", "bf16 autocast", "torch.compile")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    threads: int
    batch_size: int = 8
    sort: bool = True  # length-sorted batches (compute_teacher_outputs' default)
    precision: str = "fp32"  # fp32 | bf16-autocast | bf16-weights
    attention: str = "sdpa"  # sdpa | eager
    compile: bool = False
    pack: bool = True  # suffixes packed without padding (TeacherAnswerLogits' default)

    def describe(self) -> str:
        return (
            f"{self.precision}, {self.attention}, batch {self.batch_size}, "
            f"{'packed' if self.pack else 'padded'}, "
            f"{'sorted' if self.sort else 'unsorted'}, {self.threads} thread{'s' * (self.threads > 1)}"
            + (", torch.compile" if self.compile else "")
        )


def default_settings(threads: int, with_compile: bool) -> list[Setting]:
    """The baseline (the padded pass `teacher_output_cache: true` ran before packing, at the Trainer's
    default eval batch of 8), then one change at a time. bf16 weights convert the model in place (it is
    reloaded in fp32 for any setting after them)."""
    base = Setting("baseline", threads, pack=False)
    packed = dataclasses.replace(base, name="packed", pack=True)
    settings = [
        base,
        packed,
        dataclasses.replace(packed, name="packed, batch 16", batch_size=16),
        dataclasses.replace(base, name="batch 1", batch_size=1),
        dataclasses.replace(base, name="batch 4", batch_size=4),
        dataclasses.replace(base, name="batch 16", batch_size=16),
        dataclasses.replace(base, name="unsorted", sort=False),
        dataclasses.replace(base, name="eager attention", attention="eager"),
        dataclasses.replace(base, name="bf16 autocast", precision="bf16-autocast"),
    ]
    if threads > 1:
        settings.append(dataclasses.replace(base, name="1 thread", threads=1))
    if with_compile:
        settings.append(dataclasses.replace(base, name="torch.compile", compile=True))
    settings += [
        dataclasses.replace(base, name="bf16 weights", precision="bf16-weights"),
        dataclasses.replace(packed, name="packed, bf16 weights", precision="bf16-weights"),
    ]
    return settings


# ---------------------------------------------------------------------------- data and model


def load_data(tokenizer, config_path, queries: int, quick: bool):
    """(view dataset, label-word token ids, prefix length): the recipes' data path, fed the prompt fields
    of a recipe YAML; `--quick` reads the test fixture slice instead."""
    import yaml

    from distill_trainer.nli.arguments import DataArguments
    from distill_trainer.nli.data import build_view_dataset, first_token_ids, prepare_data

    if quick:
        fields = dict(task="mnli", pattern="gpt3", k=2, data_dir=str(REPO / "tests" / "data"))
        fields.update(num_eval_examples=4, num_train_examples=queries, data_source="local")
    else:
        names = {f.name for f in dataclasses.fields(DataArguments)}
        recipe = yaml.safe_load(Path(config_path).read_text())
        fields = {k: v for k, v in recipe.items() if k in names}
        # only the training pool's queries are read; evaluation rows are still excluded from them
        fields.update(num_train_examples=queries, eval_tasks=[fields.get("task", "mnli")])
    data = prepare_data(DataArguments(**fields))
    dataset = build_view_dataset(tokenizer, data.train_rows, data.pattern, data.sampler)
    return dataset, first_token_ids(tokenizer, data.pattern), int(dataset[0]["teacher_prefix_length"])


# ---------------------------------------------------------------------------- one setting


def batch_plan(lengths: list[int], batch_size: int, sort: bool) -> list[list[int]]:
    """The row indices of each batch, in the order compute_teacher_outputs forms them."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if sort else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def padding_share(suffix_lengths: list[int], batch_size: int, sort: bool, pack: bool = False) -> float:
    """Padded tokens / all tokens the teacher runs over (the suffixes; the prefix is never padded).
    Packed suffixes have none."""
    if pack:
        return 0.0
    total = real = 0
    for rows in batch_plan(suffix_lengths, batch_size, sort):
        total += len(rows) * max(suffix_lengths[i] for i in rows)
        real += sum(suffix_lengths[i] for i in rows)
    return 1 - real / total


def run_setting(model, dataset, collator, label_ids, setting: Setting) -> dict:
    """One full label-word pass under `setting`: (label log-probs per row, seconds, one-off seconds)."""
    from distill_trainer.teacher.output_cache import compute_teacher_outputs
    from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits

    torch.set_num_threads(setting.threads)
    if setting.precision == "bf16-weights" and model.dtype != torch.bfloat16:
        model.to(torch.bfloat16)
    model.set_attn_implementation(setting.attention)
    runner, forward = TeacherAnswerLogits(pack=setting.pack), model
    if setting.compile:
        forward = torch.compile(model, dynamic=True)
    autocast = (
        torch.autocast("cpu", dtype=torch.bfloat16)
        if setting.precision == "bf16-autocast"
        else contextlib.nullcontext()
    )

    def run(rows, batch_size):
        return compute_teacher_outputs(
            lambda batch: runner(forward, batch),
            rows,
            collator,
            distill_vocab="label_words",
            temperature=1.0,
            label_token_ids=label_ids,
            batch_size=batch_size,
            sort_by_length=setting.sort,
        )["teacher_label_logprobs"]

    with autocast:
        # one-off: the prefix KV cache (the demonstrations' forward), first-call costs, compilation (on a
        # whole batch, so that the compiled graph's batch dimension is not specialised to one row)
        start = time.perf_counter()
        run(dataset.select(range(setting.batch_size if setting.compile else 1)), setting.batch_size)
        one_off = time.perf_counter() - start
        start = time.perf_counter()
        logprobs = run(dataset, setting.batch_size)
        seconds = time.perf_counter() - start
    return {"logprobs": logprobs, "seconds": seconds, "one_off_s": one_off}


def compare(logprobs: list, reference: list) -> dict:
    a, b = torch.tensor(logprobs), torch.tensor(reference)
    return {
        "agreement": float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "max_abs_logprob_diff": float((a - b).abs().max()),
    }


# ---------------------------------------------------------------------------- where the time goes


def profile_batch(model, dataset, collator, label_ids, batch_size: int, top: int = 10) -> dict:
    """Self CPU time by operator over one baseline batch (prefix cache built beforehand, not profiled)."""
    from torch.profiler import ProfilerActivity, profile

    from distill_trainer.teacher.output_cache import compute_teacher_outputs
    from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits

    runner = TeacherAnswerLogits(pack=False)  # the baseline's padded batch
    rows = dataset.select(range(min(batch_size, len(dataset))))
    options = dict(distill_vocab="label_words", temperature=1.0, label_token_ids=label_ids)
    compute_teacher_outputs(lambda b: runner(model, b), rows.select([0]), collator, batch_size=1, **options)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        compute_teacher_outputs(lambda b: runner(model, b), rows, collator, batch_size=batch_size, **options)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: -e.self_cpu_time_total)
    # dense matmuls: the linear layers and the LM head (what the probe measures)
    matmul = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm"))
    attention = sum(e.self_cpu_time_total for e in events if "attention" in e.key or "softmax" in e.key)
    return {
        "rows": len(rows),
        "total_s": total / 1e6,
        "matmul_share": matmul / total,
        "attention_share": attention / total,
        "matmul_s": matmul / 1e6,
        "top": [
            {"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total}
            for e in events[:top]
        ],
    }


# ---------------------------------------------------------------------------- report


def markdown(report: dict) -> str:
    base = report["results"][0]
    out = [
        "# Teacher output-cache pass: settings",
        "",
        f"Command: `{report['command']}` ({report['total_seconds'] / 60:.1f} min)  ",
        f"Machine: {report['machine']}; load average {report['load_average']} at the start; torch "
        f"{report['torch']}, transformers {report['transformers']}  ",
        f"Teacher: {report['teacher']} ({report['parameters']['body'] / 1e6:.0f}M non-embedding parameters); "
        f"{report['queries']} MNLI queries behind a {report['prefix_tokens']}-token prefix (the "
        f"demonstrations, through the prefix KV cache), {report['suffix_tokens_mean']:.1f} query tokens on "
        "average; label-word pass (`distill_vocab: label_words`).  ",
        f"FLOPs per query: {report['gflop_per_query']:.1f} GFLOP (2 x non-embedding parameters x tokens + "
        "attention over prefix and query + the LM head at the answer position; padding not counted); the "
        f"one-off prefix pass: {report['prefix_gflop']:.0f} GFLOP.",
        "",
        *flops.markdown(report["probe"][str(report["threads"])]),
    ]
    if report["threads"] != 1 and report["probe"].get("1"):
        out += ["", f"With 1 thread: fp32 peak {report['probe']['1']['peak']['fp32']:.0f} GFLOP/s."]
    out += [
        "",
        f"Settings (agreement and log-prob difference against the baseline; kept: faster by > "
        f"{(MIN_SPEEDUP - 1) * 100:.0f}%, agreement >= {MIN_AGREEMENT:.0%}, max |log-prob diff| <= "
        f"{report['logprob_tolerance']}):",
        "",
        "| setting | what runs | s / query | x baseline | GFLOP/s | % fp32 peak | padding | agreement | "
        "max abs log-prob diff | one-off (s) | kept |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["results"]:
        out.append(
            f"| {r['name']} | {r['describe']} | {r['per_query_s']:.3f} | "
            f"{r['per_query_s'] / base['per_query_s']:.2f} | {r['gflops']:.0f} | {r['peak_share']:.0%} | "
            f"{r['padding']:.0%} | {r['agreement']:.3f} | {r['max_abs_logprob_diff']:.1e} | "
            f"{r['one_off_s']:.1f} | {'yes' if r['kept'] else 'no'} |"
        )
    out += ["", f"**Chosen**: {report['choice']}", ""]
    if report.get("note"):
        out += [report["note"], ""]
    p = report.get("profile")
    if p:
        rest = 1 - p["matmul_share"] - p["attention_share"]
        out += [
            f"Where the baseline's time goes (torch.profiler, one batch of {p['rows']}, self CPU time "
            f"{p['total_s']:.2f} s): dense matmuls (`mm`/`addmm`/`bmm`) {p['matmul_share']:.0%} at "
            f"{p['matmul_gflops']:.0f} GFLOP/s ({p['matmul_gflops'] / report['peak_fp32']:.0%} of the "
            f"probe's fp32 peak), attention {p['attention_share']:.0%}, the rest {rest:.0%}.",
            "",
            "| operator | self (s) | share |",
            "| --- | ---: | ---: |",
            *[f"| `{t['op']}` | {t['self_s']:.3f} | {t['share']:.0%} |" for t in p["top"]],
            "",
        ]
    return "\n".join(out)


def choose(results: list[dict], tolerance: float) -> str:
    base = results[0]
    for r in results[1:]:
        r["kept"] = (
            r["per_query_s"] * MIN_SPEEDUP < base["per_query_s"]
            and r["agreement"] >= MIN_AGREEMENT
            and r["max_abs_logprob_diff"] <= tolerance
        )
    base["kept"] = True
    kept = [r for r in results[1:] if r["kept"]]
    if not kept:
        return f"the baseline ({base['describe']}): no other setting is both faster and as accurate."
    best = min(kept, key=lambda r: r["per_query_s"])
    return (
        f"{best['name']} ({best['describe']}), {base['per_query_s'] / best['per_query_s']:.2f}x faster than "
        f"the baseline with agreement {best['agreement']:.3f} and max |log-prob diff| "
        f"{best['max_abs_logprob_diff']:.1e}."
    )


def parse_options(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model, fixture data: a smoke test")
    parser.add_argument("--teacher", default=TEACHER)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML whose prompt is used")
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="the baseline's threads (default: all)")
    parser.add_argument("--only", nargs="+", default=None, help="setting names to run (baseline always)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--no-profile", action="store_true", help="skip the operator profile")
    parser.add_argument("--logprob-tolerance", type=float, default=0.05)
    parser.add_argument("--output-dir", default=str(REPO / "results" / "teacher-pass"))
    options = parser.parse_args(argv)
    if options.quick:
        options.queries = min(options.queries, 8)
    return options


def probe_threads(threads: int, quick: bool) -> dict:
    """{threads: the matmul probe} for all threads and for one (the quick run: all only)."""
    shapes, seconds = (flops.QUICK_SHAPES, 0.05) if quick else (None, 0.5)
    probes = {}
    for n in sorted({threads, 1} if not quick else {threads}, reverse=True):
        torch.set_num_threads(n)
        probes[str(n)] = flops.probe(shapes, seconds)
        print(f"[teacher-pass] probe, {n} threads: peak GFLOP/s {probes[str(n)]['peak']}", flush=True)
    return probes


def profile_first_batch(model, dataset, collator, label_ids, threads: int, suffix_lengths, answers) -> dict:
    """profile_batch on the baseline's first batch, with the GFLOP/s its dense layers reached."""
    torch.set_num_threads(threads)
    profile = profile_batch(model, dataset, collator, label_ids, Setting("baseline", threads).batch_size)
    # what the dense layers need for that batch, padding included (the matmuls run over it)
    rows, split = profile["rows"], flops.parameter_split(model)
    padded = rows * max(suffix_lengths[:rows])  # profile_batch ran the first rows as one batch
    matmul_flops = 2.0 * split["body"] * padded + 2.0 * split["head"] * sum(answers[:rows])
    profile["matmul_gflops"] = matmul_flops / profile["matmul_s"] / 1e9
    print(f"[teacher-pass] profile: matmuls {profile['matmul_share']:.0%} of the time", flush=True)
    return profile


def measure(
    model, dataset, collator, label_ids, setting: Setting, work: dict, reference
) -> tuple[dict, list]:
    """One setting's pass: (its speed against the probe's peak and its log-probs against the reference's,
    its log-probs)."""
    run = run_setting(model, dataset, collator, label_ids, setting)
    reference = reference if reference is not None else run["logprobs"]
    total_flops = sum(work["query_flops"])
    peak = work["probes"].get(str(setting.threads), work["probes"][str(work["threads"])])["peak"]["fp32"]
    result = {
        "name": setting.name,
        "describe": setting.describe(),
        "setting": dataclasses.asdict(setting),
        "seconds": run["seconds"],
        "one_off_s": run["one_off_s"],
        "per_query_s": run["seconds"] / len(dataset),
        "gflops": total_flops / run["seconds"] / 1e9,
        "peak_share": total_flops / run["seconds"] / 1e9 / peak,
        "padding": padding_share(work["suffix_lengths"], setting.batch_size, setting.sort, setting.pack),
        **compare(run["logprobs"], reference),
    }
    print(
        f"[teacher-pass]   {result['per_query_s']:.3f} s/query, {result['gflops']:.0f} GFLOP/s "
        f"({result['peak_share']:.0%} of fp32 peak), agreement {result['agreement']:.3f}, max diff "
        f"{result['max_abs_logprob_diff']:.1e}",
        flush=True,
    )
    return result, run["logprobs"]


def write_report(facts: dict, results: list[dict], profile, options, started: float) -> dict:
    """The report so far: written after every setting, so an interrupted run keeps what it measured."""
    choice = choose(results, options.logprob_tolerance)
    report = {
        **facts,
        "logprob_tolerance": options.logprob_tolerance,
        "results": results,
        "choice": choice,
        "profile": profile,
        "total_seconds": time.perf_counter() - started,
    }
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stem = "teacher_pass-quick" if options.quick else "teacher_pass"
    (output / f"{stem}.json").write_text(json.dumps(report, indent=1))
    (output / f"{stem}.md").write_text(markdown(report))
    return report


def main(argv=None) -> dict:
    options = parse_options(argv)
    import transformers

    from distill_trainer.views.text import TwoViewCollator

    started = time.perf_counter()
    load_average = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    threads = options.threads or torch.get_num_threads()
    model, tokenizer, teacher_name = load_teacher(options.teacher, options.quick)
    model.eval().requires_grad_(False)
    dataset, label_ids, prefix = load_data(tokenizer, options.config, options.queries, options.quick)
    collator = TwoViewCollator(tokenizer.pad_token_id)
    suffix_lengths = [len(ids) - prefix for ids in dataset["teacher_input_ids"]]
    answers = [len(ids) for ids in dataset["answer_ids"]]
    query_flops = [flops.forward_flops(model, s, prefix, a) for s, a in zip(suffix_lengths, answers)]
    probes = probe_threads(threads, options.quick)
    profile = None
    if not options.no_profile:  # before the settings: the last ones convert the weights to bf16
        profile = profile_first_batch(model, dataset, collator, label_ids, threads, suffix_lengths, answers)

    settings = default_settings(threads, options.compile)
    if options.quick:
        settings = [s for s in settings if s.name in QUICK_SETTINGS]
    if options.only:
        settings = [s for s in settings if s.name == "baseline" or s.name in options.only]
    arguments = sys.argv[1:] if argv is None else argv
    facts = {
        "command": shlex.join(["python", "-m", "benchmarks.teacher_pass", *arguments]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {threads} torch threads",
        "load_average": load_average,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "teacher": teacher_name,
        "parameters": flops.parameter_split(model),
        "threads": threads,
        "queries": len(dataset),
        "prefix_tokens": prefix,
        "suffix_tokens_mean": statistics.mean(suffix_lengths),
        "gflop_per_query": statistics.mean(query_flops) / 1e9,
        "prefix_gflop": flops.forward_flops(model, prefix, 0, 0) / 1e9,
        "probe": probes,
        "peak_fp32": probes[str(threads)]["peak"]["fp32"],
    }
    work = {
        "query_flops": query_flops,
        "probes": probes,
        "threads": threads,
        "suffix_lengths": suffix_lengths,
    }
    results, reference = [], None
    for setting in settings:
        print(f"[teacher-pass] {setting.name}: {setting.describe()}", flush=True)
        if setting.precision != "bf16-weights" and model.dtype == torch.bfloat16:  # back to the fp32 weights
            model = load_teacher(options.teacher, options.quick)[0].eval().requires_grad_(False)
        result, logprobs = measure(model, dataset, collator, label_ids, setting, work, reference)
        reference = reference if reference is not None else logprobs
        results.append(result)
        report = write_report(facts, results, profile, options, started)
    print(markdown(report))
    print(f"[teacher-pass] wrote {options.output_dir} in {report['total_seconds']:.0f} s")
    return report


if __name__ == "__main__":
    main()
