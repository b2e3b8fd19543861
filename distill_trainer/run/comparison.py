"""Running a comparison's methods: the plan (each method run, read back from an earlier run, or kept
from this run's folder), the methods' checks before the first one runs, each method in a fresh process
(its peak memory its own) or in this one, and the run's folder linked as `latest` and published.

    scripts = RecipeScripts(Path(__file__).resolve().parent, __package__ or None)   # in recipes/compare.py
    plan = plan_methods(student_args, data_args, compare, config, run_dir, given)
    check_planned_methods(plan, run_dir)
    results, seconds = run_methods(plan, compare, run_dir, scripts)
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from distill_trainer.errors import UsageError
from distill_trainer.report.tables import load_method_result
from distill_trainer.run.comparison_methods import method_arguments, method_config, write_method_yaml
from distill_trainer.run.interrupt import CHILD_ENV, forget_run, resume_flags
from distill_trainer.run.method_reuse import (
    Fingerprint,
    find_earlier_result,
    finished_here,
    method_fingerprint,
    record_fingerprint,
    recorded_costs,
    reuse_result,
    why_rerun,
)
from distill_trainer.run.progress import RunProgress, expected_seconds, format_duration
from distill_trainer.run.validate import validate_method_files

# what a row read back from an earlier run keeps of that run's measurements
REUSED_COSTS = (
    "peak_memory_mib",
    "needed_memory_mib",
    "wall_seconds",
    "phase_peak_mib",
    "phase_needed_mib",
    "runtime_mib",
)


@dataclass(frozen=True)
class RecipeScripts:
    """Where the methods' recipes live: `folder` holds their scripts (a fresh process runs one), `package`
    is the name they import under in this process (`recipes` when the comparison was imported as part of
    that package; None when it runs as a script, its folder first on sys.path). The caller says where:
    the library never imports the recipes by name."""

    folder: Path
    package: str | None = None

    def script(self, recipe: str) -> Path:
        return self.folder / f"{recipe}.py"

    def module(self, recipe: str):
        return importlib.import_module(f"{self.package}.{recipe}" if self.package else recipe)


# ---------------------------------------------------------------- the plan


@dataclass
class MethodPlan:
    """Every method of the run, in order, with its recipe and fingerprint, and what becomes of it."""

    recipes: dict[str, tuple[str, Fingerprint]] = field(default_factory=dict)
    earlier: dict[str, Path] = field(default_factory=dict)  # read back from an earlier run's folder
    done: set[str] = field(default_factory=set)  # finished in this run's folder before an interruption
    reran: dict[str, list[str]] = field(default_factory=dict)  # run (again): what changed, where known

    def to_run(self) -> list[str]:
        return [name for name in self.recipes if name not in self.done and name not in self.earlier]


def plan_methods(student_args, data_args, compare, config, run_dir: Path, given) -> MethodPlan:
    """Write each method's file into the run's folder and decide, from its fingerprint, whether it runs."""
    plan = MethodPlan()
    for name in compare.methods:
        recipe, values = method_config(name, student_args, data_args, compare, config, run_dir / name, given)
        write_method_yaml(recipe, values, run_dir / name / "method.yaml")
        fingerprint = method_fingerprint(recipe, values)
        plan.recipes[name] = (recipe, fingerprint)
        if compare.reuse == "never":
            plan.reran[name] = ["--reuse never"]
        elif finished_here(run_dir / name, fingerprint):  # this run, interrupted after the method finished
            plan.done.add(name)
        else:
            found = find_earlier_result(Path(compare.results_dir), name, fingerprint, exclude=run_dir)
            if found is not None:
                plan.earlier[name] = found
            else:
                plan.reran[name] = why_rerun(Path(compare.results_dir), name, fingerprint, exclude=run_dir)
    return plan


def read_shared_rows(plan: MethodPlan, computed: dict[str, Path]) -> None:
    """Methods that an earlier student of the same run already has under the same fingerprint (the
    teacher's own rows: its config is the same whoever the student) are read back from that student's
    folder, whatever `reuse` says: a run over several students computes each of them once.
    `computed`: fingerprint -> that method's folder."""
    for name, (_, fingerprint) in plan.recipes.items():
        if name not in plan.done and fingerprint in computed:
            plan.earlier[name] = computed[fingerprint]
            plan.reran.pop(name, None)


def say_why_rerun(reran: dict) -> None:
    """One line per method that runs again although an earlier run has a result of it: what changed."""
    for name, why in reran.items():
        if why:
            print(f"{name} runs again: {'; '.join(why)}", flush=True)


def check_planned_methods(plan: MethodPlan, run_dir: Path) -> None:
    """Check every method that will run as its recipe would, before the first one runs."""
    validate_method_files(
        {name: method_arguments(plan.recipes[name][0], run_dir / name) for name in plan.to_run()}
    )


def check_only(student_args, data_args, compare, config, run_name: str, given) -> dict:
    """Write every method's file in a scratch folder and check it as its recipe would; run nothing."""
    with tempfile.TemporaryDirectory(prefix="compare-check-") as scratch:
        run_dir = Path(scratch) / run_name
        methods = {}
        for name in compare.methods:
            recipe, values = method_config(
                name, student_args, data_args, compare, config, run_dir / name, given
            )
            write_method_yaml(recipe, values, run_dir / name / "method.yaml")
            methods[name] = method_arguments(recipe, run_dir / name)
        validate_method_files(methods)
    forget_run(Path(compare.results_dir) / run_name)
    print(f"ok: {len(methods)} methods checked ({', '.join(methods)}); nothing was run", flush=True)
    return {"checked": list(methods)}


# ---------------------------------------------------------------- running a method


def prepare_embedded_models(names) -> dict[str, float]:
    """Dequantize each embedded model that is not in the cache yet, in a child process (its peak memory is
    not this process's), and return the seconds each took: a first run's set-up, reported apart from the
    methods' time."""
    from distill_trainer.models.embedded import embedded_model_dir

    seconds = {}
    for name in dict.fromkeys(n for n in names if n and str(n).startswith("embedded:")):
        if embedded_model_dir(name).is_dir():
            continue  # built before (each method still verifies it when it loads)
        began = time.perf_counter()
        code = "import distill_trainer.run.quiet_start, sys; "  # Ctrl-C: this process prints the line
        code += "from distill_trainer.models.embedded import materialize_embedded_model as m; m(sys.argv[1])"
        child = subprocess.run(
            [sys.executable, "-c", code, name], check=False, env={**os.environ, CHILD_ENV: "1"}
        )
        if child.returncode == 130:
            raise KeyboardInterrupt
        if child.returncode != 0:
            raise UsageError(f"could not prepare {name}; its error is printed above")
        seconds[name] = round(time.perf_counter() - began, 1)
    return seconds


def run_in_fresh_process(scripts: RecipeScripts, recipe: str, config_path: Path, extra=()) -> int:
    """Run the recipe in a child process; returns its peak resident set in bytes (Linux/macOS rusage)."""
    command = [sys.executable, str(scripts.script(recipe)), "--config", str(config_path), *extra]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": os.environ.get("TRANSFORMERS_VERBOSITY", "error")}
    child = subprocess.Popen(command, env={**env, CHILD_ENV: "1"})  # on Ctrl-C this process says it
    try:
        _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage, not all children's
    except KeyboardInterrupt:
        child.wait()  # it had the same Ctrl-C: let it stop
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode == 130:  # interrupted on its own
        raise KeyboardInterrupt
    if child.returncode != 0:
        raise UsageError(
            f"{recipe} failed (exit status {child.returncode}) with config {config_path}; "
            "its error is printed above"
        )
    return usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def run_in_this_process(
    scripts: RecipeScripts, recipe: str, config_path: Path, tracker, name: str, extra=()
) -> int:
    """Run the recipe here; the peak is this process's during the method (earlier methods' leftovers
    count)."""
    module = scripts.module(recipe)
    with tracker.phase(name):
        module.main(["--config", str(config_path), *extra])
    return tracker.peak(name)["cpu_rss"]


def run_methods(plan: MethodPlan, compare, run_dir: Path, scripts: RecipeScripts) -> tuple[list[dict], float]:
    """Each method's result row, in order: run (in this process or a fresh one, resuming what an
    interrupted invocation of this run left), read back from an earlier run with the same fingerprint, or
    kept from this run (`plan.done`); and the seconds they took together."""
    earlier, done = plan.earlier, plan.done
    tracker = None
    if not compare.fresh_process_per_method:
        from distill_trainer.memory.peak import MemoryTracker

        tracker = MemoryTracker(device="cpu")
    progress = RunProgress(
        list(plan.recipes), expected_seconds(compare.results_dir), reused=set(earlier) | done
    )
    results, start = [], time.perf_counter()
    for name, (recipe, fingerprint) in plan.recipes.items():
        progress.start(name)
        began = time.perf_counter()
        method_dir = run_dir / name
        if name in earlier:
            reuse_result(earlier[name], method_dir)
            row = load_method_result(name, method_dir, None, 0.0)
            row.update(recorded_costs(method_dir))
            row["reused_from"] = str(earlier[name].parent.name)
        elif name in done:
            row = load_method_result(name, method_dir, None, 0.0)
            row.update(recorded_costs(method_dir))
        else:
            extra = resume_flags(method_dir)  # what an interrupted invocation of this run left
            if compare.fresh_process_per_method:
                peak = run_in_fresh_process(scripts, recipe, method_dir / "method.yaml", extra)
            else:
                peak = run_in_this_process(scripts, recipe, method_dir / "method.yaml", tracker, name, extra)
            row = load_method_result(name, method_dir, peak, time.perf_counter() - began)
            record_fingerprint(method_dir, fingerprint, {k: row[k] for k in REUSED_COSTS})
        if name in compare.probe_methods:
            row["memory_probe_steps"] = compare.memory_only_steps
        results.append(row)
        print(f"     {name} done in {format_duration(progress.done(name))}", flush=True)
    return results, time.perf_counter() - start


# ---------------------------------------------------------------- the run's folder


def student_folders(students: list[str]) -> dict[str, str]:
    """Each student's folder name in a run over several students: its alias, or the last part of its Hub
    id or path."""
    folders = {
        student: str(student).removeprefix("embedded:").rstrip("/").split("/")[-1] or "student"
        for student in students
    }
    if len(set(folders.values())) != len(folders):
        raise UsageError(
            f"students {students} share a folder name ({sorted(folders.values())}); give each student a "
            "distinct last path component"
        )
    return folders


def link_latest(run_dir: Path) -> None:
    latest = run_dir.parent / "latest"
    if latest.is_symlink() or latest.exists():
        latest.unlink()
    latest.symlink_to(run_dir.name, target_is_directory=True)


PUBLISHED = (
    "summary.md",
    "summary.json",
    "accuracy.png",
    "memory_time.png",
    "sizes.md",
    "sizes.json",
    "sizes.png",
)


def publish(run_dir: Path, target: Path, student_folders=()) -> None:
    """Copy the run's summary and plots to `target` (a run over several students: its size report, and
    each student's summary into a folder of the same name), replacing what an earlier run put there."""
    for source, destination in [(run_dir, target)] + [(run_dir / f, target / f) for f in student_folders]:
        destination.mkdir(parents=True, exist_ok=True)
        for name in PUBLISHED:
            if (source / name).is_file():
                shutil.copyfile(source / name, destination / name)
    print(f"published to {target}")
