"""Choosing each student's learning rates on the dev rows (`holdout_rows`), never on the evaluation rows:
every candidate of `select_learning_rates` runs as its comparison method would (same queries, same
settings, its evaluation included), then is scored on the dev rows; the best dev accuracy wins (its margin
AUC breaks ties). Only the dev scores are read here; each candidate's folder records its fingerprint, so
the measured comparison, run with the chosen rates, reads the chosen candidates back instead of training
them a second time (`method_reuse`), and a rerun of the selection reads back what it finished.

    python recipes/compare.py --config recipes/configs/embedded/compare-student-sizes.yaml \
        --select_learning_rates cd_lora=1e-3,2e-3,4e-3 pbft_lora=5e-4,1e-3,2e-3

writes learning_rates.md and learning_rates.json into the run's folder and prints the
`student_learning_rates` entries to paste into the preset. A candidate costs its method's training and
evaluation; the evaluation of the rates not chosen is the price of never training the chosen ones twice.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from distill_trainer.errors import UsageError
from distill_trainer.integrity import write_text_atomically
from distill_trainer.report.tables import load_method_result
from distill_trainer.run.comparison import REUSED_COSTS, run_in_fresh_process, student_folders
from distill_trainer.run.comparison_methods import method_arguments, method_config, write_method_yaml
from distill_trainer.run.interrupt import resume_flags
from distill_trainer.run.method_reuse import (
    candidate_folder,
    finished_here,
    method_fingerprint,
    record_fingerprint,
)
from distill_trainer.run.validate import validate_method_files

SELECTION_TABLE, SELECTION_JSON = "learning_rates.md", "learning_rates.json"


def plan_candidates(configs, students: list[str], run_dir: Path, given) -> list[dict]:
    """Every (student, method, learning rate) to try, its method.yaml written and checked."""
    student_args, data_args, compare, config = configs
    if not data_args.holdout_rows:
        raise UsageError(
            "select_learning_rates scores the candidates on the dev rows, and holdout_rows names none; "
            "set holdout_rows to the dev rows (e.g. docs/results/select-prompt/dev.jsonl), never to "
            "evaluation rows"
        )
    folders = student_folders(students)
    candidates = []
    for student in students:
        one = replace(student_args, model_name_or_path=student)
        one_compare = compare.for_student(student) if compare.students else compare
        for method, rates in compare.learning_rate_candidates().items():
            for rate in rates:
                out = run_dir / folders[student] / candidate_folder(method, rate)
                recipe, values = method_config(method, one, data_args, one_compare, config, out, given)
                values.update(learning_rate=rate)
                write_method_yaml(recipe, values, out / "method.yaml")
                candidates.append(
                    {
                        "student": student,
                        "method": method,
                        "learning_rate": rate,
                        "recipe": recipe,
                        "dir": out,
                        "fingerprint": method_fingerprint(recipe, values),
                    }
                )
    validate_method_files(
        {str(c["dir"].relative_to(run_dir)): method_arguments(c["recipe"], c["dir"]) for c in candidates}
    )
    return candidates


def dev_score(model_dir: Path, holdout_rows: str, batch_size: int, dtype: str) -> dict:
    """The trained candidate's MNLI figures on the dev rows (the pattern it trained with)."""
    from distill_trainer.run.evaluate_command import add_arguments, evaluate_file

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv = ["--model", str(model_dir), "--task", "mnli", "--data", holdout_rows]
    argv += ["--batch_size", str(batch_size), "--dtype", dtype, "--no_progress"]
    argv += ["--output_dir", str(model_dir / "dev")]
    metrics = evaluate_file(parser.parse_args(argv))["metrics"]
    return {key: metrics.get(key) for key in ("n", "accuracy", "accuracy_stderr", "auc")}


def choose(candidates: list[dict]) -> dict[str, dict[str, float]]:
    """student -> {method: the learning rate with the best dev accuracy (then AUC)}."""
    chosen = {}
    for candidate in candidates:
        best = chosen.setdefault(candidate["student"], {}).get(candidate["method"])
        score = (candidate["dev"]["accuracy"], candidate["dev"]["auc"] or 0.0)
        if best is None or score > best[0]:
            chosen[candidate["student"]][candidate["method"]] = (score, candidate["learning_rate"])
    return {s: {m: rate for m, (_, rate) in methods.items()} for s, methods in chosen.items()}


def preset_entries(chosen: dict[str, dict[str, float]]) -> list[str]:
    """The chosen rates as `student_learning_rates` entries."""
    return [f"{s} " + " ".join(f"{m}={rate:g}" for m, rate in rates.items()) for s, rates in chosen.items()]


def select_learning_rates(configs, students: list[str], run_dir: Path, given, scripts) -> dict:
    """Train and score every candidate (see the module docstring); returns what learning_rates.json holds."""
    _, data_args, compare, config = configs
    candidates = plan_candidates(configs, students, run_dir, given)
    for candidate in candidates:
        print(
            f"==== {candidate['student']}: {candidate['method']} at {candidate['learning_rate']:g}",
            flush=True,
        )
        out, fingerprint = candidate["dir"], candidate["fingerprint"]
        if not finished_here(out, fingerprint):  # a rerun of the selection keeps what finished
            began, peak = time.perf_counter(), None
            # what a stopped selection left of this candidate (a checkpoint, or an adapter trained but
            # not yet evaluated): continued, or started over, as a comparison does with its methods
            extra = resume_flags(out)
            if compare.fresh_process_per_method:
                peak = run_in_fresh_process(scripts, candidate["recipe"], out / "method.yaml", extra)
            else:
                scripts.module(candidate["recipe"]).main(["--config", str(out / "method.yaml"), *extra])
            row = load_method_result(candidate["method"], out, peak, time.perf_counter() - began)
            record_fingerprint(out, fingerprint, {k: row[k] for k in REUSED_COSTS})
        dtype = compare.student_eval_dtype or "float32"
        candidate["dev"] = dev_score(
            candidate["dir"], data_args.holdout_rows, config.per_device_eval_batch_size, dtype
        )
    chosen = choose(candidates)
    report = {
        "dev_rows": data_args.holdout_rows,
        "candidates": [
            {k: v for k, v in c.items() if k not in ("dir", "recipe", "fingerprint")} for c in candidates
        ],
        "chosen": chosen,
        "student_learning_rates": preset_entries(chosen),
    }
    write_text_atomically(run_dir / SELECTION_JSON, json.dumps(report, indent=2) + "\n")
    write_text_atomically(run_dir / SELECTION_TABLE, format_selection(report))
    print(format_selection(report), flush=True)
    return report


def format_selection(report: dict) -> str:
    lines = [
        f"# Learning rates chosen on the dev rows ({report['dev_rows']})",
        "",
        "| student | method | learning rate | dev accuracy (%) ± s.e. | dev margin AUC | chosen |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["candidates"]:
        dev, chosen = c["dev"], report["chosen"][c["student"]][c["method"]] == c["learning_rate"]
        auc = "-" if dev["auc"] is None else f"{dev['auc']:.3f}"
        lines.append(
            f"| {c['student']} | {c['method']} | {c['learning_rate']:g} | {100 * dev['accuracy']:.1f} ± "
            f"{100 * (dev['accuracy_stderr'] or 0):.1f} | {auc} | {'yes' if chosen else ''} |"
        )
    lines += ["", "For the preset:", "", "```yaml", "student_learning_rates:"]
    lines += [f'  - "{entry}"' for entry in report["student_learning_rates"]]
    return "\n".join([*lines, "```", ""])
