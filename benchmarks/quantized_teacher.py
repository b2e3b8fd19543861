"""A quantized CPU teacher against the bfloat16 one: speed, label-word agreement, KL, weight bytes.

    python -m benchmarks.quantized_teacher --model embedded:qwen2.5-coder-1.5b --queries 48
    python -m benchmarks.quantized_teacher --model embedded:qwen2.5-coder-0.5b --queries 16 --no-bnb
    python -m benchmarks.quantized_teacher --quick          # tiny random model, fixture data: a smoke test

The pass is the library's label-word pass (`compute_teacher_outputs` through the prefix KV cache, packed
suffixes, batches of 8), over MNLI queries from the training pool behind the main job's prompt (its
pattern and k fixed demonstrations, from `--config`): the teacher output cache's pass, never evaluation
rows. Variants: the bfloat16 teacher; the same weights with every decoder linear layer replaced by
`Int8Linear` or `Int4Linear` (`distill_trainer.models.cpu_quantized`; embeddings, norms and the head stay
in bfloat16); and, unless `--no-bnb`, today's bitsandbytes 8-bit teacher. The quantized layers are built
from the bfloat16 weights, so what differs from the reference is the quantization alone.

Timing on a shared machine: one phase per variant, each holding the bfloat16 teacher and that variant only
(one quantized model in memory at a time), their passes run `--rounds` times, alternating; a variant's
median is divided by the bfloat16 median of its own phase. Agreement is the share of queries whose top
label word matches bfloat16's (its first phase); KL is the mean KL(bf16 || variant) of the label-word
distributions. Weight bytes are those of the decoder's linear layers (what quantization changes).
One bitsandbytes batch is profiled by operator.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # sleeping OpenMP threads: see benchmarks/speed.py
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from distill_trainer.code_digest import code_record  # noqa: E402
from distill_trainer.code_stamp import stamp_json, stamp_markdown  # noqa: E402

if __package__:
    from benchmarks.teacher_pass import DEFAULT_CONFIG, load_data  # noqa: E402
else:
    from teacher_pass import DEFAULT_CONFIG, load_data  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
BATCH_SIZE = 8
# the library's layers: 8-bit with its Hadamard rotation (the default), without it, and 4-bit
VARIANTS = {"int8": dict(bits=8), "int8 unrotated": dict(bits=8, rotation=1), "int4": dict(bits=4)}


def load_variant(name: str, variant: str, quick: bool):
    """(model, tokenizer) for one variant, in eval mode without gradients."""
    from distill_trainer.models.cpu_quantized import quantize_model_linears
    from distill_trainer.models.loading import load_causal_lm, load_tokenizer

    if quick:
        from distill_trainer.testing import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        model = build_model(len(tokenizer), seed=0, hidden_size=64).to(torch.bfloat16)
    elif variant == "bnb 8-bit":
        # bitsandbytes itself: on a CPU, load_causal_lm answers "8bit" with the library's own int8 layer
        from transformers import AutoModelForCausalLM

        from distill_trainer.models.loading import quantization_config, resolve_model_path

        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(name),
            quantization_config=quantization_config("8bit", compute_dtype=torch.bfloat16),
            device_map={"": "cpu"},
            dtype=torch.bfloat16,
        )
        tokenizer = load_tokenizer(name)
    else:
        model, tokenizer = load_causal_lm(name, dtype="bfloat16"), load_tokenizer(name)
    if variant in VARIANTS:
        start = time.perf_counter()
        quantize_model_linears(model, compute_dtype=torch.bfloat16, **VARIANTS[variant])
        print(f"[quantized-teacher] {variant}: quantized in {time.perf_counter() - start:.1f} s", flush=True)
    return model.eval().requires_grad_(False), tokenizer


def check_compiled_kernels() -> dict:
    """The compiled per-call kernels give the eager ones' outputs (4-bit: to rounding), and pay their
    one-off compilation here, outside the timed passes: {layer: seconds of its first compiled call}."""
    from distill_trainer.models import cpu_quantized

    torch.manual_seed(0)
    linear, x = torch.nn.Linear(256, 96), torch.randn(5, 256).to(torch.bfloat16)
    first_call = {}
    for layer_class in (cpu_quantized.Int8Linear, cpu_quantized.Int4Linear):
        layer = layer_class.from_float(linear, torch.bfloat16)
        cpu_quantized.compile_kernels = False
        eager = layer(x)
        cpu_quantized.compile_kernels = True
        start = time.perf_counter()
        compiled = layer(x)
        first_call[layer_class.__name__] = time.perf_counter() - start
        # int8: the same operations; 4-bit: the compiled unpacking rounds once (fused multiply-add) where
        # eager bfloat16 rounds twice, so weights may differ by one bfloat16 step
        difference = float((compiled.float() - eager.float()).norm() / eager.float().norm())
        if difference > (0 if layer_class is cpu_quantized.Int8Linear else 1e-2):
            raise AssertionError(
                f"{layer_class.__name__}: compiled and eager outputs differ ({difference:.1e})"
            )
    return first_call


def linear_weight_bytes(model) -> int:
    """Bytes of the decoder's linear layers (not the head): float, quantized, or bitsandbytes."""
    from distill_trainer.models.cpu_quantized import quantized_weight_bytes

    total = quantized_weight_bytes(model)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
            # bitsandbytes' layers subclass nn.Linear: an int8 weight, its scales as a parameter attribute
            for tensor in (module.weight, module.bias, getattr(module.weight, "SCB", None)):
                if tensor is not None:
                    total += tensor.numel() * tensor.element_size()
    return total


