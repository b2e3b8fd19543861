"""Memory benchmark at the sizes of arXiv 2412.13243: pattern-based fine-tuning (PBFT) of OPT-1.3B and
OPT-125M against context distillation (CD) from an OPT-1.3B teacher (fp32, bf16, 8-bit, 4-bit) into an
OPT-125M student (full, LoRA, BitFit), and with the teacher's outputs cached ahead of training.

    python benchmarks/memory.py                                 # everything; ~1 h on 2 CPU cores
    python benchmarks/memory.py --scenarios cd-8bit-lora,pbft-opt-125m
    python benchmarks/memory.py --device cuda                   # on a GPU: CUDA peak allocated bytes
    python benchmarks/memory.py --tiny --output-dir /tmp/mem    # tiny models, seconds (used by the tests)

Memory does not depend on the weights' values, so the models are random-initialised from the published
configurations (`distill_trainer/memory/architectures/*.json`). Each scenario runs a few optimizer steps of
`ContextDistillationTrainer` in a fresh subprocess (peaks never mix) on batches from `TwoViewCollator`
with the paper preset's shapes: 16 minimal-pattern demonstrations (~652 tokens), queries padded to
~90 tokens per batch. A scenario whose analytic estimate does not fit the memory available is reported
with the estimate, never dropped. Results: results/memory/{memory.md, memory.json, memory.png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from distill_trainer.memory.units import GIB

if __package__:  # imported as benchmarks.memory
    from benchmarks.memory_scenarios import (
        CACHE_TEACHERS,
        PAPER_CLAIMS,
        PAPER_SHAPES,
        REFERENCE,
        SCENARIOS,
        TINY_SHAPES,
        Scenario,
        build_student,
        estimate,
        model_config,
        scenario_batch,
        synthetic_views,
    )
else:  # run as a script (each scenario's worker): its folder is on the path
    from memory_scenarios import (
        CACHE_TEACHERS,
        PAPER_CLAIMS,
        PAPER_SHAPES,
        REFERENCE,
        SCENARIOS,
        TINY_SHAPES,
        Scenario,
        build_student,
        estimate,
        model_config,
        scenario_batch,
        synthetic_views,
    )

REPO_ROOT = Path(__file__).resolve().parent.parent
# Room left for the rest of the machine when deciding whether a scenario fits the available memory.
SAFETY_MARGIN = 1.5 * GIB
# The interpreter and libraries, before the estimate knows the real value (measured per scenario later).
RUNTIME_ALLOWANCE = 0.8 * GIB
# glibc's malloc raises its mmap threshold adaptively (up to 32 MiB), after which freed tensors stay in
# the heap and RSS overstates what is alive by hundreds of MiB. A fixed threshold hands every tensor
# above 128 KiB back to the OS when freed, so the RSS peak tracks live tensors, like CUDA's allocated
# bytes. --glibc-default measures with the adaptive behaviour instead.
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}


# ---------------------------------------------------------------------------------------------------
# workers: one scenario, or the on-disk sizes, in this process
# ---------------------------------------------------------------------------------------------------


def _import_runtime():
    """Import everything any scenario uses before measuring the baseline, so baselines are comparable."""
    import importlib.util

    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from distill_trainer.training import trainer  # noqa: F401

    if importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes  # noqa: F401


def scenario_rows(scenario: Scenario, settings: dict, vocab_size: int, per_step: int) -> list[dict]:
    """Synthetic two-view rows for every step; pattern-based fine-tuning sees the student view only."""
    rows = synthetic_views(
        per_step * settings["steps"], vocab_size, settings["student_tokens"], settings["demonstration_tokens"]
    )
    if not scenario.distills:
        rows = [{k: v for k, v in row.items() if not k.startswith("teacher_")} for row in rows]
    return rows


def training_arguments(
    scenario: Scenario, settings: dict, workdir: str, batch: int, accumulation: int, on_cuda: bool
):
    """The scenario's DistillationConfig: a few constant-rate steps, nothing saved."""
    from distill_trainer import DistillationConfig

    options = {"teacher_prefix_cache": scenario.prefix_cache}
    if scenario.teacher_outputs_cached:
        options.update(teacher_output_cache=True, teacher_cache_dir=str(Path(workdir) / "teacher_outputs"))
    known = {f.name for f in dataclasses.fields(DistillationConfig)}
    missing = [k for k in options if k not in known and options[k]]
    if missing:
        raise RuntimeError(f"DistillationConfig has no {missing}: this scenario needs the teacher caches")
    args = DistillationConfig(
        output_dir=str(Path(workdir) / "trainer"),
        per_device_train_batch_size=batch,
        per_device_eval_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=settings["steps"],
        learning_rate=1e-5,
        optim="adamw_torch" if scenario.optimizer == "adamw" else "sgd",
        lr_scheduler_type="constant",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        use_cpu=not on_cuda,
        seed=0,
        alpha=1.0 if scenario.distills else 0.0,
        dataloader_num_workers=0,
        **{k: v for k, v in options.items() if k in known},
    )
    return args


