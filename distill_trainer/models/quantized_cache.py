"""A quantized CPU teacher, quantized once and kept quantized in a content-verified cache:

    model = load_quantized(folder, "8bit", torch.bfloat16)   # None: the checkpoint cannot be streamed

On a GPU, bitsandbytes quantizes while loading (models/loading.py). On the CPU its path first builds a
bfloat16 copy of the whole model and then quantizes it, on every load, and its 8-bit matmuls run slower
than bfloat16 ones. Here the first load streams the checkpoint tensor by tensor (models/streaming.py):
each linear layer of the decoder is read in float32, quantized (models/cpu_quantized.py: int8 with a scale
per output row, or int4 in groups) and dropped, so no more than one layer is ever held in full precision;
embeddings, norms and the output head are kept in the compute dtype. The result is written to
`<cache home>/quantized/<key>/` (model.safetensors, config.json, manifest.json); every later load reads the
quantized tensors and nothing else.

The key covers what decides the content: the source checkpoint's files (name, size and modification
time: a rebuilt or replaced checkpoint is a new source), the scheme and the compute dtype, and the code
that quantizes (this module, cpu_quantized.py and what they import, with the numeric packages' versions:
`code_digest.modules_digest`). The manifest, written last, records the
size and sha256 of every file; a process checks them before its first load, and a cache with a missing or
damaged file is rebuilt, with one warning naming the file.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch

from distill_trainer.cache_paths import cache_home
from distill_trainer.code_digest import modules_digest
from distill_trainer.heap import trim_heap
from distill_trainer.integrity import (
    disk_space_checked,
    file_records,
    files_problem,
    partial_path,
    remove_stale_partials,
    sha256_text,
    write_text_atomically,
)
from distill_trainer.models import streaming

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
QUANTIZE_BLOCK_BYTES = 2**20  # float32 rows quantized at a time
_VERIFIED: set[str] = set()  # cache folders whose files this process has checked


def _scheme(quantization: str):
    from distill_trainer.models.cpu_quantized import Int4Linear, Int8Linear

    return {"8bit": Int8Linear, "4bit": Int4Linear}[quantization]


def cache_key(folder, quantization: str, compute_dtype: torch.dtype) -> str:
    """What decides the cached content (see the module docstring), as one digest."""
    folder = Path(folder)
    sources = [*streaming.weight_files(folder), folder / "config.json"]
    settings = {
        "source": [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sources],
        "quantization": quantization,
        "compute_dtype": str(compute_dtype),
        "code": modules_digest(__name__, "distill_trainer.models.cpu_quantized"),
    }
    return sha256_text(json.dumps(settings, sort_keys=True))[:20]


def cache_dir(folder, quantization: str, compute_dtype: torch.dtype) -> Path:
    return cache_home() / "quantized" / cache_key(folder, quantization, compute_dtype)


def quantizable_linears(model) -> dict[str, torch.nn.Linear]:
    """The linear layers that are quantized: every one but the output head."""
    head = model.get_output_embeddings()
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not head
    }


def _replace(model, name: str, module: torch.nn.Module) -> None:
    parent_name, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent_name), attribute, module)


def quantize_streaming(folder, quantization: str, compute_dtype: torch.dtype):
    """The model in `folder` with its decoder's linear layers quantized, read one tensor at a time; None
    when the checkpoint cannot be streamed."""
    model = streaming.empty_model(folder, compute_dtype)
    if not streaming.streamable(model, streaming.checkpoint_names(folder)):
        return None
    linears = quantizable_linears(model)
    quantized_weights = {f"{name}.weight": name for name in linears}
    files = streaming.weight_files(folder)
    # first everything else (biases included, so each layer is quantized with its bias in place), then the
    # linear weights one at a time
    for path in files:
        with streaming.SafetensorsReader(path) as reader:
            for name in reader.keys():
                if name not in quantized_weights:
                    dtype = compute_dtype if reader.dtype(name).is_floating_point else None
                    streaming.set_tensor(model, name, reader.read(name, dtype))
    scheme = _scheme(quantization)
    for path in files:
        with streaming.SafetensorsReader(path) as reader:
            for name in (n for n in reader.keys() if n in quantized_weights):
                module_name = quantized_weights[name]
                bias = linears[module_name].bias
                tensors = quantize_rows(reader, name, scheme)
                if bias is not None:
                    tensors["bias"] = bias
                _replace(model, module_name, scheme.from_state(tensors, compute_dtype))
                del tensors
                trim_heap()  # the layer's float32 blocks and unpacked copies, freed: not held on
    return streaming.finish(model, folder)


def quantize_rows(reader, name: str, scheme) -> dict[str, torch.Tensor]:
    """The stored tensors of a quantized (out, in) weight, read from a checkpoint a block of output rows at
    a time: each row's codes and scales depend on that row alone, so each block fills its rows of the
    result, and no more than a block is ever held in float32."""
    rows_total = reader.shape(name)[0]
    stored: dict[str, torch.Tensor] = {}
    start = 0
    for block in reader.row_blocks(name, QUANTIZE_BLOCK_BYTES):
        part = scheme.quantize(block)
        for key, tensor in part.items():
            if tensor.dim() == 0:  # a setting (the 8-bit rotation's block): the same in every block
                stored[key] = tensor
                continue
            if key not in stored:
                stored[key] = torch.empty((rows_total, *tensor.shape[1:]), dtype=tensor.dtype)
            stored[key][start : start + tensor.shape[0]] = tensor
        start += block.shape[0]
        del part, block
    return stored


def stored_tensors(model):
    """A function giving (name, tensor) for every tensor the cache stores, made one module at a time: a
    quantized layer's stored form is unpacked from its kernel's layout only while it is written. A tied
    head is the embedding: stored once."""

    def items():
        seen = set()
        for prefix, module in model.named_modules():
            local = {}
            # what `state_dict()` asks of each module (a quantized layer answers with its stored tensors),
            # asked one module at a time so that its unpacked tensors can go once written
            module._save_to_state_dict(local, f"{prefix}." if prefix else "", keep_vars=True)
            for name, tensor in local.items():
                if isinstance(tensor, torch.nn.Parameter):
                    if id(tensor) in seen:
                        continue
                    seen.add(id(tensor))
                yield name, tensor.detach()

    return items


def save_quantized(model, folder, target: Path) -> None:
    """Write the quantized model into `target` (beside it first, renamed into place when complete)."""
    remove_stale_partials(target)
    partial = partial_path(target)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tensors = stored_tensors(model)
    needed = sum(t.numel() * t.element_size() for _, t in tensors())
    try:
        with disk_space_checked(target, needed, cleanup=lambda: shutil.rmtree(partial, ignore_errors=True)):
            streaming.write_safetensors(partial / streaming.SINGLE_FILE, tensors, {"format": "pt"})
            shutil.copyfile(Path(folder) / "config.json", partial / "config.json")
            records = file_records(partial)
            write_text_atomically(partial / MANIFEST, json.dumps({"files": records}, indent=2) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def read_quantized(folder, target: Path, quantization: str, compute_dtype: torch.dtype):
    """The model from its quantized cache: quantized layers rebuilt from their stored tensors."""
    model = streaming.empty_model(folder, compute_dtype)
    linears = quantizable_linears(model)
    stored: dict[str, dict[str, torch.Tensor]] = {name: {} for name in linears}
    with streaming.SafetensorsReader(target / streaming.SINGLE_FILE) as reader:
        for name in reader.keys():
            tensor = reader.read(name)
            owner, _, part = name.rpartition(".")
            if owner in stored:
                stored[owner][part] = tensor
            else:
                streaming.set_tensor(model, name, tensor)
    scheme = _scheme(quantization)
    for name in list(stored):
        _replace(model, name, scheme.from_state(stored.pop(name), compute_dtype))
        trim_heap()  # the layer's stored copy, replaced by the kernel's layout: not held on
    return streaming.finish(model, folder)


def _cache_problem(target: Path) -> str | None:
    manifest = target / MANIFEST
    if not manifest.is_file():
        return "its manifest is missing"
    if str(target) in _VERIFIED:
        return None
    records = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    problem = files_problem(target, records)
    if problem is None:
        _VERIFIED.add(str(target))
    return problem


def load_quantized(folder, quantization: str, compute_dtype: torch.dtype):
    """The quantized model of `folder`, from the cache (built on first use); None when the checkpoint
    cannot be streamed (the caller falls back to bitsandbytes)."""
    folder = Path(folder)
    if not streaming.weight_files(folder):
        return None
    target = cache_dir(folder, quantization, compute_dtype)
    if target.is_dir():
        problem = _cache_problem(target)
        if problem is None:
            return read_quantized(folder, target, quantization, compute_dtype)
        logger.warning("the quantized cache %s is rebuilt: %s", target, problem)
    logger.info("quantizing %s to %s once; later loads read %s", folder, quantization, target)
    model = quantize_streaming(folder, quantization, compute_dtype)
    if model is None:
        return None
    save_quantized(model, folder, target)
    _VERIFIED.add(str(target))
    return model
