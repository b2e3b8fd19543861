"""Only the known lines about bitsandbytes' optional kernel and peft's deprecated call are dropped (by
`install_quiet_logs`, or around the one peft call for the warning); anything else from those loggers still
reaches the user."""

import logging
import subprocess
import sys

import pytest

from distill_trainer.quiet_logs import _FILTERS, install_quiet_logs


@pytest.fixture(autouse=True)
def quiet_logs():
    """The filters a command installs, taken away after each test (pytest restores the warnings itself)."""
    install_quiet_logs()
    yield
    for name, dropper in _FILTERS.items():
        logging.getLogger(name).removeFilter(dropper)


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


@pytest.mark.integration
def test_peft_wrapping_a_model_warns_about_nothing():
    # in a fresh interpreter: pytest resets warning filters around every test
    code = (
        "from distill_trainer.models.loading import prepare_student\n"
        "from distill_trainer.testing import build_model\n"
        "prepare_student(build_model(64, seed=0), 'lora', lora_r=4, lora_target_modules=['q_proj'])\n"
    )
    done = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "is_gradient_checkpointing" not in done.stderr


def test_installing_twice_adds_nothing_more():
    install_quiet_logs()
    name = "kernels._internals.hf_hub"
    assert logging.getLogger(name).filters.count(_FILTERS[name]) == 1
