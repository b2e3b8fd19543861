"""The speed floor and the teacher-pass benchmark, on tiny random models (seconds): the matmul probe gives
positive rates, FLOP counting adds up, the teacher pass agrees with itself, and speed.py handles a pair
with two tokenizers."""

from __future__ import annotations

import json

import pytest
import torch

from benchmarks import flops


def test_probe_returns_positive_rates():
    result = flops.probe(flops.QUICK_SHAPES, seconds=0.01)
    assert result["peak"]["fp32"] > 0 and result["peak"]["bf16"] > 0
    for rates in result["gflops"].values():
        assert all(rate > 0 for rate in rates.values())
    # int8 is either measured or said to be missing, never silently absent
    assert "int8" in result["peak"] or any("int8" in note for note in result["notes"])
    assert "**best (peak)**" in "\n".join(flops.markdown(result))


def test_forward_flops_counts_body_attention_and_head():
    from distill_trainer.testing import build_model

    model = build_model(100, hidden_size=32, layers=2)
    split = flops.parameter_split(model)
    assert split["embedding"] == split["head"] == 100 * 32  # untied: the head counted once, on its own
    assert split["body"] == sum(p.numel() for p in model.parameters()) - 2 * 100 * 32
    layers, heads, head_dim = flops.attention_shape(model.config)
    # one token, no context: one (query, key) pair per head and layer, and one logit row
    one = flops.forward_flops(model, 1, 0, 1)
    assert one == 2 * split["body"] + 4 * layers * heads * head_dim + 2 * split["head"]
    # a cached prefix adds attention only
    with_prefix = flops.forward_flops(model, 1, 10, 1)
    assert with_prefix - one == 4 * layers * heads * head_dim * 10


@pytest.mark.integration
def test_teacher_pass_quick_agrees_with_itself(tmp_path):
    from benchmarks import teacher_pass

    report = teacher_pass.main(["--quick", "--only", "unsorted", "packed", "--output-dir", str(tmp_path)])
    baseline, packed, unsorted = report["results"]
    assert baseline["name"] == "baseline" and baseline["agreement"] == 1.0
    assert baseline["max_abs_logprob_diff"] == 0.0
    # another batch order computes the same numbers (fp32, up to summation order)
    assert unsorted["agreement"] == 1.0 and unsorted["max_abs_logprob_diff"] < 1e-4
    # so does packing the queries without their padding
    assert packed["setting"]["pack"] and not baseline["setting"]["pack"]
    assert packed["agreement"] == 1.0 and packed["max_abs_logprob_diff"] < 1e-4
    assert baseline["gflops"] > 0 and 0 < baseline["peak_share"]
    assert report["profile"]["matmul_share"] > 0
    saved = json.loads((tmp_path / "teacher_pass-quick.json").read_text())
    assert saved["queries"] == report["queries"] > 0
    assert "| baseline |" in (tmp_path / "teacher_pass-quick.md").read_text()


def test_batch_plan_and_padding():
    from benchmarks.teacher_pass import batch_plan, padding_share

    lengths = [3, 9, 5, 9]
    assert batch_plan(lengths, 2, sort=True) == [[1, 3], [2, 0]]
    assert batch_plan(lengths, 2, sort=False) == [[0, 1], [2, 3]]
    assert padding_share(lengths, 2, sort=True) == pytest.approx(1 - 26 / 28)
    assert padding_share(lengths, 1, sort=False) == 0.0


@pytest.mark.integration
def test_speed_quick_with_two_tokenizers_skips_the_naive_variant(tmp_path):
    pytest.importorskip("tokenizers")
    from benchmarks import speed

    torch.manual_seed(0)
    speed.main(["--quick", "--models", "tiny-two-tokenizers", "--output-dir", str(tmp_path)])
    report = json.loads((tmp_path / "speed-quick.json").read_text())
    pair = report["pairs"][0]
    assert pair["distill_vocab"] == "label_words"
    assert "b" not in pair["variants"] and "b_skipped" in pair
    assert set(pair["variants"]) == {"a", "c", "d", "e"}
    assert report["probe"]["peak"]["fp32"] > 0 and pair["teacher_pass"]["gflops"] > 0
    text = (tmp_path / "speed-quick.md").read_text()
    assert "Matmul probe" in text and "(b) skipped" in text and "Teacher pass" in text