def measured(scenario: Scenario, trainer, tracker, runtime: int, seconds: float) -> dict:
    """The training phase's peak, what it is made of, and every phase's peaks."""
    from distill_trainer.memory.breakdown import memory_breakdown

    on_cuda = tracker.cuda is not None
    peaks = tracker.peak("train")
    peak = peaks["cuda_allocated"] if on_cuda else peaks["cpu_rss"]
    breakdown = memory_breakdown(
        peak,
        student=trainer.model,
        optimizer=trainer.optimizer,
        teacher=trainer.teacher.separate_model if trainer.teacher is not None else None,
        runtime_bytes=runtime,
    )
    return {
        "scenario": scenario.name,
        "status": "measured",
        "peak_bytes": peak,
        "runtime_bytes": runtime,
        # what the caching allocator held from the driver at its peak (allocated + cached free blocks)
        "peak_reserved_bytes": peaks.get("cuda_reserved"),
        "breakdown": breakdown.as_dict(),
        "memory": tracker.as_dict(),
        "seconds": round(seconds, 1),
    }


def run_scenario(scenario: Scenario, settings: dict, checkpoint: str | None, workdir: str) -> dict:
    """Train a few steps with `ContextDistillationTrainer` and record the peaks of every phase."""
    _import_runtime()
    import torch
    from datasets import Dataset

    from distill_trainer import ContextDistillationTrainer, TwoViewCollator
    from distill_trainer.memory.peak import MemoryCallback, MemoryTracker
    from distill_trainer.models.loading import count_parameters, load_causal_lm

    torch.manual_seed(0)
    device = settings["device"]
    tracker = MemoryTracker(device=device)
    on_cuda = tracker.cuda is not None
    runtime = 0 if on_cuda else tracker.baseline_cpu_rss
    batch, accumulation = scenario_batch(scenario, settings)
    cache_teacher = CACHE_TEACHERS[settings.get("cache_teacher", "8bit")]
    teacher_spec = cache_teacher if scenario.teacher_outputs_cached else dataclasses.asdict(scenario)

    with tracker.phase("model_load"):
        student = build_student(scenario, settings["tiny"])
        teacher = None
        if scenario.distills:
            teacher = load_causal_lm(
                checkpoint,
                dtype=teacher_spec["teacher_dtype"],
                quantization=teacher_spec["teacher_quantization"],
            )
    trainable, total = count_parameters(student)

    rows = scenario_rows(scenario, settings, student.config.vocab_size, batch * accumulation)
    args = training_arguments(scenario, settings, workdir, batch, accumulation, on_cuda)

    class TrackedTrainer(ContextDistillationTrainer):
        """Records the teacher's forward as its own phase (nested inside "train")."""

        def teacher_answer_logits(self, inputs):
            with tracker.phase("teacher_forward"):
                return super().teacher_answer_logits(inputs)

    started = time.perf_counter()
    phase = "teacher_output_cache" if scenario.teacher_outputs_cached else "trainer_init"
    with tracker.phase(phase):
        trainer = TrackedTrainer(
            model=student,
            teacher=teacher,
            args=args,
            train_dataset=Dataset.from_list(rows),
            data_collator=TwoViewCollator(pad_token_id=1),
            callbacks=[MemoryCallback(tracker)],
        )
    del teacher, student  # with cached outputs the trainer has dropped the teacher: let it go
    gc.collect()
    trainer.train()
    seconds = time.perf_counter() - started

    return measured(scenario, trainer, tracker, runtime, seconds) | {
        "trainable_parameters": trainable,
        "total_parameters": total,
        "batch_size": batch,
        "gradient_accumulation_steps": accumulation,
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
    }


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def run_disk(settings: dict, checkpoint: str, workdir: str, sizes_too: bool = True) -> dict:
    """Save the random-initialised teacher (kept: the CD scenarios load it) and students; measure the
    files. `sizes_too=False`: the teacher checkpoint only (the sizes are not asked for, and cost a minute
    at 1.3B)."""
    _import_runtime()
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    from distill_trainer.models.loading import load_causal_lm, prepare_student

    tiny, sizes, notes = settings["tiny"], {}, []
    torch.manual_seed(0)
    teacher = AutoModelForCausalLM.from_config(model_config("opt-1.3b", tiny), dtype=torch.float16)
    teacher.save_pretrained(checkpoint)  # fp16, as facebook/opt-1.3b is published
    sizes["teacher OPT-1.3B fp16"] = _directory_bytes(checkpoint)
    del teacher
    if not sizes_too:
        return {"scenario": "checkpoint", "status": "measured", "sizes_bytes": sizes, "notes": notes}
    scratch = Path(workdir) / "disk"
    for label, dtype, quantization in (("fp32", "float32", "none"), ("8-bit", "float32", "8bit")):
        try:
            model = load_causal_lm(checkpoint, dtype=dtype, quantization=quantization)
            model.save_pretrained(scratch / label)
            sizes[f"teacher OPT-1.3B {label}"] = _directory_bytes(scratch / label)
        except Exception as error:  # noqa: BLE001 - a serialisation limit is a finding, not a crash
            notes.append(f"teacher {label} not saved: {type(error).__name__}: {str(error).splitlines()[0]}")
        finally:
            model = None
            shutil.rmtree(scratch / label, ignore_errors=True)
    student = AutoModelForCausalLM.from_config(model_config("opt-125m", tiny), dtype=torch.float32)
    student.save_pretrained(scratch / "s32")
    sizes["student OPT-125M fp32 (full, or BitFit saved whole)"] = _directory_bytes(scratch / "s32")
    student.half().save_pretrained(scratch / "s16")
    sizes["student OPT-125M fp16"] = _directory_bytes(scratch / "s16")
    student = student.float()
    biases = {
        n: p.detach().clone()
        for n, p in prepare_student(student, "bitfit").named_parameters()
        if p.requires_grad
    }
    save_file(biases, str(scratch / "bitfit-biases.safetensors"))
    sizes["student BitFit, biases only (fp32)"] = (scratch / "bitfit-biases.safetensors").stat().st_size
    lora = prepare_student(
        AutoModelForCausalLM.from_config(model_config("opt-125m", tiny), dtype=torch.float32), "lora"
    )
    lora.save_pretrained(scratch / "lora")  # peft writes the adapters only
    sizes["student LoRA r=16 adapters only (fp32)"] = _directory_bytes(scratch / "lora")
    shutil.rmtree(scratch, ignore_errors=True)
    return {"scenario": "disk", "status": "measured", "sizes_bytes": sizes, "notes": notes}


