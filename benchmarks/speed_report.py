"""The speed benchmark's report: the variants' step times and memory, the goals, the ICL evaluation and
the teacher pass, as markdown (speed.py measures; this writes)."""

from __future__ import annotations

if __package__:  # imported as benchmarks.speed_report
    from benchmarks import flops
    from benchmarks.pairs import PATTERN
else:  # imported by speed.py run as a script: its own directory is on sys.path
    import flops
    from pairs import PATTERN

VARIANT_NAMES = {
    "a": "(a) fine-tuning step, student alone (floor)",
    "b": "(b) naive distillation, TRL-style (full logits + generalized_jsd_loss)",
    "c": "(c) ours: answer-only logits",
    "d": "(d) ours + teacher prefix KV cache",
    "e": "(e) ours + teacher output cache",
}


def goals(pair: dict) -> list[str]:
    v, icl = pair["variants"], pair["icl"]
    lines = []

    def check(label, ok, detail):
        lines.append(f"- {label}: {'met' if ok else 'NOT met'} ({detail})")

    check("(d) <= 1.5x (a)", v["d"]["ratio_to_a"] <= 1.5, f"{v['d']['ratio_to_a']:.2f}x")
    check("(e) <= 1.1x (a)", v["e"]["ratio_to_a"] <= 1.1, f"{v['e']['ratio_to_a']:.2f}x")
    if "b" in v:
        speedup = v["b"]["median_s"] / v["c"]["median_s"]
        check("(c) >= 2x faster than (b)", speedup >= 2, f"{speedup:.2f}x")
        check(
            "(c) extra memory <= half of (b)'s",
            v["c"]["extra_mib"] <= 0.5 * v["b"]["extra_mib"],
            f"{v['c']['extra_mib']:.0f} vs {v['b']['extra_mib']:.0f} MiB",
        )
        check(
            "(c) peak <= half of (b)'s",
            v["c"]["peak_mib"] <= 0.5 * v["b"]["peak_mib"],
            f"{v['c']['peak_mib']:.0f} vs {v['b']['peak_mib']:.0f} MiB; extra {v['c']['extra_mib']:.0f} vs "
            f"{v['b']['extra_mib']:.0f} MiB",
        )
    plain, few, many = icl["no_prefix_cache"], icl["prefix_cache"], icl["prefix_cache_many"]
    speedup = plain["per_query_s"] / many["per_query_s"]
    check(
        "ICL eval with prefix cache >= 5x faster",
        speedup >= 5,
        f"{speedup:.1f}x per query over {many['queries']} queries; "
        f"{plain['median_s'] / few['median_s']:.1f}x over {few['queries']}, where the one-off prefix pass "
        "weighs more",
    )
    return lines


def teacher_pass_lines(run: dict | None) -> list[str]:
    if not run:
        return []
    return [
        f"Teacher pass (label words, prefix cache, batch {run['batch_size']}, {run['queries']} queries): "
        f"{run['per_query_s']:.3f} s per query for {run['gflop_per_query']:.1f} GFLOP, {run['gflops']:.0f} "
        f"GFLOP/s = {run['peak_share']:.0%} of the probe's fp32 peak (`python -m benchmarks.teacher_pass` "
        "shows where the rest goes).",
        "",
    ]


def pair_lines(pair: dict) -> list[str]:
    """One pair's section: the variants' steps, the output cache, the teacher pass, ICL and the goals."""
    out = [
        f"## {pair['models']}",
        "",
        f"Teacher {pair['teacher_parameters'] / 1e6:.0f}M parameters, student "
        f"{pair['student_parameters'] / 1e6:.0f}M; tokens per example: teacher view "
        f"{pair['teacher_tokens']:.0f} (shared prefix {pair['prefix_tokens']}), student view "
        f"{pair['student_tokens']:.0f}.",
        "",
        "| variant | step (s) | x (a) | extra memory (MiB) | peak memory (MiB) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for key, v in pair["variants"].items():
        out.append(
            f"| {VARIANT_NAMES[key]} | {v['median_s']:.2f} | {v['ratio_to_a']:.2f} | "
            f"{v['extra_mib']:.0f} | {v['peak_mib']:.0f} |"
        )
    e, icl = pair["variants"]["e"], pair["icl"]
    plain = icl["no_prefix_cache"]
    if pair.get("b_skipped"):
        out += ["", pair["b_skipped"] + "."]
    out += [
        "",
        f"Output cache, one-off teacher pass (with the prefix cache) before training: "
        f"{e['cache_build_s']:.1f} s for {e['cache_build_examples']} examples. Prefix KV cache of "
        f"(d): {pair['prefix_cache_mib']:.0f} MiB.",
        "",
        *teacher_pass_lines(pair.get("teacher_pass")),
        "ICL evaluation of the teacher (label-word scoring; the prefix-cached runs include their "
        "one-off pass over the demonstrations):",
        "",
        "| ICL evaluation | queries | total (s) | per query (s) | speed-up per query | extra memory (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, label in (
        ("no_prefix_cache", "without prefix cache"),
        ("prefix_cache", "with prefix cache"),
        ("prefix_cache_many", "with prefix cache"),
    ):
        run = icl[name]
        out.append(
            f"| {label} | {run['queries']} | {run['median_s']:.2f} | {run['per_query_s']:.3f} | "
            f"{plain['per_query_s'] / run['per_query_s']:.1f} | {run['extra_mib']:.0f} |"
        )
    out += [
        "",
        f"Label-word log-probs with vs without the prefix cache: max abs diff "
        f"{icl['max_abs_logprob_diff']:.1e}.",
        "",
        "Goals:",
        "",
        *goals(pair),
        "",
    ]
    return out


def markdown(report: dict) -> str:
    o = report["settings"]
    out = [
        "# Speed benchmark",
        "",
        f"Command: `{report['command']}` ({report['total_seconds'] / 60:.1f} min)  ",
        f"Machine: {report['machine']}, load average {report['load_average']} at the start; torch "
        f"{report['torch']}, transformers {report['transformers']}, trl {report['trl'] or 'not installed'}  ",
        f"Device `{o.get('device', 'cpu')}`{' (' + report['gpu'] + ')' if report.get('gpu') else ''}; "
        "memory columns: "
        f"{'CUDA allocated bytes' if report.get('memory_method') == 'cuda_allocated' else 'resident bytes'}"
        ".  ",
        f"Batch {o['batch_size']}, {o['demonstrations']} demonstrations ({PATTERN} pattern, MNLI rows), "
        f"fp32, AdamW on the whole student; median of {o['steps']} steps after {o['warmup']} warm-up, the "
        "variants interleaved step by step.",
        "",
    ]
    if report.get("probe"):
        out += [*flops.markdown(report["probe"]), ""]
    for pair in report["pairs"]:
        out += pair_lines(pair)
    out += [
        "Extra memory: the largest rise of resident memory (kernel high-water mark; on CUDA, of allocated "
        "bytes) during one step "
        "of the variant: gradients, activations, logits, temporary KV caches. Peak memory: extra + what "
        "the variant keeps resident: student weights and AdamW state, the teacher's weights for (b), (c), "
        "(d), and the demonstrations' KV cache for (d).",
        "",
    ]
    return "\n".join(out)
