"""The comparison over student sizes: per student, the paper's claims as its own run states them, each
method's HANS margin AUC and MNLI accuracy with their 95% intervals, and CD's paired differences against
PBFT and against the student's ICL; then the verdict across sizes, computed from those numbers.

    # rows as report.load_method_result gives them, summary as report.write_report returns it
    sizes = [size_entry(student, folder, rates, summary, rows), ...]
    write_size_report(run_dir, sizes, settings, code)   # sizes.json, sizes.md, sizes.png
    sentences = size_verdict(sizes)

A student "tells HANS's classes apart" when some student method (not the teacher) has a HANS margin AUC
whose 95% interval lies above 0.5; at the smallest such size, CD transfers more of the teacher's
out-of-domain ability than PBFT when their paired HANS AUC difference has an interval above 0.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill_trainer.code_stamp import stamp_json, stamp_markdown
from distill_trainer.integrity import write_text_atomically
from distill_trainer.report.findings import TEACHER, paired_difference
from distill_trainer.report.plots import SIZE_PLOT, parameter_count, write_size_plot

SIZE_TABLE, SIZE_JSON = "sizes.md", "sizes.json"
CHANCE_AUC = 0.5
# paired differences per size: (name, CD method, the method it is compared with)
SIZE_PAIRS = (("cd_vs_pbft", "cd_lora", "pbft_lora"), ("cd_vs_icl", "cd_lora", "icl_student"))


def student_parameters(rows: list[dict]) -> int | None:
    """The student's own parameter count: an untrained row's total, or a trained one's frozen base
    (its total less what it trained: adapters for LoRA)."""
    for row in rows:
        if row["method"] != TEACHER and row.get("recipe") == "icl_eval" and row.get("total_parameters"):
            return int(row["total_parameters"])
    for row in rows:
        if row.get("student_mode") == "lora" and row.get("total_parameters"):
            return int(row["total_parameters"]) - int(row.get("trainable_parameters") or 0)
    return None


def _figure(row: dict, task: str, figure: str, error: str) -> dict | None:
    """A method's figure on a task with its 95% interval (1.96 standard errors, as the plots draw it)."""
    summary = row["eval"].get(task) or {}
    value = summary.get(figure)
    if value is None:
        return None
    spread = 1.96 * (summary.get(error) or 0.0)
    return {"value": value, "low": value - spread, "high": value + spread}


def _difference(result) -> dict | None:
    if result is None:
        return None
    point, (low, high) = result
    return {"value": point, "low": low, "high": high}


def size_entry(student: str, folder: str, learning_rates: dict, summary: dict, rows: list[dict]) -> dict:
    """One student's line of the comparison over sizes (rows with their predictions: the paired
    differences resample them); `folder`: the student's folder in the run, with its own summary."""
    by_name = {row["method"]: row for row in rows}
    methods = {
        row["method"]: {
            "hans_auc": _figure(row, "hans", "auc", "auc_stderr"),
            "mnli_accuracy": _figure(row, "mnli", "accuracy", "accuracy_stderr"),
            "mnli_auc": _figure(row, "mnli", "auc", "auc_stderr"),
        }
        for row in rows
        if row["eval"]
    }
    differences = {}
    for name, cd, other in SIZE_PAIRS:
        if cd in by_name and other in by_name:
            differences[name] = {
                figure: _difference(paired_difference(by_name[cd], by_name[other], "hans", figure))
                for figure in ("auc", "accuracy")
            }
    return {
        "student": student,
        "folder": folder,
        "parameters": student_parameters(rows),
        "learning_rates": learning_rates,
        "claims": list(summary.get("claims") or []),
        "methods": methods,
        "differences": differences,
        "reused": [row["method"] for row in rows if row.get("reused_from")],
    }


def _tells_apart(entry: dict) -> list[str]:
    """The student methods whose HANS margin AUC interval lies above chance."""
    return [
        name
        for name, figures in entry["methods"].items()
        if name != TEACHER and figures.get("hans_auc") and figures["hans_auc"]["low"] > CHANCE_AUC
    ]


def _interval_text(figure: dict, digits: int = 3, sign: str = "") -> str:
    return (
        f"{figure['value']:{sign}.{digits}f} (95% interval {figure['low']:{sign}.{digits}f} to "
        f"{figure['high']:{sign}.{digits}f})"
    )


