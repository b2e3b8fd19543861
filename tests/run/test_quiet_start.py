"""Ctrl-C at any moment, the first seconds included (while torch and transformers load): one line on stderr,
exit status 130, no traceback. The signal goes to the whole process group, as a terminal sends it."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from helpers import ROOT


def write_config(tmp_path, tiny_dirs) -> str:
    """A small comparison on the tiny models (it would run for a minute or so if left alone)."""
    values = {
        "model_name_or_path": tiny_dirs["student"],
        "teacher_model_name_or_path": tiny_dirs["teacher"],
        "data_source": "local",
        "data_dir": str(ROOT / "tests" / "data"),
        "k": 2,
        "num_train_examples": 8,
        "hans_per_subcase": 1,
        "max_steps": 2,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "methods": ["zero_shot", "pbft_full"],
        "results_dir": str(tmp_path / "results"),
        "run_name": "tiny",
    }
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def interpreter_start_seconds() -> float:
    """How long this machine takes now to start the interpreter and import the package root."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import distill_trainer"], cwd=ROOT, check=True)
    return time.perf_counter() - start


def interrupted_at(command: list[str], delay: float, tmp_path) -> tuple[int, str]:
    """Run `command`, send SIGINT to its process group after `delay` seconds; (exit status, stderr)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DISTILL_TRAINER_CACHE": str(tmp_path / "cache")}
    run = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own group: the signal reaches it and its children, not pytest
        # as at a terminal, even when the tests themselves run in the background (SIGINT ignored there)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        time.sleep(delay)
        assert run.poll() is None, f"it ended before the signal: {run.stderr.read()[-2000:]}"
        os.killpg(run.pid, signal.SIGINT)
        _, err = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    return run.returncode, err


@pytest.mark.integration
@pytest.mark.parametrize("delay", [0.5, 2.0, 5.0])
def test_ctrl_c_in_the_first_seconds_of_a_comparison_is_one_line_and_130(tmp_path, tiny_dirs, delay):
    config = write_config(tmp_path, tiny_dirs)
    status, err = interrupted_at([sys.executable, "recipes/compare.py", "--config", config], delay, tmp_path)
    assert status == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted: "), err[-3000:]
    # no cache was written this early: the line does not promise any cache entries
    if not (tmp_path / "cache" / "evaluations").exists():
        assert "cache" not in lines[0]
    assert f"recipes/compare.py --config {config}" in lines[0]


@pytest.mark.integration
def test_ctrl_c_while_the_command_line_tool_starts_is_one_line_and_130(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs)
    command = [sys.executable, "-m", "distill_trainer.run.cli", "validate", "--config", config]
    # after the interpreter's own start-up, which no program can guard (slow on a loaded machine)
    status, err = interrupted_at(command, max(0.5, 3 * interpreter_start_seconds()), tmp_path)
    assert status == 130 and "Traceback" not in err, err[-3000:]
    assert [line for line in err.splitlines() if line.strip()] == [
        f"interrupted: nothing was written yet; rerun with: distill-trainer validate --config {config}"
    ]


@pytest.mark.integration
def test_ctrl_c_while_the_interpreter_tears_down_is_ignored(tmp_path):
    # a Ctrl-C that lands after the program's work, in the teardown (here: from an exit handler)
    script = (
        "import atexit, os, signal\n"
        "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
        "import distill_trainer.run.quiet_start\n"
        "print('done', flush=True)\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert (run.returncode, run.stdout, run.stderr) == (0, "done\n", "")


@pytest.mark.integration
def test_after_a_handled_ctrl_c_the_teardown_cannot_end_the_process_by_the_signal(tmp_path):
    # an exit handler that runs after the program's (registered before it) and ends it by SIGINT, as a
    # Ctrl-C that landed inside torch's import was seen to do in the interpreter's teardown
    script = (
        "import atexit, os, signal\n"
        "atexit.register(lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.kill(os.getpid(), 2)))\n"
        "import distill_trainer.run.quiet_start\n"
        "from distill_trainer.run.interrupt import interruptible\n"
        "with interruptible([], program='prog'):\n"
        "    raise KeyboardInterrupt\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert (run.returncode, run.stderr) == (130, "interrupted: nothing was written yet; rerun with: prog\n")
