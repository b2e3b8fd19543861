"""The comparison report: one row per method from its recipe outputs, then summary.json, summary.md and
PNG plots (matplotlib, Agg backend: no display needed).

    row = load_method_result("cd_lora", run_dir / "cd_lora", peak_bytes, wall_seconds)
    summary = write_report(run_dir, [row, ...], settings)   # summary.json, summary.md, *.png
    print(format_table(summary))

A method's folder holds what the recipes write: metrics.json and predictions_<task>.jsonl. Agreement is
the share of rows where a method predicts what the teacher's in-context learning predicts (method
`icl_teacher`), on the same rows; every accuracy and agreement carries its binomial standard error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from distill_trainer.code_stamp import stamp_json, stamp_markdown
from distill_trainer.integrity import write_text_atomically
from distill_trainer.memory.units import MIB
from distill_trainer.report.columns import LEGEND, estimate_note, headers, number, percent, table_rows
from distill_trainer.report.findings import findings, paper_claims
from distill_trainer.report.plots import ACCURACY_PLOT, COST_PLOT, write_plots

TEACHER_METHOD = "icl_teacher"


# ---------------------------------------------------------------- one method


def _read_records(path: Path) -> list[dict]:
    """label, prediction and label-word margin of every scored row (for agreement and paired intervals)."""
    keep = ("label", "prediction", "margin")
    return [
        {k: record.get(k) for k in keep}
        for record in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    ]


def _cache_names(info: dict | None) -> dict | None:
    """The teacher output cache per dataset, named by its folder (the summary is shareable; the full path
    stays in the method's metrics.json)."""
    if not info:
        return info
    return {name: {**entry, "path": Path(entry["path"]).name} for name, entry in info.items()}


JUDGED_PHASES = ("teacher_pass", "train", "eval")  # what a method needs; loading is reported apart


def _phase_peaks(memory: dict | None, key: str = "cpu_peak_rss_mib") -> dict:
    """Peak MiB per phase group (resident, or with key "cpu_needed_mib" what the phase needed): loading
    models, the teacher's output pass, training, evaluation."""
    phases = (memory or {}).get("phases") or {}

    def peak(*names):
        values = [phases[n][key] for n in names if n in phases and key in phases[n]]
        return max(values) if values else None

    return {
        "load": peak("student_load", "model_load", "teacher_load"),
        "teacher_pass": peak("teacher_pass"),
        "train": peak("train"),
        "eval": peak("eval", "evaluate", "final_eval"),
    }


def _method_need(phase_needed: dict) -> float | None:
    """What a method needs to run: the most any of its working phases needed (the load transient apart)."""
    values = [phase_needed[p] for p in JUDGED_PHASES if phase_needed.get(p) is not None]
    return max(values) if values else None


def _task_summary(metrics: dict) -> dict:
    """The figures a row keeps of one task's metrics (per heuristic for HANS)."""
    keep = (
        "n",
        "accuracy",
        "accuracy_stderr",
        "auc",
        "macro_f1",
        "per_label_accuracy",
        "predicted_label_balance",
    )
    summary = {key: metrics.get(key) for key in keep}
    if "per_heuristic" in metrics:
        summary["per_heuristic"] = {
            name: {
                key: group.get(key)
                for key in ("n", "accuracy", "accuracy_stderr", "auc", "per_label_accuracy")
            }
            for name, group in metrics["per_heuristic"].items()
        }
    return summary


def load_method_result(name: str, method_dir, peak_bytes: int | None, wall_seconds: float) -> dict:
    """A summary row from a finished recipe's metrics.json and predictions (predictions kept for
    agreement)."""
    method_dir = Path(method_dir)
    metrics = json.loads((method_dir / "metrics.json").read_text(encoding="utf-8"))
    parameters = metrics.get("parameters", {})
    # a recipe's memory tracker resets the kernel's peak counter per phase, so the process's own peak
    # (rusage) can miss earlier phases: the tracker's lifetime peak covers them
    tracked = ((metrics.get("memory") or {}).get("peak") or {}).get("cpu_peak_rss_mib")
    if tracked is not None:
        peak_bytes = max(peak_bytes or 0, int(tracked * MIB))
    trained = "train" in metrics
    needed = _phase_peaks(metrics.get("memory"), "cpu_needed_mib")
    if metrics.get("scores_read_back"):
        # no model ran (every score from the evaluation cache): the process measured only its runtime,
        # which is not what the method needs; the row shows no memory rather than a wrong one
        needed, peak_bytes = {}, None
    teacher = metrics.get("teacher")
    if metrics.get("recipe") == "icl_eval":
        teacher = f"(itself, k={metrics.get('k', 0)})"
    return {
        "method": name,
        "recipe": metrics.get("recipe"),
        "student": metrics.get("model"),
        "student_mode": metrics.get("student_mode", "-"),
        "teacher": teacher or "-",
        "teacher_quantization": metrics.get("teacher_quantization", "-"),
        "trainable_parameters": parameters.get("trainable", 0) if trained else 0,
        "total_parameters": parameters.get("total"),
        "peak_memory_mib": None if peak_bytes is None else round(peak_bytes / MIB, 1),
        "train_seconds": round(metrics["train"].get("train_runtime", 0.0), 3) if trained else 0.0,
        "eval_seconds": round(metrics.get("eval_seconds", 0.0), 1),
        "wall_seconds": round(wall_seconds, 3),  # tiny runs can take well under 0.1 s
        "phase_peak_mib": {} if metrics.get("scores_read_back") else _phase_peaks(metrics.get("memory")),
        "scores_read_back": bool(metrics.get("scores_read_back")),
        "phase_needed_mib": needed,
        "needed_memory_mib": _method_need(needed),
        "runtime_mib": (metrics.get("memory") or {}).get("baseline_cpu_rss_mib"),
        "teacher_output_cache": _cache_names(metrics.get("teacher_output_cache")),
        "eval": {task: _task_summary(task_metrics) for task, task_metrics in metrics["eval"].items()},
        "records": {
            task: _read_records(method_dir / f"predictions_{task}.jsonl") for task in metrics["eval"]
        },
        "output_dir": str(method_dir),
    }


def agreement(predictions: list[int], reference: list[int]) -> dict:
    """Share of rows with the same prediction, and its standard error."""
    if len(predictions) != len(reference):
        raise ValueError(
            f"cannot compare {len(predictions)} predictions with {len(reference)}: different rows"
        )
    n = len(predictions)
    share = sum(a == b for a, b in zip(predictions, reference)) / n if n else float("nan")
    return {"agreement": share, "agreement_stderr": math.sqrt(share * (1 - share) / n) if n else float("nan")}


def auc_stderr(auc: float | None, positives: int, negatives: int) -> float | None:
    """Standard error of a ROC AUC (Hanley and McNeil, 1982): cheap, and close to a bootstrap's at the
    hundreds of rows a comparison scores."""
    if auc is None or not positives or not negatives:
        return None
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (
        positives * negatives
    )
    return math.sqrt(max(variance, 0.0))


def add_auc_stderr(rows: list[dict]) -> None:
    """Each task summary's `auc_stderr`, from its rows' labels (label 0 is the positive class)."""
    for row in rows:
        for task, task_summary in row["eval"].items():
            labels = [r["label"] for r in row["records"].get(task, [])]
            positives = sum(1 for label in labels if label == 0)
            task_summary["auc_stderr"] = auc_stderr(
                task_summary.get("auc"), positives, len(labels) - positives
            )


def add_teacher_agreement(rows: list[dict]) -> None:
    """Each row's agreement with the ICL teacher's predictions, per task (None without an ICL teacher row)."""
    teacher = next((row for row in rows if row["method"] == TEACHER_METHOD), None)
    for row in rows:
        for task, task_summary in row["eval"].items():
            if teacher is None or task not in teacher["records"]:
                task_summary["teacher_agreement"] = task_summary["teacher_agreement_stderr"] = None
                continue
            shares = agreement(
                [r["prediction"] for r in row["records"][task]],
                [r["prediction"] for r in teacher["records"][task]],
            )
            task_summary["teacher_agreement"] = shares["agreement"]
            task_summary["teacher_agreement_stderr"] = shares["agreement_stderr"]


# ---------------------------------------------------------------- the table


def format_table(summary: dict) -> str:
    """A fixed-width console table."""
    rows = [headers(), *table_rows(summary)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(r, widths)))
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def format_markdown(summary: dict) -> str:
    rows = table_rows(summary)
    lines = [
        f"# Method comparison: {summary['settings'].get('student')}",
        "",
        "| " + " | ".join(headers()) + " |",
        "|" + "---|" * len(headers()),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    heuristics = _heuristics(summary)
    note = estimate_note(summary)
    lines += [
        "",
        LEGEND + (f" {note}" if note else ""),
        "",
        "## HANS per heuristic (accuracy %, AUC)",
        "",
        "| method | " + " | ".join(heuristics) + " |",
        "|---|" + "---|" * len(heuristics),
    ]
    for row in summary["methods"]:
        groups = row["eval"].get("hans", {}).get("per_heuristic", {})
        cells = [
            f"{percent(groups[h]['accuracy'])} ({number(groups[h]['auc'], '.2f')})" if h in groups else "-"
            for h in heuristics
        ]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    if summary.get("claims"):
        lines += ["", "## The paper's claims", "", *(f"- {sentence}" for sentence in summary["claims"])]
    if summary.get("findings"):
        lines += ["", "## Findings", "", *(f"- {sentence}" for sentence in summary["findings"])]
    reused = [row for row in summary["methods"] if row.get("reused_from")]
    if reused:
        lines += [
            "",
            "Read back from earlier runs (same config, data, model files, code and package versions): "
            + ", ".join(f"{row['method']} ({row['reused_from']})" for row in reused)
            + ".",
        ]
    again = summary["settings"].get("run_again") or {}
    if again:
        lines += ["", "Run again, with what changed since their last result:", ""]
        lines += [f"- {name}: {'; '.join(why)}" for name, why in again.items()]
    reference = summary["settings"].get("memory_reference")
    if reference:
        lines += [
            "",
            "## Memory against fine-tuning the teacher",
            "",
            f"Reference: {reference['name']}, {reference['peak_mib'] / 1024:.2f} GiB "
            f"({reference['source']}).",
            *(f"- {line}" for line in reference.get("notes", [])),
        ]
    if summary["settings"].get("data"):
        lines += ["", "## Data", "", *(f"- {line}" for line in summary["settings"]["data"])]
    disk = summary["settings"].get("disk_mb")
    if disk:
        lines += ["", "## Size on disk (MB)", "", *(f"- {name}: {size:,.1f}" for name, size in disk.items())]
    lines += ["", "## Settings", ""] + [
        f"- {key}: {value}"
        for key, value in summary["settings"].items()
        if key not in ("memory_reference", "disk_mb", "data", "run_again")
    ]
    lines += ["", f"![accuracy]({ACCURACY_PLOT})", f"![memory and time]({COST_PLOT})", ""]
    return "\n".join(lines)


def _heuristics(summary: dict) -> list[str]:
    names = set()
    for row in summary["methods"]:
        names |= set(row["eval"].get("hans", {}).get("per_heuristic", {}))
    return sorted(names)


# ---------------------------------------------------------------- plots


def write_report(run_dir, rows: list[dict], settings: dict, code: dict | None = None) -> dict:
    """summary.json, summary.md and the plots; returns the summary (rows without their raw predictions).
    `code` (`code_digest.code_record`): the code that made the rows, stamped into both files."""
    run_dir = Path(run_dir)
    add_teacher_agreement(rows)
    add_auc_stderr(rows)
    summary = {
        "settings": settings,
        "methods": [{k: v for k, v in row.items() if k != "records"} for row in rows],
        "claims": paper_claims(rows, settings.get("memory_reference")),
        "findings": findings(rows, settings.get("memory_reference")),
    }
    text = format_markdown(summary)
    if code is not None:
        summary["code"] = stamp_json(code)
        text = stamp_markdown(text, code)
    write_text_atomically(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    write_text_atomically(run_dir / "summary.md", text)
    write_plots(summary, run_dir)
    return summary


def print_table(summary: dict, run_dir) -> None:
    settings = summary["settings"]
    print("\n==== comparison " + "=" * 80)
    print(
        f"student {settings.get('student')}, teacher {settings.get('teacher')}, pattern "
        f"{settings.get('pattern')}, k={settings.get('k')}; {settings.get('num_train_examples')} training "
        f"queries; methods {settings.get('total_seconds')} s"
        + "".join(
            f"; set-up of {name} (dequantized once) {seconds:.0f} s"
            for name, seconds in (settings.get("setup_seconds") or {}).items()
        )
    )
    print(format_table(summary))
    for title, key in (("the paper's claims", "claims"), ("findings", "findings")):
        if summary.get(key):
            print(f"\n{title}:", *(f"- {sentence}" for sentence in summary[key]), sep="\n")
    print(
        f"accuracies/agreements in % ± standard error; agree = same prediction as the ICL teacher; "
        f"pred. 0 = share predicted 'entailment'\n\noutputs: {run_dir}/summary.md, summary.json, "
        f"{ACCURACY_PLOT}, {COST_PLOT}",
        flush=True,
    )
