"""One prepared GPU check, in under 8 minutes on one GPU, writing partial results as it goes.

    python3 checks/gpu_check.py RESULTS_DIR                         # on the GPU machine (device cuda)
    python3 checks/gpu_check.py RESULTS_DIR --device cpu --tiny     # the dry run on CPU (about 2 min)

Steps, each in its own process group with a timeout cut from one overall budget (--budget-s); a step that
fails or times out records its error and the next one runs:
  0. install: the wheels fetched by checks/gpu_wheels.sh (default folder gpu-wheels/, when present) go
     into a fresh temporary folder with `pip install --no-index --no-deps --target`, put first on the steps'
     PYTHONPATH; the interpreter's own packages (its CUDA build of torch above all) are never touched
  1. environment: GPU name, torch / CUDA / package versions, whether bitsandbytes works (else the 8-bit
     rows are skipped, with a line saying so)
  2. memory: benchmarks/memory.py at the paper's sizes (PBFT of OPT-1.3B and OPT-125M, CD from the
     OPT-1.3B teacher in bf16 and 8-bit into full / LoRA / BitFit students, output-cached CD), CUDA peak
     allocated and reserved beside the analytic model
  3. recipe: recipes/context_distill.py for a few bf16 steps on a small random-init model with the teacher
     prefix cache on and off; the per-step losses must agree within bf16 tolerance
  4. speed: benchmarks/speed.py's ratios (a)-(e) for the OPT-1.3B teacher -> OPT-125M student

Results: RESULTS_DIR/gpu_check.md (a header with GPU, torch, CUDA and date, then every step's tables),
gpu_check.json, and per step memory/, recipe/, speed/ and logs/. gpu_check.md is rewritten after each
step. Exit code 0 when every step passed. docs/gpu.md says how to run it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WHEELS = REPO / "gpu-wheels"

# The paper's scenarios, most telling first, so a step cut short still has the headline rows.
MEMORY_SCENARIOS = [
    "pbft-opt-1.3b",
    "cd-8bit-lora",
    "cd-cached-lora",
    "pbft-opt-125m",
    "cd-bf16-lora",
    "cd-bf16-full",
    "cd-8bit-full",
    "cd-bf16-bitfit",
    "cd-8bit-bitfit",
    "cd-cached-full",
    "cd-cached-bitfit",
]
# Per-step time caps (s) and what each later step keeps in reserve, for the GPU run and for --tiny.
CAPS = {"install": 90, "environment": 60, "memory": 270, "recipe": 90, "speed": 150}
RESERVE = {"memory": 15, "recipe": 60, "speed": 90}
# bf16 keeps 8 bits of mantissa: the prefix-cached and the plain teacher agree to ~1e-2 relative
LOSS_RTOL, LOSS_ATOL = 3e-2, 1e-2
PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "datasets",
    "accelerate",
    "evaluate",
    "bitsandbytes",
    "trl",
    "huggingface_hub",
    "safetensors",
    "pyarrow",
)


# ---------------------------------------------------------------------------------------------------
# running a step: a process group with a timeout, output to a log
# ---------------------------------------------------------------------------------------------------


def run_step(command: list[str], log: Path, timeout: float, env: dict) -> dict:
    """Run `command` in a new process group (so its children die with it on timeout); return a record."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env, start_new_session=True
        )
        try:
            code = process.wait(timeout=max(timeout, 1))
            status = "passed" if code == 0 else "failed"
            error = None if code == 0 else f"exit code {code}"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status, error = "timed out", f"killed after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    if error:
        tail = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-3:]
        error += ": " + " | ".join(line.strip()[:200] for line in tail)
    return {"status": status, "seconds": round(seconds, 1), "error": error, "log": str(log)}


class Budget:
    """Seconds left of the whole run; a step gets its cap, less what the later steps keep in reserve."""

    def __init__(self, total: float):
        self.deadline = time.monotonic() + total

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def for_step(self, name: str, later: list[str], scale: float) -> float:
        reserve = sum(RESERVE.get(step, 0) * scale for step in later)
        return max(0.0, min(CAPS[name] * scale, self.left() - reserve))


