"""Quantized linear layers for a frozen CPU teacher: 8-bit and 4-bit weights, outputs in the compute dtype.

    quantize_model_linears(model, bits=8, compute_dtype=torch.bfloat16)    # in place, layer by layer
    layer = Int8Linear.from_float(linear, torch.bfloat16)
    tensors = layer.state_tensors()                     # plain tensors: a safetensors file can hold them
    layer = Int8Linear.from_state(tensors, torch.bfloat16)                 # no float weight built

8-bit (`Int8Linear`): weights int8 with one symmetric scale per output channel. Activations are quantized
per call, one symmetric scale per token (a row of the input), and the product runs as an int8 x int8 matmul
in oneDNN (AMX or VNNI where the CPU has them; the weight prepacked once into oneDNN's blocked layout).
Per-token rather than per-tensor scales because Qwen-style models carry outlier tokens whose magnitude
would otherwise set the step size of every other token in the batch; and the input features are rotated
by a block Hadamard matrix (the weight rotated the same way when quantized) because they also carry
outlier channels. The kernel takes one zero point for the whole input, so the int8 codes are shifted by
128 into uint8 (zero point 128: still symmetric), computed with an input scale of 1, and each output row
is multiplied by its token's scale afterwards.

4-bit (`Int4Linear`): weight-only, groups of `group_size` (64) input features with an asymmetric scale and
minimum each (float16), two codes per byte. The weight is unpacked to the compute dtype at every call and
the matmul runs in that dtype: torch has no 4-bit CPU kernel that is fast at the teacher's batch sizes
(`_weight_int4pack_mm_for_cpu` is built for a few rows at a time), so 4-bit buys memory, not speed.

Neither layer has parameters or buffers: `model.to(dtype)` leaves the quantized weights alone, and
`state_dict()` holds their `state_tensors()` under the layer's prefix.
"""

from __future__ import annotations

import functools
import logging
import math

import torch
from torch import nn

# the int8 codes are symmetric in [-127, 127]; -128 is never used, so negating a code cannot overflow
INT8_MAX = 127
# int8 codes shifted into uint8 for oneDNN's single input zero point
UINT8_ZERO = 128
logger = logging.getLogger(__name__)


# torch.compile the per-call elementwise work (quantizing activations, unpacking 4-bit weights) into one
# C++ loop each: in eager mode those are 4-6 passes over memory that cost more than the int8 matmul itself
# (200 tokens x 4864 features: 2.5 ms eager, 0.5 ms compiled, the matmul ~2 ms). The first call compiles
# (about a minute on 2 cores, then cached on disk by inductor, and one compilation serves every shape);
# where compiling fails (no C++ compiler) the eager functions run, with the same results.
compile_kernels = True
_compiled: dict = {}


def _fast(function):
    """`function`, compiled on first use when `compile_kernels` is set; eager if compiling fails."""
    if not compile_kernels:
        return function
    if function not in _compiled:
        compiled = torch.compile(function, dynamic=True)

        def run(*args):
            try:
                return compiled(*args)
            except Exception as error:  # a missing compiler surfaces at the first call, as any exception
                logger.warning("compiling %s failed (%s); it runs eagerly", function.__name__, error)
                _compiled[function] = function
                return function(*args)

        _compiled[function] = run
    return _compiled[function]


