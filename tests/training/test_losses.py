import pytest
import torch
import torch.nn.functional as F

from distill_trainer.errors import UsageError
from distill_trainer.training.losses import (
    answer_cross_entropy,
    distillation_loss,
    restrict_to_label_words,
    token_divergence,
)


def _logits(seed, shape=(3, 2, 11)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 3


def test_forward_kl_matches_torch_kl_div():
    s, t = _logits(0), _logits(1)
    expected = (
        F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="none").sum(-1).mean()
    )
    assert torch.allclose(distillation_loss(s, t, kind="forward_kl"), expected, atol=1e-6)


def test_reverse_kl_swaps_the_arguments():
    s, t = _logits(0), _logits(1)
    expected = (
        F.kl_div(F.log_softmax(t, -1), F.log_softmax(s, -1), log_target=True, reduction="none").sum(-1).mean()
    )
    assert torch.allclose(distillation_loss(s, t, kind="reverse_kl"), expected, atol=1e-6)


def test_tvd_is_half_l1_of_probabilities():
    s, t = _logits(0), _logits(1)
    expected = 0.5 * (F.softmax(s, -1) - F.softmax(t, -1)).abs().sum(-1).mean()
    assert torch.allclose(distillation_loss(s, t, kind="tvd"), expected, atol=1e-6)


def test_jsd_direct_computation_and_endpoints():
    s, t = _logits(0), _logits(1)
    ps, pt = F.softmax(s, -1), F.softmax(t, -1)
    beta = 0.3
    m = beta * pt + (1 - beta) * ps
    direct = beta * (pt * (pt / m).log()).sum(-1) + (1 - beta) * (ps * (ps / m).log()).sum(-1)
    assert torch.allclose(distillation_loss(s, t, kind="jsd", beta=beta), direct.mean(), atol=1e-5)
    assert torch.allclose(
        distillation_loss(s, t, kind="jsd", beta=0.0), distillation_loss(s, t, kind="forward_kl")
    )
    assert torch.allclose(
        distillation_loss(s, t, kind="jsd", beta=1.0), distillation_loss(s, t, kind="reverse_kl")
    )


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd", "tvd"])
def test_zero_for_identical_inputs_and_positive_otherwise(kind):
    s = _logits(0)
    assert distillation_loss(s, s.clone(), kind=kind).abs() < 1e-6
    assert distillation_loss(s, _logits(1), kind=kind) > 1e-3


def test_temperature_softens_and_scales_by_t_squared():
    s, t = _logits(0), _logits(1)
    T = 2.0
    expected = T**2 * distillation_loss(s / T, t / T, kind="forward_kl")
    assert torch.allclose(distillation_loss(s, t, kind="forward_kl", temperature=T), expected, atol=1e-6)


def test_mask_excludes_positions_and_num_items_sets_denominator():
    s, t = _logits(0), _logits(1)
    mask = torch.tensor([[True, False], [True, True], [False, True]])
    per = token_divergence(F.log_softmax(s, -1), F.log_softmax(t, -1))
    assert torch.allclose(distillation_loss(s, t, mask), per[mask].mean(), atol=1e-6)
    # garbage in masked-out positions must not leak in
    t2 = t.clone()
    t2[0, 1] = 1e4
    assert torch.allclose(distillation_loss(s, t2, mask), per[mask].mean(), atol=1e-6)
    assert torch.allclose(distillation_loss(s, t, mask, num_items_in_batch=8), per[mask].sum() / 8, atol=1e-6)


def test_computed_in_fp32_for_bf16_inputs():
    s, t = _logits(0), _logits(1)
    out = distillation_loss(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    assert torch.allclose(out, distillation_loss(s.bfloat16().float(), t.bfloat16().float()), atol=1e-6)


def test_label_words_renormalise_over_the_verbalizer():
    s, t = _logits(0), _logits(1)
    ids = [2, 7]
    expected = distillation_loss(s[..., ids], t[..., ids])

    def label_words(logits):
        return restrict_to_label_words(logits, ids)

    assert torch.allclose(distillation_loss(label_words(s), label_words(t)), expected, atol=1e-6)
    # mass outside the label words does not matter after renormalisation
    t2 = t.clone()
    t2[..., 0] += 50
    assert torch.allclose(distillation_loss(label_words(s), label_words(t2)), expected, atol=1e-6)


def test_cross_entropy_matches_torch():
    s = _logits(0)
    ids = torch.randint(0, 11, (3, 2), generator=torch.Generator().manual_seed(2))
    assert torch.allclose(
        answer_cross_entropy(s, ids), F.cross_entropy(s.flatten(0, 1), ids.flatten()), atol=1e-6
    )


def test_bad_inputs_raise_clear_errors():
    s, t = _logits(0), _logits(1)
    with pytest.raises(UsageError, match="unknown loss kind 'kl'"):
        distillation_loss(s, t, kind="kl")
    with pytest.raises(UsageError, match="temperature must be > 0"):
        distillation_loss(s, t, temperature=0)
    with pytest.raises(UsageError, match="no answer tokens"):
        distillation_loss(s, t, torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(UsageError, match="vocabulary .* differs"):
        distillation_loss(s, _logits(1, (3, 2, 12)))
