"""A CPU teacher quantized once: later loads read the cache (and equal the first), a damaged cache or a
changed source is rebuilt, the decoder's linear layers are quantized and the head is not; and every load,
streamed or quantized, needs no more than its weights plus 15% (measured in a fresh process)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from distill_trainer.models import quantized_cache
from distill_trainer.models.cpu_quantized import Int4Linear, Int8Linear
from distill_trainer.models.loading import load_causal_lm
from distill_trainer.testing import build_model

IDS = torch.tensor([[1, 5, 7, 9, 11, 3]])
HERE = Path(__file__).parent


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(quantized_cache, "_VERIFIED", set())
    return tmp_path / "cache" / "quantized"


def _logits(model):
    with torch.no_grad():
        return model(IDS).logits.float()


@pytest.mark.parametrize("quantization,layer", [("8bit", Int8Linear), ("4bit", Int4Linear)])
def test_quantized_once_then_read_back(tiny_dirs, cache, monkeypatch, quantization, layer):
    first = load_causal_lm(tiny_dirs["teacher"], dtype="bfloat16", quantization=quantization)
    assert isinstance(first.model.layers[0].self_attn.q_proj, layer)
    assert isinstance(first.lm_head, torch.nn.Linear) and first.lm_head.weight.dtype == torch.bfloat16
    assert first.model.embed_tokens.weight.dtype == torch.bfloat16
    reference = _logits(load_causal_lm(tiny_dirs["teacher"], dtype="bfloat16"))
    relative = (_logits(first) - reference).abs().max() / reference.abs().max()
    assert relative < (0.05 if quantization == "8bit" else 0.25)

    def no_quantizing(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(quantized_cache, "quantize_streaming", no_quantizing)
    again = load_causal_lm(tiny_dirs["teacher"], dtype="bfloat16", quantization=quantization)
    assert torch.equal(_logits(again), _logits(first))
    assert len(list(cache.iterdir())) == 1


def test_damaged_cache_is_rebuilt_with_a_warning(tiny_dirs, cache, caplog):
    first = _logits(load_causal_lm(tiny_dirs["teacher"], dtype="bfloat16", quantization="8bit"))
    (folder,) = cache.iterdir()
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-16:] = bytes(16)  # damaged in place, same size
    weights.write_bytes(bytes(data))
    quantized_cache._VERIFIED.clear()  # a new process
    with caplog.at_level(logging.WARNING, logger="distill_trainer.models.quantized_cache"):
        again = load_causal_lm(tiny_dirs["teacher"], dtype="bfloat16", quantization="8bit")
    assert "rebuilt" in caplog.text and "model.safetensors" in caplog.text
    assert torch.equal(_logits(again), first)


def test_changed_source_is_quantized_again(tmp_path, cache, tokenizer):
    folder = tmp_path / "teacher"
    build_model(len(tokenizer), seed=1).save_pretrained(folder)
    first = _logits(load_causal_lm(str(folder), dtype="bfloat16", quantization="8bit"))
    build_model(len(tokenizer), seed=2).save_pretrained(folder)  # the same path, other weights
    again = load_causal_lm(str(folder), dtype="bfloat16", quantization="8bit")
    reference = _logits(load_causal_lm(str(folder), dtype="bfloat16"))
    assert not torch.equal(_logits(again), first)
    assert (_logits(again) - reference).abs().max() / reference.abs().max() < 0.05
    assert len(list(cache.iterdir())) == 2


@pytest.fixture(scope="module")
def float32_checkpoint(tmp_path_factory):
    """~260M parameters in float32 (1 GB): large enough that 15% of its weights dwarfs the noise of a
    process's own allocations."""
    folder = tmp_path_factory.mktemp("large")
    config = LlamaConfig(
        vocab_size=8000,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=4,
        tie_word_embeddings=False,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    model.save_pretrained(folder)
    return folder


@pytest.mark.integration
@pytest.mark.parametrize(
    "dtype,quantization",
    [
        ("float32", "none"),
        ("bfloat16", "none"),
        ("bfloat16", "8bit"),
        ("bfloat16", "4bit"),
        ("bfloat16", "8bit"),
    ],
    ids=["float32", "bfloat16", "8bit-first", "4bit-first", "8bit-cached"],
)
def test_a_load_needs_its_weights_and_little_more(float32_checkpoint, tmp_path_factory, dtype, quantization):
    # one cache for the module: the second 8-bit load reads what the first wrote
    env = {"DISTILL_TRAINER_CACHE": str(tmp_path_factory.getbasetemp() / "load-memory-cache")}
    result = subprocess.run(
        [sys.executable, str(HERE / "load_memory_probe.py"), str(float32_checkpoint), dtype, quantization],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, **env},
        check=True,
    )
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert probe["kind"] == {"none": "Linear", "8bit": "Int8Linear", "4bit": "Int4Linear"}[quantization]
    assert probe["needed_mib"] <= 1.15 * probe["weights_mib"], probe
    assert probe["needed_mib"] >= 0.9 * probe["weights_mib"], probe  # the measure sees the weights
