"""The output-head swap of a soft-capping model (Gemma) leaves its config object as it was, during the
block and after, and the head gives the logits the model gives."""

import torch
from transformers import Gemma2Config, Gemma2ForCausalLM

from distill_trainer.models.output_head import output_head_removed


def test_a_softcapping_models_config_is_never_written():
    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        final_logit_softcapping=0.5,  # small: soft-capping changes the logits visibly
    )
    model = Gemma2ForCausalLM(config).eval()
    saved = config.to_dict()
    ids = torch.randint(0, 64, (2, 5))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
        assert logits.abs().max() <= 0.5  # capped
        with output_head_removed(model) as head:
            assert config.final_logit_softcapping == 0.5  # the shared config object is untouched
            hidden = model(input_ids=ids).logits
        assert torch.allclose(head(hidden), logits, atol=1e-6)
    assert model.config is config and config.to_dict() == saved
    assert torch.equal(model(input_ids=ids).logits, logits)