def quantize_tokens(x: torch.Tensor, rotation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 codes, float32 scales (rows, 1)) of a 2-D input, rotated block by block by `rotation`
    (block, block) first: one symmetric scale per row, the int8 codes in [-127, 127] shifted by 128 into
    uint8. The rotation runs in the input's dtype (bfloat16: the fast matmul; its rounding is far below an
    int8 step), the scales in float32, so that a bfloat16 input's scale keeps its digits."""
    rows, width = x.shape
    block = rotation.shape[0]
    x = (x.view(rows, width // block, block) @ rotation).view(rows, width).to(torch.float32)
    scale = x.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / INT8_MAX
    codes = (torch.round(x / scale) + UINT8_ZERO).to(torch.uint8)
    return codes, scale


def rescale_tokens(y: torch.Tensor, scale: torch.Tensor, bias, dtype: torch.dtype) -> torch.Tensor:
    """The int8 matmul's float32 output times each token's scale, plus the bias, in `dtype`: one pass."""
    y = y * scale
    return (y if bias is None else y + bias).to(dtype)


@functools.cache
def hadamard(size: int) -> torch.Tensor:
    """The orthonormal (size, size) Hadamard matrix (Sylvester's construction; `size` a power of 2)."""
    matrix = torch.ones(1, 1)
    while matrix.shape[0] < size:
        matrix = torch.cat((torch.cat((matrix, matrix), 1), torch.cat((matrix, -matrix), 1)), 0)
    return matrix / math.sqrt(size)


def rotation_block(in_features: int, block: int) -> int:
    """The largest power of 2 that divides `in_features`, at most `block`: the blocks must tile a row."""
    return math.gcd(in_features, block & -block)


def onednn_int8_available() -> bool:
    """Whether this torch has oneDNN's quantized linear (x86 builds do; others use the fallback)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.onednn, "qlinear_pointwise")


class _QuantizedLinear(nn.Module):
    """What both layers share: shape, compute dtype, bias, and the state_dict hooks."""

    def __init__(self, in_features: int, out_features: int, bias, compute_dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = compute_dtype
        # plain attribute, not a buffer: `model.to(dtype)` must not touch it (the caller chose its dtype)
        self.bias = None if bias is None else bias.detach().to(compute_dtype)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # state_dict() carries the stored tensors, so a fingerprint of the model's weights still sees them
        for name, tensor in self.state_tensors().items():
            destination[prefix + name] = tensor

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, compute_dtype={self.compute_dtype}"
        )


class Int8Linear(_QuantizedLinear):
    """An inference-only `nn.Linear` with int8 weights (per-output-channel symmetric scales) and int8
    activations (per-token symmetric scales, quantized at each call)."""

    bits = 8

    def __init__(
        self, qweight: torch.Tensor, scales: torch.Tensor, bias=None, compute_dtype=torch.bfloat16,
        rotation_block: int = 1,
    ):  # fmt: skip
        out_features, in_features = qweight.shape
        super().__init__(in_features, out_features, bias, compute_dtype)
        self.scales = scales.detach().to(torch.float32).contiguous()
        # the weight was stored rotated (`from_float`): the input is rotated the same way at each call
        self.rotation = hadamard(rotation_block).to(compute_dtype)
        if onednn_int8_available():
            # oneDNN's blocked layout for its int8 kernels; the int8 weight is not kept beside it (the
            # packed copy gives it back: `state_tensors`), so the layer holds one copy of its weight
            self._packed = torch.ops.onednn.qlinear_prepack(qweight.contiguous(), None)
            self._zeros = torch.zeros(out_features, dtype=torch.int64)
            self._qweight = None
        else:
            self._packed, self._qweight = None, qweight.contiguous()

    @classmethod
    def from_float(cls, linear: nn.Linear, compute_dtype=torch.bfloat16, rotation: int = 64) -> Int8Linear:
        """`rotation`: the block size of the Hadamard rotation of the input features (1: none; the power
        of 2 that tiles the row, at most this). x W^T = (x H)(W H)^T for an orthonormal H, and the rotated
        activations have no outlier channel (one channel's spike spreads over its block), so their
        per-token int8 codes lose far less: on Qwen2.5-0.5B the label-word KL to float32 fell from
        1.2e-3 to 3.5e-4 with blocks of 64, what bfloat16 itself costs (3.1e-4)."""
        tensors = cls.quantize(linear.weight.detach(), rotation)
        block = int(tensors["rotation_block"])
        return cls(tensors["qweight"], tensors["scales"], linear.bias, compute_dtype, block)

    @staticmethod
    def quantize(weight: torch.Tensor, rotation: int = 64) -> dict[str, torch.Tensor]:
        """The stored tensors of an (out, in) float weight (see `from_float`), without building a layer
        (no kernel packing): each row depends on itself alone, so a weight may be quantized a block of
        rows at a time."""
        out_features, in_features = weight.shape
        block = rotation_block(in_features, rotation)
        weight = weight.to(torch.float32).reshape(out_features, -1, block) @ hadamard(block)
        weight = weight.reshape(out_features, in_features)
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / INT8_MAX
        qweight = torch.round(weight / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        return {"qweight": qweight, "scales": scales, "rotation_block": torch.tensor(block)}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], compute_dtype=torch.bfloat16) -> Int8Linear:
        block = int(tensors["rotation_block"]) if "rotation_block" in tensors else 1
        return cls(tensors["qweight"], tensors["scales"], tensors.get("bias"), compute_dtype, block)

    def qweight(self) -> torch.Tensor:
        """The (out, in) int8 weight; with oneDNN, unpacked from the blocked copy (a new tensor)."""
        if self._packed is None:
            return self._qweight
        return self._packed.to_dense().t().contiguous()  # the packed weight is (in, out)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "qweight": self.qweight(),  # the rotated weight's codes
            "scales": self.scales,
            "rotation_block": torch.tensor(self.rotation.shape[0], dtype=torch.int64),
        }
        if self.bias is not None:
            tensors["bias"] = self.bias
        return tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        codes, scale = _fast(quantize_tokens)(
            x.reshape(-1, self.in_features).to(self.compute_dtype), self.rotation
        )
        if self._packed is not None:
            # input scale 1: the kernel returns the int32 sums times the weight scales
            y = torch.ops.onednn.qlinear_pointwise(
                codes, 1.0, UINT8_ZERO, self._packed, self.scales, self._zeros,
                None, 1.0, 0, torch.float32, "none", [None], "",
            )  # fmt: skip
        else:  # no oneDNN: the same integer products, in float32 (exact for these code ranges)
            centred = codes.to(torch.float32) - UINT8_ZERO
            y = centred @ self._qweight.t().to(torch.float32) * self.scales
        # each token's own scale, then the bias (not scaled), in the compute dtype
        y = _fast(rescale_tokens)(y, scale, self.bias, self.compute_dtype)
        return y.reshape(*shape[:-1], self.out_features)


class Int4Linear(_QuantizedLinear):
    """An inference-only `nn.Linear` with 4-bit weights: groups of `group_size` input features, each with an
    asymmetric scale and minimum, two codes per byte; dequantized to the compute dtype at every call."""

    bits = 4

    def __init__(
        self, qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor, bias=None,
        compute_dtype=torch.bfloat16,
    ):  # fmt: skip
        # qweight: (out, in / 2) uint8; byte j of a group holds code j (low nibble) and code j + group/2
        # (high nibble), so unpacking is two whole-tensor ops and a concatenation, no interleaving
        out_features, groups = scales.shape
        in_features = qweight.shape[1] * 2
        super().__init__(in_features, out_features, bias, compute_dtype)
        self.group_size = in_features // groups
        self.qweight = qweight.contiguous()
        # kept in the compute dtype, so the dequantization runs in it with no conversion per call
        self.scales = scales.to(compute_dtype).unsqueeze(-1)
        self.mins = mins.to(compute_dtype).unsqueeze(-1)

    @classmethod
    def from_float(cls, linear: nn.Linear, compute_dtype=torch.bfloat16, group_size: int = 64) -> Int4Linear:
        tensors = cls.quantize(linear.weight.detach(), group_size)
        return cls(tensors["qweight"], tensors["scales"], tensors["mins"], linear.bias, compute_dtype)

    @staticmethod
    def quantize(weight: torch.Tensor, group_size: int = 64) -> dict[str, torch.Tensor]:
        """The stored tensors of an (out, in) float weight, without building a layer; rows are quantized
        independently, so a weight may be quantized a block of rows at a time."""
        out_features, in_features = weight.shape
        # groups must tile the row: a width that `group_size` does not divide gets smaller groups
        group_size = math.gcd(in_features, group_size)
        if group_size % 2:
            raise ValueError(f"in_features {in_features} must be even to pack two 4-bit codes per byte")
        weight = weight.to(torch.float32).reshape(out_features, -1, group_size)
        # scales and minimums are stored in float16 whatever the compute dtype (one file serves both), and
        # the codes are rounded against the stored values, so a rebuilt layer computes what this one does
        low = weight.amin(dim=-1, keepdim=True).to(torch.float16).float()
        high = weight.amax(dim=-1, keepdim=True)
        scales = ((high - low) / 15).clamp(min=1e-6).to(torch.float16).float()
        codes = torch.round((weight - low) / scales).clamp_(0, 15).to(torch.uint8)
        half = group_size // 2
        packed = codes[..., :half] | (codes[..., half:] << 4)
        return {
            "qweight": packed.reshape(out_features, -1),
            "scales": scales[..., 0].to(torch.float16),
            "mins": low[..., 0].to(torch.float16),
        }

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], compute_dtype=torch.bfloat16) -> Int4Linear:
        return cls(tensors["qweight"], tensors["scales"], tensors["mins"], tensors.get("bias"), compute_dtype)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            "qweight": self.qweight,
            "scales": self.scales[..., 0].to(torch.float16),
            "mins": self.mins[..., 0].to(torch.float16),
        }
        if self.bias is not None:
            tensors["bias"] = self.bias
        return tensors

    def dequantized_weight(self) -> torch.Tensor:
        return _fast(dequantize_4bit)(self.qweight, self.scales, self.mins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(self.compute_dtype), self.dequantized_weight(), self.bias)


def dequantize_4bit(qweight: torch.Tensor, scales: torch.Tensor, mins: torch.Tensor) -> torch.Tensor:
    """The (out, in) weight in the dtype of `scales` (out, groups, 1) from its packed codes (out, in / 2)."""
    out_features, groups = scales.shape[:2]
    packed = qweight.view(out_features, groups, -1)
    codes = torch.cat((packed & 15, packed >> 4), dim=-1).to(scales.dtype)
    return (codes * scales + mins).view(out_features, -1)


QUANTIZED_LINEARS = {8: Int8Linear, 4: Int4Linear}


def _skipped(name: str, skip) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


@torch.no_grad()
def quantize_model_linears(
    model: nn.Module, bits: int, compute_dtype=torch.bfloat16, skip=("lm_head",), **options
) -> nn.Module:
    """Replaces every `nn.Linear` of `model` whose name does not end in one of `skip` with its `bits`-bit
    layer, in place, and casts what stays in floating point (embeddings, norms, the skipped head) to
    `compute_dtype`. Each float weight is dropped as soon as its layer is replaced, so the peak is the
    quantized weights plus one float layer (beyond what the caller itself still holds). `options` go to
    the layer's `from_float` (`rotation` for 8-bit, `group_size` for 4-bit)."""
    if bits not in QUANTIZED_LINEARS:
        raise ValueError(f"bits={bits} is not supported; choose {sorted(QUANTIZED_LINEARS)}")
    layer_class = QUANTIZED_LINEARS[bits]
    targets = [
        name
        for name, module in model.named_modules()
        if type(module) is nn.Linear and not _skipped(name, skip)  # exact type: not a LoRA wrapper
    ]
    for name in targets:
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child_name)
        setattr(parent, child_name, layer_class.from_float(linear, compute_dtype, **options))
        # the float weight goes now, unless a tied module still holds it
        linear.weight = None
        del linear
    model.to(compute_dtype)  # the quantized layers have no parameters or buffers: left as they are
    return model


def quantized_weight_bytes(model: nn.Module) -> int:
    """Bytes of the stored tensors of the model's quantized layers (their on-disk and resident size)."""
    return sum(
        t.numel() * t.element_size()
        for m in model.modules()
        if isinstance(m, _QuantizedLinear)
        for t in m.state_tensors().values()
    )