def size_verdict(sizes: list[dict]) -> list[str]:
    """The findings across sizes: the smallest student that tells HANS's classes apart, if any, and there
    whether CD's HANS margin AUC is above PBFT's (their paired difference's interval)."""
    ordered = sorted(sizes, key=lambda entry: (entry["parameters"] is None, entry["parameters"] or 0))
    first = next((entry for entry in ordered if _tells_apart(entry)), None)
    names = ", ".join(entry["student"] for entry in ordered)
    if first is None:
        return [
            f"No student tells HANS's classes apart: at every size ({names}) every student method's HANS "
            f"margin AUC interval reaches {CHANCE_AUC}, so no size can show whether CD transfers more of "
            "the teacher's out-of-domain ability than PBFT."
        ]
    sentences = [
        f"The smallest student that tells HANS's classes apart is {first['student']} "
        f"({_parameters_text(first['parameters'])}): the HANS margin AUC interval of "
        + ", ".join(
            f"{name} {_interval_text(first['methods'][name]['hans_auc'])}" for name in _tells_apart(first)
        )
        + f" lies above {CHANCE_AUC}."
    ]
    difference = (first["differences"].get("cd_vs_pbft") or {}).get("auc")
    if difference is None:
        sentences.append(
            f"{first['student']} has no paired CD-vs-PBFT HANS figure (cd_lora and pbft_lora both needed)."
        )
        return sentences
    if difference["low"] > 0:
        verdict = "CD transfers more of the teacher's out-of-domain ability than PBFT"
    elif difference["high"] < 0:
        verdict = "PBFT does better out of domain than CD"
    else:
        verdict = "the run cannot tell whether CD transfers more than PBFT"
    sentences.append(
        f"There, {verdict}: cd_lora minus pbft_lora, HANS margin AUC {_interval_text(difference, sign='+')}."
    )
    return sentences


def _parameters_text(parameters: int | None) -> str:
    return "parameters unknown" if parameters is None else f"{parameter_count(parameters)} parameters"


def _cell(figure: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if figure is None:
        return "-"
    return (
        f"{scale * figure['value']:.{digits}f} [{scale * figure['low']:.{digits}f}, "
        f"{scale * figure['high']:.{digits}f}]"
    )


def format_size_markdown(sizes: list[dict], verdict: list[str], settings: dict) -> str:
    methods = list(dict.fromkeys(name for entry in sizes for name in entry["methods"]))
    lines = [
        f"# Student sizes: {', '.join(entry['student'] for entry in sizes)} <- {settings.get('teacher')}",
        "",
        "## HANS margin AUC [95% interval] per student size",
        "",
        "| student | parameters | " + " | ".join(methods) + " | CD - PBFT | CD - ICL |",
        "|---|---|" + "---|" * (len(methods) + 2),
    ]
    for entry in sizes:
        pairs = [(entry["differences"].get(name) or {}).get("auc") for name, *_ in SIZE_PAIRS]
        cells = [_cell(entry["methods"][m]["hans_auc"]) if m in entry["methods"] else "-" for m in methods]
        lines.append(
            f"| {entry['student']} | {_parameters_text(entry['parameters'])} | "
            + " | ".join(cells + [_cell(pair) for pair in pairs])
            + " |"
        )
    lines += [
        "",
        "## MNLI accuracy (%) [95% interval] per student size",
        "",
        "| student | " + " | ".join(methods) + " | CD - PBFT, HANS accuracy (points) |",
        "|---|" + "---|" * (len(methods) + 1),
    ]
    for entry in sizes:
        cells = [
            _cell(entry["methods"][m]["mnli_accuracy"], 100, 1) if m in entry["methods"] else "-"
            for m in methods
        ]
        accuracy = (entry["differences"].get("cd_vs_pbft") or {}).get("accuracy")
        lines.append(f"| {entry['student']} | " + " | ".join(cells + [_cell(accuracy, 100, 1)]) + " |")
    lines += ["", "## Across sizes", "", *(f"- {sentence}" for sentence in verdict)]
    for entry in sizes:
        rates = ", ".join(f"{method} {value:g}" for method, value in entry["learning_rates"].items())
        lines += [
            "",
            f"## {entry['student']}: the paper's claims",
            "",
            f"Learning rates: {rates or 'the student modes’ defaults'}. "
            f"Read back from earlier runs: {', '.join(entry['reused']) or 'none'}. "
            f"Its own table: [{entry['folder']}/summary.md]({entry['folder']}/summary.md).",
            "",
            *(f"- {sentence}" for sentence in entry["claims"]),
        ]
    lines += ["", f"![HANS margin AUC and MNLI accuracy against student size]({SIZE_PLOT})", ""]
    return "\n".join(lines)


def write_size_report(run_dir, sizes: list[dict], settings: dict, code: dict | None = None) -> dict:
    """sizes.json, sizes.md and sizes.png in the run's folder; returns what sizes.json holds.
    `code` (`code_digest.code_record`): the code that made the sizes, stamped into both tables."""
    run_dir = Path(run_dir)
    verdict = size_verdict(sizes)
    report = {"settings": settings, "sizes": sizes, "verdict": verdict}
    text = format_size_markdown(sizes, verdict, settings)
    if code is not None:
        report["code"] = stamp_json(code)
        text = stamp_markdown(text, code)
    write_text_atomically(run_dir / SIZE_JSON, json.dumps(report, indent=2) + "\n")
    write_text_atomically(run_dir / SIZE_TABLE, text)
    write_size_plot(sizes, run_dir / SIZE_PLOT)
    return report
