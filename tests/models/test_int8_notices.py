"""bitsandbytes' cast notice is dropped while a hooked 8-bit layer runs, and only then: the logger's level
and filters are as they were before and after, and the same notice from elsewhere still gets through."""

import logging

import pytest
import torch

from distill_trainer.models.int8_notices import CAST_LOGGER, drop_int8_cast_notices

bnb = pytest.importorskip("bitsandbytes")


def int8_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    layer = bnb.nn.Linear8bitLt(16, 8, has_fp16_weights=False, threshold=6.0)
    layer.load_state_dict({"weight": torch.randn(8, 16), "bias": torch.zeros(8)})
    return torch.nn.Sequential(layer).eval()


def cast_notices(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "inputs will be cast" in r.getMessage()]


def test_the_cast_notice_is_dropped_only_while_a_hooked_layer_runs(caplog):
    caplog.set_level(logging.WARNING, logger=CAST_LOGGER)
    logger, parent = logging.getLogger(CAST_LOGGER), logging.getLogger("bitsandbytes")
    before = (logger.level, list(logger.filters), parent.level, list(parent.filters))
    plain, hooked = int8_model(0), int8_model(0)
    assert drop_int8_cast_notices(hooked) == 1
    with torch.no_grad():
        expected = plain(torch.ones(2, 16))
        assert len(cast_notices(caplog)) == 1  # what bitsandbytes says without the hooks
        got = hooked(torch.ones(2, 16))
        assert len(cast_notices(caplog)) == 1  # the hooked model added none
        plain(torch.ones(2, 16))
        assert len(cast_notices(caplog)) == 2  # the unhooked model's notice still gets through after
    assert torch.equal(got, expected)  # the hooked model computes the same
    assert (logger.level, list(logger.filters), parent.level, list(parent.filters)) == before
