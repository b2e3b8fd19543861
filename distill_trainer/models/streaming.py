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
BLOCK_BYTES = 4 * 2**20  # rows read per block: a bounded transient whatever the tensor's size


def weight_files(folder) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards its index names); [] when there are none."""
    folder = Path(folder)
    if (folder / INDEX_FILE).is_file():
        index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
        return [folder / name for name in sorted(set(index["weight_map"].values()))]
    return [folder / SINGLE_FILE] if (folder / SINGLE_FILE).is_file() else []


# safetensors' names of tensor dtypes
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


class SafetensorsReader:
    """A safetensors file read with plain reads, never memory-mapped: a mapping's pages count in the
    resident set for as long as it lives, and the safetensors library keeps its mapping beyond the reads.

        with SafetensorsReader(path) as reader:
            tensor = reader.read(name, torch.bfloat16)      # converted a block of rows at a time
            rows = reader.read_rows(name, 0, 128)           # rows 0..127 as stored
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file = self.path.open("rb")
        size = int.from_bytes(self._file.read(8), "little")
        header = json.loads(self._file.read(size))
        self.metadata = header.pop("__metadata__", None) or {}
        self.entries = header
        self._base = 8 + size
        # one buffer for every converted block: blocks allocated and freed one after the other end up in
        # the C heap between the tensors kept, and the heap then holds their size again and again
        self._buffer = torch.empty(0, dtype=torch.uint8)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()

    def keys(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> list[int]:
        return self.entries[name]["shape"]

    def dtype(self, name: str) -> torch.dtype:
        return _DTYPES[self.entries[name]["dtype"]]

    def read_rows(self, name: str, start: int, stop: int, buffer: torch.Tensor | None = None) -> torch.Tensor:
        """Rows start..stop-1 (along the first dimension) in the stored dtype, in anonymous memory: in the
        front of `buffer` (uint8) when one is given, so that a reader of many blocks reuses one."""
        entry = self.entries[name]
        dtype, shape = _DTYPES[entry["dtype"]], entry["shape"]
        row_bytes = torch.Size(shape[1:]).numel() * torch.empty(0, dtype=dtype).element_size()
        stop = min(stop, shape[0]) if shape else 1
        size = max(0, stop - start) * row_bytes
        buffer = torch.empty(size, dtype=torch.uint8) if buffer is None else buffer[:size]
        self._file.seek(self._base + entry["data_offsets"][0] + start * row_bytes)
        if buffer.numel() and self._file.readinto(memoryview(buffer.numpy())) != buffer.numel():
            raise ValueError(f"{self.path} ends inside tensor {name}: the file is truncated")
        return buffer.view(dtype).reshape(stop - start, *shape[1:]) if shape else buffer.view(dtype)[0]

    def row_blocks(self, name: str, block_bytes: int) -> Iterator[torch.Tensor]:
        """The tensor's rows in float32, about `block_bytes` at a time (each block valid until the next)."""
        shape = self.shape(name)
        row_bytes = torch.Size(shape[1:]).numel() * self.dtype(name).itemsize
        rows = max(1, block_bytes // max(1, torch.Size(shape[1:]).numel() * 4))
        if self._buffer.numel() < rows * row_bytes:
            self._buffer = torch.empty(rows * row_bytes, dtype=torch.uint8)
        for start in range(0, shape[0], rows):
            yield self.read_rows(name, start, start + rows, self._buffer).to(torch.float32)

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The whole tensor in `dtype` (None: as stored), read and converted a block of rows at a time."""
        shape = self.shape(name)
        if len(shape) < 2:
            tensor = self.read_rows(name, 0, shape[0] if shape else 1).reshape(shape)
            return tensor.to(dtype) if dtype is not None else tensor
        stored = self.dtype(name)
        if dtype in (None, stored):  # nothing to convert: read straight into the result
            return self.read_rows(name, 0, shape[0])
        out = torch.empty(shape, dtype=dtype)
        row_bytes = torch.Size(shape[1:]).numel() * out.element_size()
        stored_row_bytes = torch.Size(shape[1:]).numel() * torch.empty(0, dtype=stored).element_size()
        rows = max(1, BLOCK_BYTES // max(1, row_bytes, stored_row_bytes))
        needed = min(rows, shape[0]) * stored_row_bytes
        if self._buffer.numel() < needed:
            self._buffer = torch.empty(max(needed, BLOCK_BYTES), dtype=torch.uint8)
        for start in range(0, shape[0], rows):
            out[start : start + rows] = self.read_rows(name, start, start + rows, self._buffer)
        return out


def checkpoint_names(folder) -> list[str]:
    names = []
    for path in weight_files(folder):
        with SafetensorsReader(path) as reader:
            names += reader.keys()
    return names


def checkpoint_tensors(folder, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor in `dtype`) for every tensor of the checkpoint, one at a time."""
    for path in weight_files(folder):
        with SafetensorsReader(path) as reader:
            for name in reader.keys():
                yield name, reader.read(name, dtype)


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


def write_safetensors(path, tensors, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file one tensor at a time. `tensors`: a mapping, or a function that returns an
    iterator of (name, tensor) and is called twice (once for the header, once for the data), so the
    tensors can be made one by one and dropped: `safetensors.torch.save_file` first copies every tensor into
    one buffer, which would double a model's memory while it is saved."""
    items = (lambda: iter(tensors.items())) if isinstance(tensors, dict) else tensors
    header, offset = {}, 0
    for name, tensor in items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    if metadata:
        header["__metadata__"] = metadata
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name, tensor in items():
            if list(tensor.shape) != header[name]["shape"] or _NAMES[tensor.dtype] != header[name]["dtype"]:
                raise ValueError(f"tensor {name} changed between the header and the data")
            if tensor.numel():
                handle.write(memoryview(tensor.contiguous().reshape(-1).view(torch.uint8).numpy()))


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