def label_pass(model, runner, dataset, collator, label_ids):
    from distill_trainer.teacher.output_cache import compute_teacher_outputs

    with torch.inference_mode():
        out = compute_teacher_outputs(
            lambda batch: runner(model, batch),
            dataset,
            collator,
            distill_vocab="label_words",
            temperature=1.0,
            label_token_ids=label_ids,
            batch_size=BATCH_SIZE,
        )
    return torch.tensor(out["teacher_label_logprobs"])


def compare(logprobs: torch.Tensor, reference: torch.Tensor) -> dict:
    kl = (reference.exp() * (reference - logprobs)).sum(-1)
    return {
        "agreement": float((logprobs.argmax(-1) == reference.argmax(-1)).float().mean()),
        "kl": float(kl.mean()),
        "max_abs_logprob_diff": float((logprobs - reference).abs().max()),
    }


def interleaved(models: dict, dataset, collator, label_ids, rounds: int) -> dict:
    """{variant: {"seconds": [per round], "logprobs": tensor}}, the variants run round-robin."""
    from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits

    runs = {}
    for variant, model in models.items():
        runner = TeacherAnswerLogits(pack=True)
        start = time.perf_counter()
        label_pass(model, runner, dataset.select([0]), collator, label_ids)  # the prefix KV cache, once
        runs[variant] = {"runner": runner, "seconds": [], "one_off_s": time.perf_counter() - start}
    for round_index in range(rounds):
        for variant, model in models.items():
            start = time.perf_counter()
            runs[variant]["logprobs"] = label_pass(
                model, runs[variant]["runner"], dataset, collator, label_ids
            )
            runs[variant]["seconds"].append(time.perf_counter() - start)
            print(
                f"[quantized-teacher] round {round_index + 1}: {variant} "
                f"{runs[variant]['seconds'][-1] / len(dataset):.3f} s/query",
                flush=True,
            )
    return runs


def profile_batch(model, dataset, collator, label_ids, top: int = 8) -> dict:
    """Self CPU time by operator over one batch (the prefix cache built beforehand)."""
    from torch.profiler import ProfilerActivity, profile

    from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits

    runner, rows = TeacherAnswerLogits(pack=True), dataset.select(range(min(BATCH_SIZE, len(dataset))))
    label_pass(model, runner, rows.select([0]), collator, label_ids)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        label_pass(model, runner, rows, collator, label_ids)
    events = sorted(
        (e for e in prof.key_averages() if e.self_cpu_time_total > 0), key=lambda e: -e.self_cpu_time_total
    )
    total = sum(e.self_cpu_time_total for e in events)
    return {
        "total_s": total / 1e6,
        "top": [{"op": e.key, "self_s": e.self_cpu_time_total / 1e6, "calls": e.count} for e in events[:top]],
    }


def result_row(variant, run, bf16_run, reference, bytes_, build_s, dataset) -> dict:
    median = statistics.median(run["seconds"])
    return {
        "variant": variant,
        "per_query_s": median / len(dataset),
        "ratio": median / statistics.median(bf16_run["seconds"]),
        "weight_bytes": bytes_[variant],
        "bytes_ratio": bytes_[variant] / bytes_["bf16"],
        "build_s": build_s[variant],
        "one_off_s": run["one_off_s"],
        **compare(run["logprobs"], reference),
    }


