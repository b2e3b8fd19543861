"""Only the two known lines about bitsandbytes' optional kernel are dropped; anything else from those
loggers still reaches the user."""

import logging

import distill_trainer  # noqa: F401  (installs the filters)


def passes(logger_name: str, message: str) -> bool:
    record = logging.LogRecord(logger_name, logging.WARNING, __file__, 1, message, None, None)
    return logging.getLogger(logger_name).filter(record)


def test_the_optional_kernel_notices_are_dropped_and_nothing_else():
    kernels = "kernels._internals.hf_hub"
    notice = "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because ..."
    assert not passes(kernels, notice)
    assert passes(kernels, "Skipping publisher trust check for 'someone/other-kernel' because ...")
    assert passes(kernels, "Failed to download kernel")
    cpu_ops = "bitsandbytes.backends.cpu.ops"
    assert not passes(cpu_ops, "Failed to load CPU gemm_4bit_forward from kernels-community: offline")
    assert passes(cpu_ops, "something else went wrong")
