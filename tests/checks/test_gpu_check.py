"""The GPU check's CPU dry run (checks/gpu_check.py --device cpu --tiny): the orchestration, the report,
and a step that fails or times out without stopping the others."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "checks" / "gpu_check.py"


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(tmp_path, *args):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable,
        str(SCRIPT),
        str(tmp_path / "results"),
        "--device",
        "cpu",
        "--tiny",
        "--wheels",
        str(tmp_path / "no-wheels"),
        *args,
    ]
    result = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    report = (tmp_path / "results" / "gpu_check.md").read_text()
    summary = json.loads((tmp_path / "results" / "gpu_check.json").read_text())
    return result, report, summary


@pytest.mark.integration
def test_a_step_past_its_timeout_is_killed_with_its_children_and_recorded(tmp_path):
    gpu_check = load_gpu_check()
    # the child starts a grandchild that would outlive a plain kill of the child
    code = (
        "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; "
        "time.sleep(60)']); print('started', flush=True); time.sleep(60)"
    )
    record = gpu_check.run_step(
        [sys.executable, "-c", code], tmp_path / "logs" / "slow.log", 2, dict(os.environ)
    )
    assert record["status"] == "timed out" and record["seconds"] < 20
    assert "killed after 2 s" in record["error"] and "started" in record["error"]
    failed = gpu_check.run_step(
        [sys.executable, "-c", "raise SystemExit('boom')"],
        tmp_path / "logs" / "bad.log",
        30,
        dict(os.environ),
    )
    assert failed["status"] == "failed" and "boom" in failed["error"]


@pytest.mark.integration
def test_cpu_dry_run_of_the_recipe_step_writes_the_report(tmp_path):
    result, report, summary = dry_run(tmp_path, "--steps", "recipe")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert report.startswith("# GPU check (CPU dry run, tiny sizes)")
    assert "- device: `cpu`" in report and "torch " in report and "- date: " in report
    assert "| install | skipped |" in report and "| environment | passed |" in report
    assert "| recipe | passed |" in report and "## bf16 recipe steps, prefix cache on and off" in report
    assert "Same losses within bf16 tolerance: yes." in report
    assert summary["steps"]["recipe"]["status"] == "passed"
    recipe = json.loads((tmp_path / "results" / "recipe" / "recipe.json").read_text())
    assert recipe["cached_forwards"]["prefix-cache"] > 0 and recipe["cached_forwards"]["no-prefix-cache"] == 0
    assert len(recipe["losses"]["prefix-cache"]) == 3


@pytest.mark.integration
@pytest.mark.slow
def test_cpu_dry_run_of_every_step_writes_every_table(tmp_path):
    result, report, summary = dry_run(
        tmp_path, "--memory-scenarios", "pbft-opt-1.3b,cd-bf16-lora,cd-cached-lora"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {name: step["status"] for name, step in summary["steps"].items()} == {
        "install": "skipped",
        "environment": "passed",
        "memory": "passed",
        "recipe": "passed",
        "speed": "passed",
    }
    for heading in (
        "## Memory at the paper's sizes",
        "### Peak memory while training",
        "## bf16 recipe steps, prefix cache on and off",
        "## Speed ratios (a)-(e)",
    ):
        assert heading in report
    assert "| PBFT OPT-1.3B, full, AdamW (reference) |" in report
    assert "| (e) ours + teacher output cache |" in report
    for path in (
        "memory/memory.md",
        "memory/memory.json",
        "speed/speed-quick.md",
        "recipe/recipe.json",
        "logs/memory.log",
    ):
        assert (tmp_path / "results" / path).is_file(), path
