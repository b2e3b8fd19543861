"""Log records and warnings dropped because a user can do nothing about them (imported first by the
package)."""

import logging
import warnings

# peft imports bitsandbytes whenever it is installed, and bitsandbytes then looks for an optional 4-bit
# CPU kernel on the Hub: offline it logs that it skipped the kernel's publisher check, and without the
# kernel that it could not load it. Nothing here uses that kernel (bitsandbytes' own fallback serves 4-bit
# teachers), so both lines are noise printed before every command.
_NOISE = {
    "bitsandbytes.backends.cpu.ops": "Failed to load CPU gemm_4bit_forward",
    "kernels._internals.hf_hub": (
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
    ),
}


def _dropper(prefix: str):
    return lambda record: not record.getMessage().startswith(prefix)


for _name, _prefix in _NOISE.items():
    logging.getLogger(_name).addFilter(_dropper(_prefix))

# peft asks every model it wraps for `is_gradient_checkpointing`, which transformers has deprecated: one
# FutureWarning per LoRA student about code that is not ours
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
