"""A checkpoint streamed tensor by tensor loads the same model as `from_pretrained`, in any dtype, tied or
not; a checkpoint it cannot stream is left to `from_pretrained`."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from distill_trainer.models import streaming
from distill_trainer.testing import build_model


def _same_model(a, b):
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert state_a[name].dtype == state_b[name].dtype, name
        assert torch.equal(state_a[name], state_b[name]), name


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_model_equals_from_pretrained(tiny_dirs, dtype):
    streamed = streaming.stream_load(tiny_dirs["teacher"], dtype)
    reference = AutoModelForCausalLM.from_pretrained(tiny_dirs["teacher"], dtype=dtype)
    _same_model(streamed, reference)
    assert not streamed.training and all(p.requires_grad for p in streamed.parameters())
    ids = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        assert torch.equal(streamed(ids).logits, reference(ids).logits)


def test_tied_head_is_tied_after_streaming(tmp_path, tokenizer):
    model = build_model(len(tokenizer), seed=3)
    model.config.tie_word_embeddings = True
    model.tie_weights()
    model.save_pretrained(tmp_path)
    assert "lm_head.weight" not in load_file(tmp_path / "model.safetensors")
    streamed = streaming.stream_load(tmp_path, torch.bfloat16)
    assert streamed.lm_head.weight is streamed.model.embed_tokens.weight
    _same_model(streamed, AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16))


def test_a_large_tensor_is_read_in_blocks_of_rows(tiny_dirs, monkeypatch):
    monkeypatch.setattr(streaming, "BLOCK_BYTES", 64)  # a few rows a block
    streamed = streaming.stream_load(tiny_dirs["student"], torch.float32)
    _same_model(streamed, AutoModelForCausalLM.from_pretrained(tiny_dirs["student"], dtype=torch.float32))


def test_checkpoint_with_other_names_is_not_streamed(tiny_dirs, tmp_path):
    for name in ("config.json",):
        (tmp_path / name).write_bytes((streaming.Path(tiny_dirs["student"]) / name).read_bytes())
    tensors = load_file(streaming.Path(tiny_dirs["student"]) / "model.safetensors")
    save_file({"old_layout." + k: v for k, v in tensors.items()}, tmp_path / "model.safetensors")
    assert streaming.stream_load(tmp_path, torch.float32) is None
    assert streaming.stream_load(tmp_path / "absent", torch.float32) is None


def test_safetensors_written_a_tensor_at_a_time_read_back_equal(tmp_path):
    tensors = {
        "bf16": torch.randn(3, 5).to(torch.bfloat16),
        "f32": torch.randn(7),
        "i8": torch.randint(-127, 127, (4, 6), dtype=torch.int8),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "strided": torch.randn(6, 4).t(),
    }
    streaming.write_safetensors(tmp_path / "x.safetensors", tensors, {"format": "pt"})
    read = load_file(tmp_path / "x.safetensors")
    assert read.keys() == tensors.keys()
    for name, tensor in tensors.items():
        assert read[name].dtype == tensor.dtype and torch.equal(read[name], tensor), name