# ---------------------------------------------------------------------------------------------------
# steps
# ---------------------------------------------------------------------------------------------------


def install_wheels(wheels: Path, results: Path, timeout: float) -> tuple[dict, str | None]:
    """pip-install every wheel of `wheels` into a fresh folder; (record, that folder or None)."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        return {
            "status": "skipped",
            "seconds": 0,
            "error": None,
            "note": f"no wheels in {wheels.name}/: the interpreter's own packages are used",
        }, None
    site = tempfile.mkdtemp(prefix="distill-trainer-site-")
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--target",
        site,
        *map(str, found),
    ]
    record = run_step(command, results / "logs" / "install.log", timeout, dict(os.environ))
    record["note"] = (
        f"{len(found)} wheels ({sum(w.stat().st_size for w in found) / 2**20:.1f} MiB): "
        + ", ".join(w.name.split("-")[0] + " " + w.name.split("-")[1] for w in found)
    )
    return record, site if record["status"] == "passed" else None


ENVIRONMENT_PROBE = """
import json, sys, time, importlib, importlib.metadata as md
device = sys.argv[1]
info = {"python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d %H:%M %Z"), \
"versions": {}, "errors": {}}
for name in sys.argv[2:]:
    try:
        info["versions"][name] = md.version(name)
    except md.PackageNotFoundError:
        info["versions"][name] = None
import torch
info["cuda"] = torch.version.cuda
info["gpu"] = None
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        info["errors"]["cuda"] = "torch.cuda.is_available() is False"
    else:
        p = torch.cuda.get_device_properties(torch.device(device))
        info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}"
        info["bf16"] = torch.cuda.is_bf16_supported()
for name in ("transformers", "peft", "datasets", "distill_trainer"):
    try:
        importlib.import_module(name)
    except Exception as e:
        info["errors"][name] = f"{type(e).__name__}: {e}"
# 8-bit: one int8 linear layer forward on the device, the smallest proof that bitsandbytes' kernels load
try:
    import bitsandbytes as bnb
    layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False).to(device)
    layer(torch.randn(2, 64, device=device, \
dtype=torch.float16 if device.startswith("cuda") else torch.float32))
    info["bitsandbytes_works"] = True
