"""Launching `distributed_run.py` in 2 CPU processes and reading back what each process reported; shared by
the DDP tests (`test_distributed.py`) and the ZeRO-3 / FSDP2 ones (`test_sharded.py`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent
STEPS = 3
JOBS = {  # name: (mode, per-device batch, accumulation, teacher); global batch 8 in every case
    "full-4x1": ("full", 4, 1, "teacher"),
    "lora-2x2": ("lora", 2, 2, "self"),
}
WEIGHTS = {"full": "model.safetensors", "lora": "adapter_model.safetensors"}


def teacher_for(spec: str, tiny_dirs) -> str:
    return tiny_dirs["teacher"] if spec == "teacher" else spec


def launch(tiny_dirs, output: Path, jobs: dict, *flags: str, timeout: int = 300) -> None:
    """Trains every job in one `torchrun --nproc_per_node 2` launch; `flags` pick the strategy."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(HERE / "distributed_run.py"),
        "--student",
        tiny_dirs["student"],
        "--output",
        str(output),
        "--steps",
        str(STEPS),
        *flags,
    ]
    for name, (mode, batch, accumulation, teacher) in jobs.items():
        command += ["--job", name, mode, str(batch), str(accumulation), teacher_for(teacher, tiny_dirs)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    # DeepSpeed compiles its CPU ops under a file lock; a build killed elsewhere leaves that lock behind in
    # the shared cache and every later launch waits on it forever. A folder of this test session's own
    # (shared by its launches, so each op is built once per session) cannot inherit such a lock.
    env["TORCH_EXTENSIONS_DIR"] = str(output.parent / "torch_extensions")
    if not torch.cuda.is_available():
        env["DS_ACCELERATOR"] = "cpu"  # DeepSpeed's CPU accelerator; no effect on the other strategies
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]


def reports(output: Path, name: str) -> list[dict]:
    return [json.loads((output / name / f"report-rank{rank}.json").read_text()) for rank in (0, 1)]


def max_difference(a: dict, b: dict) -> float:
    """The largest elementwise difference between two state dicts with the same keys."""
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)
