"""On a CPU, a masked grouped-query attention runs with SDPA's grouped heads inside the block: the same
logits as with copied heads, the flag gone after the block, and nothing changed elsewhere."""

import os

import torch

from distill_trainer.models.grouped_attention import FLAG, grouped_query_attention
from distill_trainer.testing import build_model

SDPA = torch.nn.functional.scaled_dot_product_attention


def _logits_and_gqa_calls(model, monkeypatch, block):
    calls = []

    def spy(*args, **kwargs):
        calls.append(kwargs.get("enable_gqa", False))
        return SDPA(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    torch.manual_seed(0)
    ids = torch.randint(1, 90, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded row: the attention gets a mask
    with block, torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return logits, calls


def test_grouped_heads_give_the_copied_heads_logits(monkeypatch):
    monkeypatch.delenv(FLAG, raising=False)
    model = build_model(100).eval()  # 4 query heads sharing 2 key/value heads
    plain, plain_calls = _logits_and_gqa_calls(model, monkeypatch, grouped_query_attention("cuda"))
    grouped, grouped_calls = _logits_and_gqa_calls(model, monkeypatch, grouped_query_attention("cpu"))
    assert plain_calls and not any(plain_calls)  # another device: transformers' own choice, copied heads
    assert grouped_calls and all(grouped_calls)
    assert (grouped - plain).abs().max() <= 1e-6
    assert FLAG not in os.environ


def test_a_flag_the_user_set_is_left_as_it_is(monkeypatch):
    monkeypatch.setenv(FLAG, "0")
    with grouped_query_attention("cpu"):
        assert os.environ[FLAG] == "0"
    assert os.environ[FLAG] == "0"