except Exception as e:
    info["bitsandbytes_works"] = False
    info["errors"]["bitsandbytes"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
print("ENVIRONMENT " + json.dumps(info))
"""


def probe_environment(device: str, results: Path, timeout: float, env: dict) -> dict:
    log = results / "logs" / "environment.log"
    record = run_step([sys.executable, "-c", ENVIRONMENT_PROBE, device, *PACKAGES], log, timeout, env)
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("ENVIRONMENT ")]
    record["info"] = json.loads(lines[-1][len("ENVIRONMENT ") :]) if lines else {}
    return record


def memory_step(options, results: Path, timeout: float, env: dict, has_8bit: bool) -> dict:
    scenarios = [s for s in options.memory_scenarios.split(",") if s]
    skipped = [s for s in scenarios if "8bit" in s] if not has_8bit else []
    scenarios = [s for s in scenarios if s not in skipped]
    out = results / "memory"
    common = [
        sys.executable,
        "benchmarks/memory.py",
        "--device",
        options.device,
        "--output-dir",
        str(out),
        "--scenarios",
        ",".join(scenarios),
        "--cache-teacher",
        "8bit" if has_8bit else "bf16",
    ]
    if options.tiny:
        common.append("--tiny")
    command = common + ["--timeout", str(CAPS["memory"] * options.scale * 0.5)]
    record = run_step(
        command, results / "logs" / "memory.log", timeout - RESERVE["memory"] * options.scale, env
    )
    if record["status"] != "passed":
        # the scenarios measured so far are on disk: write their report anyway
        report = run_step(
            common + ["--report-only"],
            results / "logs" / "memory-report.log",
            RESERVE["memory"] * options.scale,
            env,
        )
        record["report"] = report["status"]
    if skipped:
        record["skipped"] = (
            f"8-bit rows skipped ({', '.join(skipped)}): bitsandbytes is not installed or its "
            "kernels do not load here (see the environment step)"
        )
    table = out / "memory.md"
    record["markdown"] = table.read_text() if table.is_file() else None
    return record


def speed_step(options, results: Path, timeout: float, env: dict) -> dict:
    out = results / "speed"
    command = [sys.executable, "benchmarks/speed.py", "--device", options.device, "--output-dir", str(out)]
    command += ["--quick"] if options.tiny else ["--models", "opt-1.3b", "--batch-size", "8"]
    record = run_step(command, results / "logs" / "speed.log", timeout, env)
    tables = sorted(out.glob("speed*.md"))
    record["markdown"] = tables[0].read_text() if tables else None
    return record


def recipe_step(options, results: Path, timeout: float, env: dict) -> dict:
    out = results / "recipe"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--recipe-worker",
        str(out),
        "--device",
        options.device,
    ]
    if options.tiny:
        command.append("--tiny")
    record = run_step(command, results / "logs" / "recipe.log", timeout, env)
    summary = out / "recipe.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        record["markdown"] = data["markdown"]
        if record["status"] == "passed" and not data["same_losses"]:
            record["status"], record["error"] = "failed", "losses differ beyond bf16 tolerance"
    return record


# ---------------------------------------------------------------------------------------------------
# the recipe worker: context_distill.py with the prefix cache on and off, bf16
# ---------------------------------------------------------------------------------------------------


def recipe_config(models: Path, output_dir: Path, device: str, prefix_cache: bool, steps: int) -> dict:
    """The context_distill recipe of one run: bf16 teacher and autocast, only teacher_prefix_cache varies."""
    return {
        "model_name_or_path": str(models / "student"),
        "teacher_model_name_or_path": str(models / "teacher"),
        "teacher_dtype": "bfloat16",
        "bf16": True,
        "use_cpu": device == "cpu",
        "teacher_prefix_cache": prefix_cache,
        "task": "mnli",
        "eval_tasks": ["mnli"],
        "data_source": "local",
        "data_dir": str(REPO / "tests" / "data"),
        "k": 4,
        "num_train_examples": 16,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "max_steps": steps,
        "learning_rate": 1e-4,
        "lr_scheduler_type": "constant",
        "save_strategy": "no",
        "logging_steps": 1,
        "disable_tqdm": True,
        "report_to": "none",
        "seed": 0,
        "output_dir": str(output_dir),
    }


def compare_losses(losses: dict, cached_forwards: dict, steps: int, device: str, width: int, layers: int):
    """(the two runs' losses agree within bf16 tolerance and the cache ran, the markdown saying so)."""
    with_cache, without = losses["prefix-cache"], losses["no-prefix-cache"]
    cache_ran = cached_forwards["prefix-cache"] > 0 and cached_forwards["no-prefix-cache"] == 0
    rows, same = [], len(with_cache) == len(without) == steps and cache_ran
    for step, (a, b) in enumerate(zip(with_cache, without), 1):
        ok = abs(a - b) <= LOSS_ATOL + LOSS_RTOL * abs(b)
        same &= ok
        rows.append(f"| {step} | {a:.5f} | {b:.5f} | {abs(a - b):.2e} | {'ok' if ok else 'DIFFERENT'} |")
    markdown = "\n".join(
        [
            (
                f"`recipes/context_distill.py`, {steps} steps, bf16 (teacher loaded in bf16, student under "
                f"bf16 autocast), device `{device}`; random-init Llama student and teacher ({layers} layers "
                f"x {width}), k=4 demonstrations; tolerance |diff| <= {LOSS_ATOL:g} + {LOSS_RTOL:g} |loss|."
            ),
            "",
            "| step | KD loss, prefix cache | KD loss, no prefix cache | abs diff | |",
            "|---:|---:|---:|---:|---|",
            *rows,
            "",
            (
                f"Prefix-cached teacher forwards: {cached_forwards['prefix-cache']} with the cache, "
                f"{cached_forwards['no-prefix-cache']} without."
            ),
            f"Same losses within bf16 tolerance: {'yes' if same else 'NO'}.",
        ]
    )
    return same, markdown


def recipe_worker(out: Path, device: str, tiny: bool) -> int:
    """Two runs of recipes/context_distill.py (in this process) that differ only in teacher_prefix_cache."""
    import importlib.util

    import yaml

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_model, build_tokenizer  # the tests' offline tokenizer and tiny Llama

    out.mkdir(parents=True, exist_ok=True)
    models = out / "models"
    tokenizer = build_tokenizer()
    # on a GPU a model big enough for bf16 rounding to show; on CPU the tests' tiny size
    width, layers = (64, 2) if tiny else (512, 4)
    for name, seed in (("student", 0), ("teacher", 1)):
        build_model(len(tokenizer), seed=seed, hidden_size=width, layers=layers).save_pretrained(
            models / name
        )
        tokenizer.save_pretrained(models / name)
    # count the prefix-cached teacher forwards, so "same losses" cannot come from the cache never running
    import distill_trainer.teacher.prefix_cache as prefix_cache_module

    cached_calls = {"n": 0}
    original = prefix_cache_module.PrefixCachedModel.answer_logits

    def counted(self, *args, **kwargs):
        cached_calls["n"] += 1
        return original(self, *args, **kwargs)

    prefix_cache_module.PrefixCachedModel.answer_logits = counted
    spec = importlib.util.spec_from_file_location("context_distill", REPO / "recipes" / "context_distill.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    steps = 3
    losses, cached_forwards = {}, {}
    for prefix_cache in (True, False):
        name = "prefix-cache" if prefix_cache else "no-prefix-cache"
        config = recipe_config(models, out / name, device, prefix_cache, steps)
        path = out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        cached_calls["n"] = 0
        metrics = recipe.main(["--config", str(path)])
        cached_forwards[name] = cached_calls["n"]
        losses[name] = [log["kd_loss"] for log in metrics["log_history"] if "kd_loss" in log]
    same, markdown = compare_losses(losses, cached_forwards, steps, device, width, layers)
    (out / "recipe.json").write_text(
        json.dumps(
            {"losses": losses, "cached_forwards": cached_forwards, "same_losses": same, "markdown": markdown},
            indent=1,
        )
    )
    shutil.rmtree(models, ignore_errors=True)
    print(markdown)
    return 0 if same else 1


# ---------------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------------


def _demote_headings(markdown: str) -> str:
    """A step's own report inside ours: its headings one level down."""
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def write_report(results: Path, options, records: dict, started: float) -> None:
    env = (records.get("environment") or {}).get("info", {})
    versions = env.get("versions", {})
    header = [
        "# GPU check" + (" (CPU dry run, tiny sizes)" if options.tiny else ""),
        "",
        f"- device: `{options.device}`; GPU: {env.get('gpu') or 'none'}",
        f"- torch {versions.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}; "
        + ", ".join(f"{k} {versions.get(k)}" for k in PACKAGES if k not in ("torch",)),
        (
            f"- date: {env.get('date') or time.strftime('%Y-%m-%d')}; host {platform.node()}; "
            f"{time.perf_counter() - started:.0f} s so far of a {options.budget_s:.0f} s budget"
        ),
        f"- command: `python3 checks/gpu_check.py {' '.join(options.argv)}`",
        "",
        "| step | status | seconds | note |",
        "|---|---|---:|---|",
    ]
    for name, record in records.items():
        note = record.get("error") or record.get("note") or record.get("skipped") or ""
        header.append(
            f"| {name} | {record['status']} | {record.get('seconds', '')} | {note.replace('|', '/')[:300]} |"
        )
    if env.get("errors"):
        header += ["", "Environment problems: " + "; ".join(f"{k}: {v}" for k, v in env["errors"].items())]
    body = []
    titles = {
        "memory": "Memory at the paper's sizes",
        "recipe": "bf16 recipe steps, prefix cache on and off",
        "speed": "Speed ratios (a)-(e)",
    }
    for name, title in titles.items():
        record = records.get(name)
        if record is None:
            continue
        body += ["", f"## {title}", ""]
        if record.get("skipped"):
            body += [f"**{record['skipped']}.**", ""]
        if record.get("markdown"):
            body.append(_demote_headings(record["markdown"]))
        else:
            body.append(f"No table: {record['status']} ({record.get('error') or 'not run'}); see its log.")
    (results / "gpu_check.md").write_text("\n".join(header + body) + "\n")
    slim = {k: {kk: vv for kk, vv in v.items() if kk != "markdown"} for k, v in records.items()}
    (results / "gpu_check.json").write_text(
        json.dumps({"device": options.device, "tiny": options.tiny, "steps": slim}, indent=1)
    )


# ---------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------


def parse_options(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", nargs="?", help="results folder (created)")
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu for the dry run")
    parser.add_argument("--tiny", action="store_true", help="tiny models and sequences (the CPU dry run)")
    parser.add_argument("--wheels", default=str(DEFAULT_WHEELS), help="folder of wheels to install first")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="whole-run budget (default 470; --tiny 600)"
    )
    parser.add_argument("--steps", default="memory,recipe,speed", help="comma-separated subset to run")
    parser.add_argument("--memory-scenarios", default=",".join(MEMORY_SCENARIOS))
    parser.add_argument("--recipe-worker", default=None, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    return parser, options


def step_environment() -> dict:
    """Each step's subprocess environment: offline, unbuffered, sleeping OpenMP threads."""
    return dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONUNBUFFERED="1",
        OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, options = parse_options(argv)
    if options.recipe_worker:
        return recipe_worker(Path(options.recipe_worker), options.device, options.tiny)
    if not options.results:
        parser.error("the results folder is required")
    options.argv = argv
    options.budget_s = options.budget_s or (600.0 if options.tiny else 470.0)
    options.scale = options.budget_s / 470.0  # step caps and reserves follow the budget
    results = Path(options.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    budget = Budget(options.budget_s)
    steps = [s for s in options.steps.split(",") if s]
    records: dict[str, dict] = {}

    def announce(name):
        record = records[name]
        print(
            f"[gpu_check] {name}: {record['status']} in {record.get('seconds', 0)} s"
            + (f" ({record['error']})" if record.get("error") else ""),
            flush=True,
        )
        write_report(results, options, records, started)

    env = step_environment()
    records["install"], site = install_wheels(
        Path(options.wheels), results, budget.for_step("install", steps, options.scale)
    )
    announce("install")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (site, str(REPO), os.environ.get("PYTHONPATH")) if p)
    records["environment"] = probe_environment(
        options.device, results, budget.for_step("environment", steps, options.scale), env
    )
    announce("environment")
    has_8bit = bool(records["environment"]["info"].get("bitsandbytes_works"))
    for i, name in enumerate(steps):
        timeout = budget.for_step(name, steps[i + 1 :], options.scale)
        if timeout < 10:
            records[name] = {"status": "not run", "seconds": 0, "error": "no time left in the budget"}
        elif name == "memory":
            records[name] = memory_step(options, results, timeout, env, has_8bit)
        elif name == "recipe":
            records[name] = recipe_step(options, results, timeout, env)
        elif name == "speed":
            records[name] = speed_step(options, results, timeout, env)
        else:
            parser.error(f"unknown step {name!r}; choose from memory, recipe, speed")
        announce(name)
    if site:
        shutil.rmtree(site, ignore_errors=True)
    print(
        f"[gpu_check] wrote {results / 'gpu_check.md'} in {time.perf_counter() - started:.0f} s", flush=True
    )
    return 0 if all(r["status"] in ("passed", "skipped") for r in records.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