def markdown(report: dict) -> str:
    out = [
        "# Quantized CPU teacher: label-word pass against bfloat16",
        "",
        f"Command: `{report['command']}` ({report['total_seconds'] / 60:.1f} min)  ",
        f"Machine: {report['machine']}; load average {report['load_average']} at the start; torch "
        f"{report['torch']}  ",
        f"Teacher: {report['model']}; {report['queries']} MNLI training-pool queries behind the main job's "
        f"prompt ({report['prefix_tokens']}-token prefix through the prefix KV cache), batches of "
        f"{BATCH_SIZE}, packed; {report['rounds']} interleaved rounds per phase, medians. The per-call "
        "kernels (activation quantization, 4-bit unpacking) compiled once, first calls "
        + ", ".join(f"{k} {v:.0f} s" for k, v in report["compile_s"].items())
        + " (outside the timings).",
        "",
        "| variant | s / query | x bf16 (same phase) | agreement with bf16 | mean KL(bf16 \\|\\| variant) | "
        "max abs log-prob diff | linear weights (MB) | x bf16 bytes | build (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report["results"]:
        out.append(
            f"| {r['variant']} | {r['per_query_s']:.3f} | {r['ratio']:.2f} | {r['agreement']:.3f} | "
            f"{r['kl']:.2e} | {r['max_abs_logprob_diff']:.3f} | {r['weight_bytes'] / 1e6:.0f} | "
            f"{r['bytes_ratio']:.2f} | {r['build_s']:.1f} |"
        )
    p = report.get("bnb_profile")
    if p:
        out += [
            "",
            f"Where one bitsandbytes 8-bit batch spends its time (torch.profiler, self CPU time, "
            f"{p['total_s']:.2f} s in all):",
            "",
            "| operator | self (s) | share | calls |",
            "| --- | ---: | ---: | ---: |",
            *[
                f"| `{t['op']}` | {t['self_s']:.3f} | {t['self_s'] / p['total_s']:.0%} | {t['calls']} |"
                for t in p["top"]
            ],
        ]
    return "\n".join(out) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="embedded:qwen2.5-coder-1.5b")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe YAML whose prompt is used")
    parser.add_argument("--queries", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-bnb", action="store_true", help="skip the bitsandbytes 8-bit baseline")
    parser.add_argument("--quick", action="store_true", help="tiny random model, fixture data: a smoke test")
    parser.add_argument("--output-dir", default=str(REPO / "docs" / "results" / "quantized-teacher"))
    parser.add_argument("--name", default=None, help="file name of the report (default: the model's)")
    options = parser.parse_args(argv)
    from distill_trainer.views.text import TwoViewCollator

    started, load_average = time.perf_counter(), " / ".join(f"{x:.1f}" for x in os.getloadavg())
    compile_s = check_compiled_kernels()
    print(f"[quantized-teacher] compiled kernels equal the eager ones; first calls {compile_s}", flush=True)
    build_s = {}
    start = time.perf_counter()
    reference_model, tokenizer = load_variant(options.model, "bf16", options.quick)
    build_s["bf16"] = time.perf_counter() - start
    queries = min(options.queries, 8) if options.quick else options.queries
    dataset, label_ids, prefix = load_data(tokenizer, options.config, queries, options.quick)
    collator = TwoViewCollator(tokenizer.pad_token_id)
    bytes_ = {"bf16": linear_weight_bytes(reference_model)}

    # one phase per variant, each against a bfloat16 pass of its own: one quantized model in memory at once
    variants = list(options.variants) + ([] if options.no_bnb or options.quick else ["bnb 8-bit"])
    results, reference, profile = [], None, None
    for variant in variants:
        start = time.perf_counter()
        model = load_variant(options.model, variant, options.quick)[0]
        build_s[variant] = time.perf_counter() - start
        bytes_[variant] = linear_weight_bytes(model)
        runs = interleaved(
            {"bf16": reference_model, variant: model}, dataset, collator, label_ids, options.rounds
        )
        if reference is None:
            reference = runs["bf16"]["logprobs"]
            results.append(
                result_row("bf16", runs["bf16"], runs["bf16"], reference, bytes_, build_s, dataset)
            )
        results.append(result_row(variant, runs[variant], runs["bf16"], reference, bytes_, build_s, dataset))
        if variant == "bnb 8-bit":
            profile = profile_batch(model, dataset, collator, label_ids)
        del model, runs
        gc.collect()
        report = write_report(
            options, argv, started, load_average, compile_s, dataset, prefix, results, profile
        )
    print(markdown(report))
    return report


def write_report(options, argv, started, load_average, compile_s, dataset, prefix, results, profile) -> dict:
    """The report so far, written after every phase: an interrupted run keeps what it measured."""
    arguments = sys.argv[1:] if argv is None else argv
    report = {
        "command": shlex.join(["python", "-m", "benchmarks.quantized_teacher", *arguments]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} threads",
        "load_average": load_average,
        "torch": torch.__version__,
        "model": "tiny Llama (random init)" if options.quick else options.model,
        "queries": len(dataset),
        "prefix_tokens": prefix,
        "rounds": options.rounds,
        "compile_s": compile_s,
        "results": results,
        "bnb_profile": profile,
        "total_seconds": time.perf_counter() - started,
    }
    output = Path(options.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    stem = options.name or (
        "quick" if options.quick else options.model.replace("embedded:", "").replace("/", "--")
    )
    code = code_record(["benchmarks/quantized_teacher.py"])  # the table names the code that made it
    (output / f"{stem}.md").write_text(stamp_markdown(markdown(report), code))
    (output / f"{stem}.json").write_text(json.dumps(dict(report, code=stamp_json(code)), indent=1))
    return report


if __name__ == "__main__":
    main()
