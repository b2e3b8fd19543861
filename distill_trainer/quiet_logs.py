"""Log records dropped because a user can do nothing about them (imported first by the package)."""

import logging


def _drop_optional_kernel_notice(record: logging.LogRecord) -> bool:
    # peft imports bitsandbytes whenever it is installed, and bitsandbytes then tries to fetch an optional
    # 4-bit CPU kernel from the Hub and logs a warning when it cannot; nothing here uses that kernel (its
    # own fallback serves 4-bit teachers), so the warning is noise
    return not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward")


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_optional_kernel_notice)
