"""A measured floor for the teacher's arithmetic: what this machine's matmuls reach, and what a forward needs.

    python -m benchmarks.flops                 # fp32 / bf16 / int8 GFLOP/s, a few seconds
    python -m benchmarks.flops --threads 1

The probe times `F.linear` (what every `nn.Linear` of the teacher runs) on the shape of a Qwen2.5-1.5B
MLP projection, 512 tokens x 1536 -> 8960, and on a square 2048 matmul, in fp32, bf16 and int8
(`torch._int_mm`, int8 x int8 -> int32, where this torch build offers it on the CPU). The best fp32 rate
over the shapes is the "peak" that a teacher pass's achieved rate is compared against: a pass cannot
beat the matmuls it is made of, so the gap between the two is time spent outside dense arithmetic
(attention, padding, memory-bound small batches, Python and framework overhead).

FLOPs of a decoder forward (`forward_flops`): 2 x non-embedding parameters x tokens (each weight is one
multiply-add per token), plus attention (QK^T and AV: 4 x heads x head_dim per (query, key) pair, with
causal masking), plus the LM head only where logits are built (the answer positions: the library never
builds full-sequence logits). The embedding lookup is a gather, not arithmetic.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

# (tokens, in_features, out_features): the teacher's MLP up/gate projection at a batch of ~512 tokens,
# its down projection, and a square shape that any BLAS runs near its best
SHAPES = {
    "mlp up (512 x 1536 -> 8960)": (512, 1536, 8960),
    "mlp down (512 x 8960 -> 1536)": (512, 8960, 1536),
    "square (2048 x 2048 -> 2048)": (2048, 2048, 2048),
}
QUICK_SHAPES = {"small (64 x 256 -> 512)": (64, 256, 512)}


def _int_mm_available() -> bool:
    """Whether `torch._int_mm` runs on the CPU here (it exists on every recent build, but not every
    backend implements it)."""
    if not hasattr(torch, "_int_mm"):
        return False
    try:
        a = torch.ones(32, 32, dtype=torch.int8)
        torch._int_mm(a, a)
        return True
    except (RuntimeError, NotImplementedError):
        return False


def _operands(tokens: int, inner: int, outer: int, dtype: str):
    generator = torch.Generator().manual_seed(0)
    if dtype == "int8":
        x = torch.randint(-64, 64, (tokens, inner), dtype=torch.int8, generator=generator)
        # _int_mm multiplies (m, k) @ (k, n); a linear layer's weight is (n, k), hence the transpose
        w = torch.randint(-64, 64, (outer, inner), dtype=torch.int8, generator=generator).t()
        return lambda: torch._int_mm(x, w)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    x = torch.randn(tokens, inner, generator=generator).to(torch_dtype)
    w = torch.randn(outer, inner, generator=generator).to(torch_dtype)
    return lambda: F.linear(x, w)


def matmul_gflops(tokens: int, inner: int, outer: int, dtype: str = "fp32", seconds: float = 0.5) -> float:
    """Best-of-repeats GFLOP/s of one (tokens x inner) @ (inner x outer) product in `dtype`.

    Best rather than median: the probe asks what the hardware can do, and on a shared machine the slow
    repeats measure the neighbours."""
    run = _operands(tokens, inner, outer, dtype)
    with torch.inference_mode():
        run()  # first call: packing, thread pool start-up
        best, spent = float("inf"), 0.0
        while spent < seconds or best == float("inf"):
            start = time.perf_counter()
            run()
            elapsed = time.perf_counter() - start
            best, spent = min(best, elapsed), spent + elapsed
    return 2.0 * tokens * inner * outer / best / 1e9


def probe(shapes: dict | None = None, seconds: float = 0.5, dtypes=("fp32", "bf16", "int8")) -> dict:
    """{"threads", "gflops": {dtype: {shape: GFLOP/s}}, "peak": {dtype: best over shapes}}; int8 is left
    out (with a note) when `torch._int_mm` does not run on this CPU."""
    shapes = shapes or SHAPES
    result = {"threads": torch.get_num_threads(), "gflops": {}, "peak": {}, "notes": []}
    for dtype in dtypes:
        if dtype == "int8" and not _int_mm_available():
            result["notes"].append("int8: torch._int_mm is not available on this CPU build")
            continue
        rates = {name: matmul_gflops(*shape, dtype=dtype, seconds=seconds) for name, shape in shapes.items()}
        result["gflops"][dtype] = rates
        result["peak"][dtype] = max(rates.values())
    return result


# ---------------------------------------------------------------------------- FLOPs of a forward


def parameter_split(model) -> dict:
    """Parameter counts: `body` (every weight a token passes through: the layers and final norm),
    `embedding` (input embeddings) and `head` (the LM head's, counted once even when tied)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    seen, body = {embedding.data_ptr(), head.data_ptr()}, 0
    for parameter in model.parameters():
        if parameter.data_ptr() not in seen:
            seen.add(parameter.data_ptr())
            body += parameter.numel()
    return {"body": body, "embedding": embedding.numel(), "head": head.numel()}


def attention_shape(config) -> tuple[int, int, int]:
    """(layers, query heads, head dim) of a decoder config."""
    config = getattr(config, "text_config", config)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, heads, head_dim


def forward_flops(model, new_tokens: int, context: int = 0, logit_positions: int = 1) -> float:
    """FLOPs of one row's forward over `new_tokens` real tokens after `context` cached ones (the prefix),
    building logits at `logit_positions` positions.

    Padding is not counted: these are the FLOPs the answer needs, so a pass that pads wastes its share."""
    split = parameter_split(model)
    layers, heads, head_dim = attention_shape(model.config)
    # token i (1-based) of the new ones attends to context + i keys: QK^T and AV, 2 FLOPs per multiply-add
    pairs = new_tokens * context + new_tokens * (new_tokens + 1) / 2
    attention = 4.0 * layers * heads * head_dim * pairs
    return 2.0 * split["body"] * new_tokens + attention + 2.0 * split["head"] * logit_positions


def markdown(result: dict) -> list[str]:
    """The probe as a markdown table (lines)."""
    dtypes = list(result["gflops"])
    shapes = list(next(iter(result["gflops"].values())))
    out = [
        f"Matmul probe (`F.linear`; int8: `torch._int_mm`), {result['threads']} torch threads, GFLOP/s:",
        "",
        "| shape | " + " | ".join(dtypes) + " |",
        "| --- |" + " ---: |" * len(dtypes),
    ]
    for shape in shapes:
        out.append(f"| {shape} | " + " | ".join(f"{result['gflops'][d][shape]:.0f}" for d in dtypes) + " |")
    out.append("| **best (peak)** | " + " | ".join(f"**{result['peak'][d]:.0f}**" for d in dtypes) + " |")
    out += [f"- {note}" for note in result["notes"]]
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per shape and dtype")
    parser.add_argument("--quick", action="store_true", help="one small shape: a smoke test")
    parser.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    options = parser.parse_args(argv)
    if options.threads:
        torch.set_num_threads(options.threads)
    result = probe(QUICK_SHAPES if options.quick else None, 0.05 if options.quick else options.seconds)
    print(json.dumps(result, indent=1) if options.json else "\n".join(markdown(result)))


if __name__ == "__main__":
    main()