def worker_main(argv: list[str]) -> None:
    """Entry point of a subprocess: --worker NAME --spec JSON --out FILE."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    ns = parser.parse_args(argv)
    spec = json.loads(ns.spec)
    if ns.worker in ("disk", "checkpoint"):
        result = run_disk(
            spec["settings"], spec["checkpoint"], spec["workdir"], sizes_too=ns.worker == "disk"
        )
    else:
        result = run_scenario(SCENARIOS[ns.worker], spec["settings"], spec["checkpoint"], spec["workdir"])
    Path(ns.out).write_text(json.dumps(result, indent=1))


# ---------------------------------------------------------------------------------------------------
# the parent: decide, launch, collect
# ---------------------------------------------------------------------------------------------------


def available_bytes(settings: dict) -> int:
    if settings["device"].startswith("cuda"):
        # asked from a short-lived process: a CUDA context opened here would hold memory for the whole run
        probe = f"import torch; print(torch.cuda.mem_get_info(torch.device({settings['device']!r}))[0])"
        return int(
            subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
        )
    import psutil

    return psutil.virtual_memory().available


def launch(name: str, spec: dict, in_process: bool, timeout: float) -> dict:
    """Run one worker in a fresh interpreter (or here, for tests) and return its result or the failure."""
    if in_process:
        try:
            if name in ("disk", "checkpoint"):
                return run_disk(
                    spec["settings"], spec["checkpoint"], spec["workdir"], sizes_too=name == "disk"
                )
            return run_scenario(SCENARIOS[name], spec["settings"], spec["checkpoint"], spec["workdir"])
        except Exception as error:  # noqa: BLE001 - recorded in the table like a crashed subprocess
            return {"scenario": name, "status": "failed", "error": f"{type(error).__name__}: {error}"}
        finally:
            gc.collect()
    out = Path(spec["workdir"]) / f"{name}.result.json"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--spec",
        json.dumps(spec),
        "--out",
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if not spec["settings"]["glibc_default"]:
        env.update(FIXED_MMAP_THRESHOLD)
    try:
        process = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT, check=False
        )
    except subprocess.TimeoutExpired:
        return {"scenario": name, "status": "failed", "error": f"timed out after {timeout:.0f} s"}
    if process.returncode != 0 or not out.is_file():
        tail = (process.stderr or process.stdout).strip().splitlines()[-3:]
        killed = process.returncode in (-9, 137)
        return {
            "scenario": name,
            "status": "failed",
            "error": ("killed (out of memory?)" if killed else f"exit code {process.returncode}")
            + ": "
            + " | ".join(tail),
        }
    return json.loads(out.read_text())


def run_all(
    settings: dict,
    names: list[str],
    output_dir: Path,
    in_process: bool,
    budget: float | None,
    timeout: float,
    keep_checkpoint: str | None,
) -> None:
    results_dir = output_dir / "scenarios"
    results_dir.mkdir(parents=True, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="memory-bench-")
    checkpoint = keep_checkpoint or str(Path(workdir) / "teacher-opt-1.3b-fp16")
    spec = {"settings": settings, "checkpoint": checkpoint, "workdir": workdir}
    try:
        needs_teacher = any(SCENARIOS[n].distills for n in names if n in SCENARIOS)
        if "disk" in names:
            _announce("disk", "saving the random-initialised models (the teacher checkpoint is reused)")
            _save(results_dir, "disk", launch("disk", spec, in_process, timeout), settings)
        elif needs_teacher and not Path(checkpoint, "config.json").is_file():
            _announce("checkpoint", "saving the random-initialised teacher")
            result = launch("checkpoint", spec, in_process, timeout)
            if result["status"] != "measured":
                _announce("checkpoint", "failed: " + result.get("error", ""))
        for name in names:
            if name == "disk":
                continue
            scenario = SCENARIOS[name]
            predicted = estimate(scenario, settings).total + RUNTIME_ALLOWANCE
            room = budget if budget is not None else available_bytes(settings) - SAFETY_MARGIN
            if predicted > room:
                result = {
                    "scenario": name,
                    "status": "does_not_fit",
                    "estimate_bytes": predicted,
                    "available_bytes": room,
                    "budget_given": budget is not None,
                }
                _announce(
                    name, f"does not fit: needs ~{predicted / GIB:.1f} GiB, {room / GIB:.1f} GiB available"
                )
            else:
                _announce(name, f"running (estimate {predicted / GIB:.1f} GiB)")
                result = launch(name, spec, in_process, timeout)
                if result["status"] == "measured":
                    _announce(name, f"peak {result['peak_bytes'] / GIB:.2f} GiB in {result['seconds']:.0f} s")
                else:
                    _announce(name, result["status"] + ": " + result.get("error", ""))
            _save(results_dir, name, result, settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _announce(name: str, message: str) -> None:
    print(f"[memory] {name}: {message}", flush=True)


def _save(results_dir: Path, name: str, result: dict, settings: dict) -> None:
    result["settings"] = settings
    result["code"] = _code_version()
    (results_dir / f"{name}.json").write_text(json.dumps(result, indent=1))


def load_results(output_dir: Path, settings: dict) -> dict[str, dict]:
    """Results on disk from runs with the same settings (so a partial rerun keeps the other rows)."""
    results = {}
    for path in sorted((output_dir / "scenarios").glob("*.json")):
        result = json.loads(path.read_text())
        if result.get("settings") == settings:
            results[result["scenario"]] = result
    return results


def parse_options(argv: list[str]):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--scenarios",
        default="all",
        help=f"comma-separated names or 'all'; names: disk, {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--output-dir", default=None, help="default results/memory (results/memory-tiny with --tiny)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="tiny models and sequences: a smoke run in seconds"
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, or cuda / cuda:N (the peak is then CUDA memory)"
    )
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument(
        "--gradient-accumulation-steps",
        type=int,
        default=2,
        help="2 already reaches the peak of any larger value: gradients are held from the second "
        "micro-batch on",
    )
    parser.add_argument(
        "--steps", type=int, default=2, help="optimizer steps (the optimizer state exists from step 1)"
    )
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        default=None,
        help="run a scenario only if its estimate fits this many GiB (default: available memory "
        f"minus {SAFETY_MARGIN / GIB:.1f} GiB, checked before each scenario)",
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per scenario")
    parser.add_argument(
        "--keep-checkpoint",
        default=None,
        help="directory for the random teacher checkpoint, kept for later runs (default: temporary)",
    )
    parser.add_argument(
        "--cache-teacher",
        choices=sorted(CACHE_TEACHERS),
        default="8bit",
        help="the teacher that builds the cached outputs of the cd-cached scenarios (bf16 where "
        "bitsandbytes is missing; training never sees it)",
    )
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="CPU: keep glibc's adaptive mmap threshold (RSS then includes freed heap memory)",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from stored results")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="run scenarios in this process (tests only: peaks then include earlier scenarios)",
    )
    ns = parser.parse_args(argv)
    return ns


def run_settings(ns) -> dict:
    """What every scenario of this run shares, as recorded beside its results."""
    shapes = TINY_SHAPES if ns.tiny else PAPER_SHAPES
    settings = {
        "tiny": ns.tiny,
        "device": ns.device,
        "micro_batch_size": ns.micro_batch_size,
        "gradient_accumulation_steps": ns.gradient_accumulation_steps,
        "steps": ns.steps,
        "demonstration_tokens": shapes["demonstration_tokens"],
        "student_tokens": shapes["student_tokens"],
        "paper_batch": shapes["paper_batch"],
        "glibc_default": ns.glibc_default,
    }
    if ns.cache_teacher != "8bit":  # recorded only when not the default, so earlier results still load
        settings["cache_teacher"] = ns.cache_teacher
    return settings


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        worker_main(argv)
        return 0
    ns = parse_options(argv)

    from distill_trainer.errors import UsageError

    settings = run_settings(ns)
    names = (
        ["disk", *SCENARIOS]
        if ns.scenarios == "all"
        else [n.strip() for n in ns.scenarios.split(",") if n.strip()]
    )
    unknown = [n for n in names if n != "disk" and n not in SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario(s) {unknown}; choose from: disk, {', '.join(SCENARIOS)}")
    if ns.steps < 2:
        raise UsageError("--steps must be >= 2: the optimizer state is allocated by the first step")
    output_dir = Path(ns.output_dir or ("results/memory-tiny" if ns.tiny else "results/memory"))
    budget = ns.memory_budget_gb * GIB if ns.memory_budget_gb is not None else None
    if not ns.report_only:
        run_all(settings, names, output_dir, ns.in_process, budget, ns.timeout, ns.keep_checkpoint)

    if __package__:  # imported as benchmarks.memory
        from .memory_report import write_report
    else:  # run as a script: its folder is on the path
        from memory_report import write_report

    write_report(
        load_results(output_dir, settings),
        settings,
        output_dir,
        estimate,
        SCENARIOS,
        REFERENCE,
        PAPER_CLAIMS,
        environment(settings["device"]),
    )
    print(f"[memory] wrote {output_dir}/memory.md, memory.json, memory.png", flush=True)
    return 0


def environment(device: str = "cpu") -> dict:
    from importlib import metadata

    import psutil

    versions = {}
    for package in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, {psutil.virtual_memory().total / GIB:.1f} GiB RAM"
    )
    if device.startswith("cuda"):  # asked from a short-lived process, like available_bytes
        probe = (
            f"import torch; p = torch.cuda.get_device_properties(torch.device({device!r})); "
            "print(f'{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}')"
        )
        gpu = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, check=False
        ).stdout.strip()
        machine += f"; {gpu or 'GPU not identified'}"
    return {
        "machine": machine,
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d"),
    }


def _code_version() -> str | None:
    """The commit the numbers were measured on (results move when the trainer or its caches change)."""

    def git(*args):
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, cwd=REPO_ROOT, check=False
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return None
    return commit + (
        " with uncommitted changes" if git("status", "--porcelain", "--untracked-files=no") else ""
    )


if __name__ == "__main__":
    sys.exit(main())
