"""8-bit and 4-bit linear layers for a CPU teacher: accuracy, stored tensors, bytes, a whole model."""

import gc
import weakref

import pytest
import torch
from torch import nn

from distill_trainer import TwoViewCollator, build_views
from distill_trainer.models import cpu_quantized
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.cpu_quantized import (
    Int4Linear,
    Int8Linear,
    quantize_model_linears,
    quantized_weight_bytes,
)
from distill_trainer.models.loading import load_causal_lm
from distill_trainer.teacher.prefix_cache import PrefixCachedModel

LAYERS = (Int8Linear, Int4Linear)
# relative error (Frobenius) of the layer's output against the float layer's, on Gaussian weights and
# inputs: 8-bit measures ~0.008, 4-bit with groups of 64 ~0.063 (a 4-bit code's step is 1/15 of its
# group's range); the bounds leave room for the compute dtype's rounding and no more
MAX_RELATIVE_ERROR = {Int8Linear: 0.015, Int4Linear: 0.08}


@pytest.fixture(autouse=True)
def eager(monkeypatch):
    """The eager kernels: compiling takes a minute; the benchmark checks the compiled ones against them."""
    monkeypatch.setattr(cpu_quantized, "compile_kernels", False)


def relative_error(got, want):
    return float((got.float() - want).norm() / want.norm().detach())


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return nn.Linear(256, 384, bias=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer_class", LAYERS)
def test_output_is_close_to_the_float_layer(linear, layer_class, dtype):
    x = torch.randn(3, 7, 256)
    with torch.inference_mode():
        got = layer_class.from_float(linear, dtype)(x.to(dtype))
        want = linear(x)
    assert got.dtype == dtype and got.shape == want.shape
    assert relative_error(got, want) <= MAX_RELATIVE_ERROR[layer_class]


def test_int8_scales_each_token_on_its_own(linear):
    """A token 1000x larger than the others in the same call leaves their error unchanged: a scale shared
    by the whole input would round the small tokens to almost nothing."""
    layer = Int8Linear.from_float(linear, torch.float32)
    x = torch.randn(8, 256)
    alone = layer(x[1:])
    loud = x.clone()
    loud[0] *= 1000
    together = layer(loud)[1:]
    assert torch.allclose(together, alone, atol=1e-5)
    assert relative_error(together, linear(x[1:])) <= MAX_RELATIVE_ERROR[Int8Linear]


def test_int8_rotation_spreads_an_outlier_channel(linear):
    """A channel 30x larger than the rest in every token (what Qwen's activations have) sets each token's
    int8 step; the Hadamard rotation spreads it over its block of 64 channels, and the error falls."""
    x = torch.randn(16, 256)
    x[:, 7] *= 30
    want = linear(x)
    plain = relative_error(Int8Linear.from_float(linear, torch.float32, rotation=1)(x), want)
    rotated = relative_error(Int8Linear.from_float(linear, torch.float32)(x), want)
    assert rotated <= MAX_RELATIVE_ERROR[Int8Linear] < plain
    assert rotated < plain / 3


def test_int8_without_onednn_computes_the_same(linear, monkeypatch):
    x = torch.randn(5, 256)
    with_onednn = Int8Linear.from_float(linear, torch.float32)
    monkeypatch.setattr(cpu_quantized, "onednn_int8_available", lambda: False)
    fallback = Int8Linear.from_state(with_onednn.state_tensors(), torch.float32)
    assert fallback._packed is None
    # the integer products are exact in both; only the order of the float scalings differs
    assert torch.allclose(fallback(x), with_onednn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layer_class", LAYERS)
def test_stored_tensors_rebuild_an_identical_layer(linear, layer_class, dtype):
    layer = layer_class.from_float(linear, dtype)
    tensors = layer.state_tensors()
    # plain dense tensors only: what a safetensors file can hold
    assert all(t.layout == torch.strided and t.is_contiguous() for t in tensors.values())
    assert tensors["qweight"].dtype == (torch.int8 if layer_class is Int8Linear else torch.uint8)
    rebuilt = layer_class.from_state({k: v.clone() for k, v in tensors.items()}, dtype)
    x = torch.randn(4, 256).to(dtype)
    assert torch.equal(rebuilt(x), layer(x))
    # the model's state_dict carries the same tensors under the layer's name
    holder = nn.Sequential(layer)
    assert set(holder.state_dict()) == {f"0.{name}" for name in tensors}


def test_stored_bytes_are_about_a_half_and_a_quarter_of_bfloat16():
    linear = nn.Linear(1024, 1024, bias=False)
    bf16 = linear.weight.numel() * 2
    int8 = sum(t.numel() * t.element_size() for t in Int8Linear.from_float(linear).state_tensors().values())
    int4 = sum(t.numel() * t.element_size() for t in Int4Linear.from_float(linear).state_tensors().values())
    # int8: one byte a weight + a float32 scale per row (+ the rotation's block size, one int64);
    # 4-bit: half a byte + two float16 per group of 64
    assert int8 == 1024 * 1024 + 1024 * 4 + 8
    assert int4 / bf16 == pytest.approx(0.25 + 2 * 2 / 64 / 2)
    assert int4 / int8 < 0.57


def test_int4_groups_tile_the_row():
    assert Int4Linear.from_float(nn.Linear(96, 8), group_size=64).group_size == 32
    with pytest.raises(ValueError, match="even"):
        Int4Linear.from_float(nn.Linear(63, 8))


# ---- a whole model ----


def next_tokens(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits.argmax(-1)


@pytest.mark.parametrize("bits,min_agreement", [(8, 0.95), (4, 0.8)])
def test_quantized_model_keeps_its_next_tokens(tiny_dirs, bits, min_agreement):
    reference = load_causal_lm(tiny_dirs["teacher"]).eval()
    ids = torch.randint(0, reference.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    want = next_tokens(reference, ids)
    model = load_causal_lm(tiny_dirs["teacher"]).eval()
    some_weight = weakref.ref(model.model.layers[0].mlp.down_proj.weight)
    float_bytes = sum(
        m.weight.numel() * 2 for n, m in model.named_modules() if type(m) is nn.Linear and "lm_head" not in n
    )
    quantize_model_linears(model, bits, compute_dtype=torch.float32)
    gc.collect()
    assert some_weight() is None  # the float weight was freed, not kept beside its replacement
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["lm_head"]  # the head stays in the compute dtype, every decoder Linear is replaced
    # this model's rows are 48 or 96 wide: a float32 scale per row adds 4/48 of a byte to 8-bit's weight,
    # and 4-bit's groups are 16 or 32 wide (two float16 per group)
    assert quantized_weight_bytes(model) < float_bytes * (0.55 if bits == 8 else 0.39)
    agreement = (next_tokens(model, ids) == want).float().mean()
    assert agreement >= min_agreement


def test_quantized_model_in_bfloat16_leaves_its_quantized_weights_alone(tiny_dirs):
    model = quantize_model_linears(load_causal_lm(tiny_dirs["teacher"]).eval(), 8, torch.bfloat16)
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, Int8Linear) and layer.scales.dtype == torch.float32
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert next_tokens(model, torch.tensor([[1, 2, 3]])).shape == (1, 3)


def test_quantized_teacher_through_the_prefix_kv_cache(tiny_dirs, tokenizer):
    """Per-token activation scales make a token's output independent of what else is in the call, so the
    cached path (prefix and suffix in separate calls) gives the uncached path's logits."""
    model = quantize_model_linears(load_causal_lm(tiny_dirs["teacher"]).eval(), 8, torch.float32)
    demos = "The cat sat question: A cat sits. Yes or No? answer: Yes"
    rows = [("A man plays question: Nobody plays. Yes or No? answer:", " No"), ("Two dogs ? answer:", " Yes")]
    batch = TwoViewCollator(tokenizer.pad_token_id)([build_views(tokenizer, q, a, demos) for q, a in rows])
    with torch.inference_mode():
        full = answer_logits(
            model,
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_answer_positions"],
        )
        cached = PrefixCachedModel(model, batch["teacher_prefix_ids"]).answer_logits(
            batch["teacher_suffix_input_ids"],
            batch["teacher_suffix_attention_mask"],
            batch["teacher_suffix_answer_positions"],
        )
    assert (cached - full)[batch["answer_mask"]].abs().max() <= 1e-4
