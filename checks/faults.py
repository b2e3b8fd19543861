"""The fault campaign: kill the job with SIGKILL at seeded write events in every phase, rerun it until it
completes, and check that it ends exactly as an uninterrupted run does, with no partial file left.

    python -m checks.faults                    # 56 SIGKILLs (8 per phase) and 7 Ctrl-Cs, seed 0
    python -m checks.faults --per-phase 2 --seed 3

The job (`checks/fault_job.py`) is the main job's shape on tiny random models: the comparison
(`recipes/compare.py`: the teacher's ICL evaluation and its evaluation cache, the teacher pass and its
output cache, two students trained with a checkpoint per step, their evaluation, the summary), then
`recipes/distill_context.py` (the teacher's completions and their cache, training with checkpoints, the
report). One uninterrupted run logs its write events (a file opened for writing, a rename, a removal
under the campaign's folder) with their times; each kill point is one of those events, drawn per phase
with a seeded generator, struck either just before the event (the file is never written, the rename
never happens) or at a seeded moment between the event before it and it (a training step, a teacher
pass, a write under way). After each kill the same command runs again until it exits 0 (at most 3
times), and the outcome is compared with the uninterrupted run's:

- results: summary.json, every predictions file and metrics.json, with the fields that measure time or
  memory left out (they differ between any two runs), as are the caches' counts of entries reused and
  generated (a rerun reads what the killed run stored), and the sha256 of every saved student's weights;
- files: every file under the run's folders has a counterpart in the uninterrupted run (no stray
  `.partial`, temporary, staging or lock file), and every JSON file parses.

Writes results/faults/faults.md (the table per phase) and faults.json (every kill point).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

from checks.fault_outcome import OUTPUTS, differences, file_listing, outcome, partial_files
from distill_trainer.code_digest import code_record
from distill_trainer.code_stamp import stamp_json, stamp_markdown

ROOT = Path(__file__).resolve().parents[1]
CAMPAIGN_SCRIPTS = [
    *(f"checks/{name}.py" for name in ("faults", "fault_job", "fault_outcome")),
    *(f"recipes/{name}.py" for name in ("compare", "icl_eval", "pattern_finetune", "context_distill")),
    "recipes/distill_context.py",
]
DATA = ROOT / "tests" / "data"
CONTEXT = "Answer with one Python function."
PROMPTS = ["Write a cat.", "A dog runs in the park", "The doctor saw the lawyer", "Two dogs run"]
TINY = {"report_to": "none", "use_cpu": True, "disable_tqdm": True, "logging_steps": 1, "seed": 0}
PHASES = (
    "set-up",
    "ICL evaluation",
    "teacher pass",
    "training checkpoints",
    "students and evaluation",
    "summary",
    "completion cache",
)


# ---------------------------------------------------------------- the job's folder


def prepare(root: Path) -> None:
    """Tiny student and teacher (one chat tokenizer), the data of distill_context, both configs."""
    from distill_trainer.testing import build_chat_tokenizer, build_model

    tokenizer = build_chat_tokenizer()
    models = {}
    for name, seed, width in (("student", 0, 32), ("teacher", 1, 48)):
        models[name] = root / "models" / name
        build_model(len(tokenizer), seed=seed, hidden_size=width).save_pretrained(models[name])
        tokenizer.save_pretrained(models[name])
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (data / "heldout.jsonl").write_text("".join(json.dumps({"prompt": p + " again"}) + "\n" for p in PROMPTS))
    training = {**TINY, "max_steps": 3, "save_strategy": "steps", "save_steps": 1}
    compare = {
        "model_name_or_path": str(models["student"]),
        "teacher_model_name_or_path": str(models["teacher"]),
        "task": "mnli",
        "eval_tasks": ["mnli", "hans"],
        "data_source": "local",
        "data_dir": str(DATA),
        "pattern": "gpt3",
        "k": 2,
        "demonstration_ids": [21, 57],
        "num_train_examples": 8,
        "hans_per_subcase": 1,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "teacher_output_cache": True,
        "methods": ["icl_teacher", "cd_full", "cd_lora"],
        "fresh_process_per_method": False,
        "results_dir": str(root / "results"),
        "run_name": "tiny",
        "full_learning_rate": 1e-3,
        "lora_learning_rate": 1e-2,
        **training,
    }
    context = {
        "model_name_or_path": str(models["student"]),
        "student_mode": "lora",
        "teacher_model_name_or_path": "self",
        "data_file": str(data / "train.jsonl"),
        "eval_data_file": str(data / "heldout.jsonl"),
        "context": CONTEXT,
        "checker": "python_function",
        "max_new_tokens": 5,
        "generation_batch_size": 2,
        "teacher_output_cache": True,
        "output_dir": str(root / "context"),
        "per_device_train_batch_size": 2,
        "learning_rate": 1e-2,
        **training,
    }
    (root / "compare.yaml").write_text(yaml.safe_dump(compare))
    (root / "distill_context.yaml").write_text(yaml.safe_dump(context))


def clean(root: Path) -> None:
    for name in OUTPUTS:
        shutil.rmtree(root / name, ignore_errors=True)


def run_job(root: Path, events=None, kill=None, timeout=900) -> tuple[int, str]:
    """One run of the job in a child process: (exit status, -9 when killed; its stderr). `kill`: (event,
    delay in seconds, signal name)."""
    env = {**os.environ, "DISTILL_TRAINER_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    env.pop("FAULT_KILL", None)
    env.pop("FAULT_EVENTS", None)
    if events:
        env["FAULT_EVENTS"] = str(events)
    if kill:
        env["FAULT_KILL"] = f"{kill[0]}:{kill[1]:.4f}:{kill[2]}"
    child = subprocess.run(
        [sys.executable, "-m", "checks.fault_job", str(root)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    return child.returncode, child.stderr


# ---------------------------------------------------------------- phases and kill points


def phase_of(path: str) -> str:
    """The phase a write event belongs to, from the path it writes (relative to the campaign's folder; a
    partial file `.<name>.<pid>.partial` counts as `<name>`)."""
    parts = path.split("/")
    name = parts[-1]
    if name.startswith(".") and name.endswith(".partial"):
        name = name[1:].rsplit(".", 2)[0]
    if path.startswith("cache/evaluations"):
        return "ICL evaluation"
    if path.startswith("cache/teacher_outputs"):
        return "teacher pass"
    if path.startswith("cache/teacher_completions"):
        return "completion cache"
    if "checkpoint" in path:
        return "training checkpoints"
    report = ("summary.json", "summary.md", "accuracy.png", "memory_time.png")
    if parts[0] == "results" and (len(parts) == 2 or (len(parts) == 3 and name in report)):
        return "summary"  # summary.*, the plots, the `latest` link
    if name in ("method.yaml", ".run.lock", "resolved_config.yaml", "write-test") or len(parts) <= 2:
        return "set-up"
    return "students and evaluation"


def read_events(path: Path) -> list[dict]:
    events = []
    for line in path.read_text().splitlines():
        index, seconds, event, written = line.split("\t")
        events.append({"index": int(index), "seconds": float(seconds), "event": event, "path": written})
    for event in events:
        event["phase"] = phase_of(event["path"])
    return events


def kill_points(events: list[dict], per_phase: int, seed: int) -> list[dict]:
    """`per_phase` seeded kill points in every phase: alternately struck just before one of its events
    (new folders aside: `mkdir` of a folder that exists changes nothing) and at a random moment between
    the event before one and it. A phase with fewer events than that gets several moments per event."""
    rng = random.Random(seed)
    points = []
    for phase in PHASES:
        members = [e for e in events if e["phase"] == phase and e["event"] != "os.mkdir"]
        rng.shuffle(members)
        for n in range(min(per_phase, 2 * len(members))):
            event = members[n % len(members)]
            before = events[event["index"] - 2] if event["index"] > 1 else None
            # each event struck once before it, once between it and the one before, alternately
            delayed = before is not None and (n % len(members) + n // len(members)) % 2 == 1
            if delayed:  # at least 0.1 ms: a delay of 0 would repeat the point before the event before
                delay = max(round(rng.uniform(0, max(event["seconds"] - before["seconds"], 0.0)), 4), 1e-4)
                at = before["index"]
            else:
                at, delay = event["index"], 0.0
            if (at, delay) not in {(p["at"], p["delay"]) for p in points}:  # the first event: once
                points.append(
                    {"phase": phase, "at": at, "delay": delay, "path": event["path"], "signal": "KILL"}
                )
    return sorted(points, key=lambda p: (p["at"], p["delay"]))


def interrupt_points(events: list[dict], count: int, seed: int) -> list[dict]:
    """`count` Ctrl-C points (SIGINT), each at a seeded event of another phase, in the order of PHASES."""
    rng = random.Random(seed + 1)
    points = []
    for phase in PHASES[:count]:
        members = [e for e in events if e["phase"] == phase and e["event"] != "os.mkdir"]
        if members:
            event = rng.choice(members)
            points.append(
                {"phase": phase, "at": event["index"], "delay": 0.0, "path": event["path"], "signal": "INT"}
            )
    return points


# ---------------------------------------------------------------- the campaign


def run_point(root: Path, point: dict, reference: dict, listing: set[str]) -> dict:
    """Kill the job at `point`, rerun it until it completes (3 reruns at most), compare the outcome."""
    clean(root)
    code, err = run_job(root, kill=(point["at"], point["delay"], point["signal"]))
    err = err.replace(str(root), "<campaign folder>")
    record = {**point, "first_exit": code, "reruns": 0}
    if point["signal"] == "INT":  # Ctrl-C: one line saying what was kept and how to resume, no traceback
        record["lines"] = [line for line in err.splitlines() if line.startswith("interrupted:")]
        record["traceback"] = "Traceback" in err
    if code == 0:  # the job ended before the delay ran out: nothing was killed
        record["note"] = "finished before the signal"
    elif code not in (-9, 130):
        record["error"] = err[-2000:]
    while code != 0 and record["reruns"] < 3:
        code, err = run_job(root)
        record["reruns"] += 1
    record["completed"] = code == 0
    if code != 0:
        record["error"] = err[-2000:].replace(str(root), "<campaign folder>")
    record["differences"] = differences(outcome(root), reference) if code == 0 else ["did not complete"]
    record["partial_files"] = partial_files(root, listing)
    record["identical"] = record["completed"] and not record["differences"]
    return record


def sigint_ok(record: dict) -> bool:
    return record["first_exit"] == 130 and len(record["lines"]) == 1 and not record["traceback"]


def table(records: list[dict]) -> str:
    kills = [r for r in records if r["signal"] == "KILL"]
    lines = [
        "| phase | SIGKILL points | runs identical | partial files found |",
        "| --- | ---: | ---: | ---: |",
    ]
    for phase in [*PHASES, "**all**"]:
        rows = [r for r in kills if r["phase"] == phase or phase == "**all**"]
        lines.append(
            f"| {phase} | {len(rows)} | {sum(r['identical'] for r in rows)} | "
            f"{sum(len(r['partial_files']) for r in rows)} |"
        )
    interrupts = [r for r in records if r["signal"] == "INT"]
    if interrupts:
        lines += [
            "",
            "| SIGINT points | exit 130, one line, no traceback | runs identical | partial files found |",
            "| ---: | ---: | ---: | ---: |",
            f"| {len(interrupts)} | {sum(sigint_ok(r) for r in interrupts)} | "
            f"{sum(r['identical'] for r in interrupts)} | "
            f"{sum(len(r['partial_files']) for r in interrupts)} |",
        ]
        example = next((r["lines"][0] for r in interrupts if r["lines"]), None)
        if example:
            lines += ["", f"A SIGINT's line (during {interrupts[0]['phase']}):", "", f"    {example}"]
    return "\n".join(lines)


def campaign(root: Path, per_phase: int, seed: int, interrupts: int = 0, log=print, report=None) -> dict:
    """The uninterrupted run, then every kill point; `report(result)` after each (a table that grows)."""
    began = time.perf_counter()
    prepare(root)
    code, err = run_job(root, events=root / "events.tsv")
    if code != 0:
        raise SystemExit(f"the uninterrupted run failed (exit status {code}):\n{err}")
    reference, listing = outcome(root), file_listing(root)
    events = read_events(root / "events.tsv")
    points = kill_points(events, per_phase, seed) + interrupt_points(events, interrupts, seed)
    log(f"uninterrupted run: {len(events)} write events, {Counter(e['phase'] for e in events)}")
    result = {
        "seed": seed,
        "per_phase": per_phase,
        "interrupts": interrupts,
        "write_events": len(events),
        "events_per_phase": dict(Counter(e["phase"] for e in events)),
        "uninterrupted_seconds": round(time.perf_counter() - began, 1),
        "points": len(points),
        "records": [],
    }
    result["seconds"] = result["uninterrupted_seconds"]
    for n, point in enumerate(points, 1):
        record = run_point(root, point, reference, listing)
        result["records"].append(record)
        result["seconds"] = round(time.perf_counter() - began, 1)
        verdict = "identical" if record["identical"] else f"DIFFERS {record['differences'][:3]}"
        log(
            f"[{n}/{len(points)}] SIG{point['signal']} in {point['phase']}: event {point['at']} "
            f"+{point['delay']} s "
            f"({point['path']}) -> exit {record['first_exit']}, {record['reruns']} rerun(s), {verdict}"
            + (f", partial files {record['partial_files']}" if record["partial_files"] else "")
            + (f", {record['lines']}" if record["signal"] == "INT" else "")
        )
        if report is not None:
            report(result)
    return result


def write_results(result: dict, out: Path) -> str:
    """faults.md (the table) and faults.json (every kill point) in `out`; returns the table's text."""
    out.mkdir(parents=True, exist_ok=True)
    records = result["records"]
    done = "" if len(records) == result["points"] else f" (in progress: {len(records)} of {result['points']})"
    text = (
        f"# Fault campaign (seed {result['seed']}){done}\n\n`python -m checks.faults --per-phase "
        f"{result['per_phase']} --interrupts {result['interrupts']} --seed {result['seed']}`: "
        f"{sum(r['signal'] == 'KILL' for r in records)} SIGKILLs and "
        f"{sum(r['signal'] == 'INT' for r in records)} SIGINTs at {len(records)} of the job's "
        f"{result['write_events']} write events (or between them), each followed by reruns until it "
        f"completes, compared with an uninterrupted run ({result['uninterrupted_seconds']:.0f} s); "
        f"{result['seconds']:.0f} s in all.\n\n{table(records)}\n"
    )
    # stamped with the code that made the table: the campaign, its job, and the recipes the job runs
    code = code_record(CAMPAIGN_SCRIPTS)
    (out / "faults.md").write_text(stamp_markdown(text, code))
    (out / "faults.json").write_text(json.dumps({**result, "code": stamp_json(code)}, indent=1) + "\n")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-phase", type=int, default=8, help="kill points per phase (default 8)")
    parser.add_argument("--interrupts", type=int, default=7, help="Ctrl-C points, one per phase (default 7)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(ROOT / "results" / "faults"), help="where the table goes")
    args = parser.parse_args(argv)
    out = Path(args.output)
    with tempfile.TemporaryDirectory(prefix="faults-") as work:
        result = campaign(
            Path(work), args.per_phase, args.seed, args.interrupts, report=lambda r: write_results(r, out)
        )
    text = write_results(result, out)
    print("\n" + text + f"\nwritten to {out}/faults.md and faults.json")
    return 0 if passed(result["records"]) else 1


def passed(records: list[dict]) -> bool:
    """Every run ended identical with no partial file, and every Ctrl-C said one line with status 130."""
    fine = all(r["identical"] and not r["partial_files"] for r in records)
    return fine and all(sigint_ok(r) for r in records if r["signal"] == "INT")


if __name__ == "__main__":
    sys.exit(main())
