"""Log records and warnings that a user can do nothing about, dropped by the command lines.

    from distill_trainer.quiet_logs import install_quiet_logs
    install_quiet_logs()   # first thing a program does, before peft or bitsandbytes are imported

Importing the library changes no logging or warnings state: a program that wants these lines gone calls
`install_quiet_logs()` (every recipe does, through `run.quiet_start`, and so does the `distill-trainer`
command). Calling it again changes nothing more.
"""

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
# peft asks every model it wraps for `is_gradient_checkpointing`, which transformers has deprecated: one
# FutureWarning per LoRA student about code that is not ours
PEFT_DEPRECATION = "`is_gradient_checkpointing` is deprecated"


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


# one filter object per logger: adding it again is a no-op
_FILTERS = {name: _DropPrefix(prefix) for name, prefix in _NOISE.items()}


def install_quiet_logs() -> None:
    """Drop the known noise lines above, and only them, for the rest of the process."""
    for name, dropper in _FILTERS.items():
        logging.getLogger(name).addFilter(dropper)
    warnings.filterwarnings("ignore", message=PEFT_DEPRECATION, category=FutureWarning)
