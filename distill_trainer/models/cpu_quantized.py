"""Quantized linear layers for a frozen CPU teacher: 8-bit and 4-bit weights, outputs in the compute dtype.

    quantize_model_linears(model, bits=8, compute_dtype=torch.bfloat16)    # in place, layer by layer
    layer = Int8Linear.from_float(linear, torch.bfloat16)
    tensors = layer.state_tensors()                     # plain tensors: a safetensors file can hold them
    layer = Int8Linear.from_state(tensors, torch.bfloat16)                 # no float weight built

8-bit (`Int8Linear`): weights int8 with one symmetric scale per output channel. Activations are quantized
per call, one symmetric scale per token (a row of the input), and the product runs as an int8 x int8 matmul
in oneDNN (AMX or VNNI where the CPU has them: about twice the bfloat16 rate). Per-token rather than
per-tensor scales because Qwen-style models carry outlier tokens whose magnitude would otherwise set the
step size of every other token in the batch. The kernel takes one zero point for the whole input, so the
int8 codes are shifted by 128 into uint8 (zero point 128: still symmetric), computed with an input scale of
1, and each output row is multiplied by its token's scale afterwards.

4-bit (`Int4Linear`): weight-only, groups of `group_size` (64) input features with an asymmetric scale and
minimum each (float16), two codes per byte; the weight is dequantized to the compute dtype at every call and the
matmul runs in that dtype. torch offers no 4-bit kernel for CPUs that is fast at the teacher's batch sizes
(`_weight_int4pack_mm_for_cpu` is built for a few rows at a time), so 4-bit buys memory, not speed.

Neither layer has parameters or buffers: `model.to(dtype)` leaves the quantized weights alone, and
`state_dict()` holds their `state_tensors()` under the layer's prefix.
"""

from __future__ import annotations

import math

import torch
from torch import nn

# the int8 codes are symmetric in [-127, 127]; -128 is never used, so negating a code cannot overflow
INT8_MAX = 127
# int8 codes shifted into uint8 for oneDNN's single input zero point
UINT8_ZERO = 128


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

    def __init__(self, qweight: torch.Tensor, scales: torch.Tensor, bias=None, compute_dtype=torch.bfloat16):
        out_features, in_features = qweight.shape
        super().__init__(in_features, out_features, bias, compute_dtype)
        self.scales = scales.detach().to(torch.float32).contiguous()
        if onednn_int8_available():
            # oneDNN's blocked layout for its int8 kernels; the int8 weight is not kept beside it (the
            # packed copy gives it back: `state_tensors`), so the layer holds one copy of its weight
            self._packed = torch.ops.onednn.qlinear_prepack(qweight.contiguous(), None)
            self._zeros = torch.zeros(out_features, dtype=torch.int64)
            self._qweight = None
        else:
            self._packed, self._qweight = None, qweight.contiguous()

    @classmethod
    def from_float(cls, linear: nn.Linear, compute_dtype=torch.bfloat16) -> Int8Linear:
        weight = linear.weight.detach().to(torch.float32)
        scales = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / INT8_MAX
        qweight = torch.round(weight / scales[:, None]).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
        return cls(qweight, scales, linear.bias, compute_dtype)

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], compute_dtype=torch.bfloat16) -> Int8Linear:
        return cls(tensors["qweight"], tensors["scales"], tensors.get("bias"), compute_dtype)

    def qweight(self) -> torch.Tensor:
        """The (out, in) int8 weight; with oneDNN, unpacked from the blocked copy (a new tensor)."""
        if self._packed is None:
            return self._qweight
        return self._packed.to_dense().t().contiguous()  # the packed weight is (in, out)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"qweight": self.qweight(), "scales": self.scales}
        if self.bias is not None:
            tensors["bias"] = self.bias
        return tensors

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, self.in_features)
        # one scale per token; float32 so that a bfloat16 input's scale is not rounded to 3 digits
        scale = x.abs().amax(dim=1, keepdim=True).to(torch.float32).clamp_(min=1e-12) / INT8_MAX
        codes = torch.round(x / scale)  # in [-127, 127]
        if self._packed is not None:
            shifted = codes.add_(UINT8_ZERO).to(torch.uint8)
            y = torch.ops.onednn.qlinear_pointwise(
                shifted, 1.0, UINT8_ZERO, self._packed, self.scales, self._zeros,
                None, 1.0, 0, torch.float32, "none", [None], "",
            )  # fmt: skip
        else:  # no oneDNN: the same integer product, in float32 (exact for these code ranges)
            y = codes @ self._qweight.t().to(torch.float32) * self.scales
        y = (y * scale).to(self.compute_dtype)
        if self.bias is not None:
            y = y + self.bias
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
        out_features, in_features = linear.weight.shape
        # groups must tile the row: a width that `group_size` does not divide gets smaller groups
        group_size = math.gcd(in_features, group_size)
        if group_size % 2:
            raise ValueError(f"in_features {in_features} must be even to pack two 4-bit codes per byte")
        weight = linear.weight.detach().to(torch.float32).reshape(out_features, -1, group_size)
        # scales and minimums are stored in float16 whatever the compute dtype (one file serves both), and
        # the codes are rounded against the stored values, so a rebuilt layer computes what this one does
        low = weight.amin(dim=-1, keepdim=True).to(torch.float16).float()
        high = weight.amax(dim=-1, keepdim=True)
        scales = ((high - low) / 15).clamp(min=1e-6).to(torch.float16).float()
        codes = torch.round((weight - low) / scales).clamp_(0, 15).to(torch.uint8)
        half = group_size // 2
        packed = codes[..., :half] | (codes[..., half:] << 4)
        return cls(packed.reshape(out_features, -1), scales[..., 0], low[..., 0], linear.bias, compute_dtype)

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
        packed = self.qweight.view(self.out_features, -1, self.group_size // 2)
        codes = torch.cat((packed & 15, packed >> 4), dim=-1).to(self.compute_dtype)
        return torch.addcmul(self.mins, codes, self.scales).view(self.out_features, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x.to(self.compute_dtype), self.dequantized_weight(), self.bias)


QUANTIZED_LINEARS = {8: Int8Linear, 4: Int4Linear}


def _skipped(name: str, skip) -> bool:
    return any(name == s or name.endswith("." + s) for s in skip)


@torch.no_grad()
def quantize_model_linears(
    model: nn.Module, bits: int, compute_dtype=torch.bfloat16, skip=("lm_head",)
) -> nn.Module:
    """Replaces every `nn.Linear` of `model` whose name does not end in one of `skip` with its `bits`-bit
    layer, in place, and casts what stays in floating point (embeddings, norms, the skipped head) to
    `compute_dtype`. Each float weight is dropped as soon as its layer is replaced, so the peak is the
    quantized weights plus one float layer (beyond what the caller itself still holds)."""
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
        setattr(parent, child_name, layer_class.from_float(linear, compute_dtype))
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
