"""bitsandbytes' 8-bit layers log "MatMul8bitLt: inputs will be cast from torch.float32 to float16" on
every matmul of an input that is not float16: one line per layer per forward pass of an 8-bit teacher,
about a cast the teacher is meant to do. The line is dropped while one of the model's 8-bit layers runs,
and only then: the logger's level and filters are as they were outside those calls, so every other
bitsandbytes message, and this one from other models, still reaches the user.

    int8 = BitsAndBytesConfig(load_in_8bit=True)
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=int8, device_map={"": 0})
    drop_int8_cast_notices(model)
"""

from __future__ import annotations

import logging

CAST_LOGGER = "bitsandbytes.autograd._functions"
CAST_NOTICE = "MatMul8bitLt: inputs will be cast"


class _CastNoticeFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(CAST_NOTICE)


_FILTER = _CastNoticeFilter()


def _add_filter(module, inputs) -> None:
    logging.getLogger(CAST_LOGGER).addFilter(_FILTER)  # a no-op when already there (nested layers)


def _remove_filter(module, inputs, output) -> None:
    logging.getLogger(CAST_LOGGER).removeFilter(_FILTER)


def drop_int8_cast_notices(model) -> int:
    """Hook every bitsandbytes 8-bit linear layer of `model` so that its float-cast notice is dropped while
    it runs; returns how many layers were hooked."""
    hooked = 0
    for module in model.modules():
        if type(module).__name__ == "Linear8bitLt":  # by name: bitsandbytes need not be importable
            module.register_forward_pre_hook(_add_filter)
            # always_call: the filter goes even when the layer raises
            module.register_forward_hook(_remove_filter, always_call=True)
            hooked += 1
    return hooked
