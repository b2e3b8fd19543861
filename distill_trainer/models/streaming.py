"""Loading a safetensors checkpoint tensor by tensor, converted to the dtype it is used in, so that a load
needs the weights in that dtype and little more:

    model = stream_load(folder, torch.bfloat16)          # None when the checkpoint cannot be streamed
    for name, tensor in checkpoint_tensors(folder, torch.float32): ...

Why not `from_pretrained`: it memory-maps the checkpoint and converts from the mapping, so a float32 file
loaded in bfloat16 keeps every page it read resident (clean page cache, but counted in the resident set)
until the whole load is over, and a float32 model can be left aliasing the file. Here the model is built
with its parameters on the meta device (its buffers, e.g. rotary frequencies, computed as usual), and each
tensor is read, a block of rows at a time, into its final dtype: no more than one block of the stored
dtype is ever held besides the result.

Checkpoints whose names do not match the model's parameters one to one (older layouts that transformers
renames while loading, sharded formats other than safetensors) are not streamed: `stream_load` returns
None and the caller loads them the usual way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
BLOCK_BYTES = 64 * 2**20  # rows read per block: a bounded transient whatever the tensor's size


def weight_files(folder) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards its index names); [] when there are none."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        return [folder / name for name in sorted(set(index["weight_map"].values()))]
    return [folder / SINGLE_FILE] if (folder / SINGLE_FILE).is_file() else []


def checkpoint_names(folder) -> list[str]:
    from safetensors import safe_open

    names = []
    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            names += list(handle.keys())
    return names


def read_tensor(handle, name: str, dtype: torch.dtype | None) -> torch.Tensor:
    """One tensor of an open safetensors file in `dtype` (None: as stored), read a block of rows at a time
    into anonymous memory: the result never aliases the file."""
    view = handle.get_slice(name)
    shape = view.get_shape()
    if len(shape) < 2:
        tensor = handle.get_tensor(name)
        return tensor.to(dtype) if dtype is not None else tensor.clone()
    first = view[0:1]
    out = torch.empty(shape, dtype=dtype or first.dtype)
    rows_per_block = max(1, BLOCK_BYTES // max(1, first.numel() * first.element_size()))
    for start in range(0, shape[0], rows_per_block):
        out[start : start + rows_per_block] = view[start : start + rows_per_block]
    return out


def checkpoint_tensors(folder, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor in `dtype`) for every tensor of the checkpoint, one at a time."""
    from safetensors import safe_open

    for path in weight_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                yield name, read_tensor(handle, name, dtype)


def empty_model(folder, dtype: torch.dtype, config=None):
    """The folder's causal LM with every parameter on the meta device (nothing allocated) and its buffers
    computed as usual; `config` replaces the folder's."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    config = config if config is not None else AutoConfig.from_pretrained(folder)
    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def streamable(model, names: list[str]) -> bool:
    """True when the checkpoint holds exactly the model's own parameters (tied ones may be absent)."""
    expected = set(model.state_dict().keys())
    persistent_buffers = {name for name, _ in model.named_buffers()} & expected
    given = set(names)
    if not given <= expected:
        return False
    missing = expected - given - persistent_buffers
    tied = {name for name in missing if _is_tied(model, name)}
    return not (missing - tied)


def _is_tied(model, name: str) -> bool:
    head = model.get_output_embeddings()
    tied = bool(getattr(model.config.get_text_config(), "tie_word_embeddings", False))
    return tied and head is not None and name.startswith(_module_name(model, head) + ".")


def _module_name(model, module) -> str:
    return next(name for name, child in model.named_modules() if child is module)


def set_tensor(model, name: str, tensor: torch.Tensor) -> None:
    """Put `tensor` in place of the parameter or buffer `name` (a parameter stays a frozen parameter)."""
    owner_name, _, attribute = name.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attribute in owner._parameters:
        owner._parameters[attribute] = torch.nn.Parameter(tensor, requires_grad=False)
    else:
        owner._buffers[attribute] = tensor


def finish(model, folder):
    """Tie what the config ties, check nothing is left on the meta device, eval mode, generation config."""
    from transformers import GenerationConfig

    model.tie_weights()
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise ValueError(f"the checkpoint in {folder} does not hold {', '.join(left[:5])}")
    if (Path(folder) / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(folder)
    model.requires_grad_(True)  # as from_pretrained leaves a model: the caller decides what trains
    return model.eval()


def stream_load(folder, dtype: torch.dtype):
    """The causal LM in `folder` with its weights in `dtype`, read tensor by tensor; None when the folder's
    checkpoint cannot be streamed (see the module docstring)."""
    folder = Path(folder)
    if not folder.is_dir() or not weight_files(folder):
        return None
    model = empty_model(folder, dtype)
    if not streamable(model, checkpoint_names(folder)):
        return None
    for name, tensor in checkpoint_tensors(folder, dtype):
        set_tensor(model, name, tensor)
    return finish(model, folder)
