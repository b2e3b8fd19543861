"""Context-distillation runs side by side on the same held-out prompts: each trained student's
rule-following rate, cut-off replies, KL to the teacher and time, and each run's difference from the first
with a paired 95% interval.

    distill-trainer compare-replies results/system-prompt results/system-prompt-on-policy \
        --output results/system-prompt-modes.md

Every run is an `output_dir` of `recipes/distill_context.py` (its metrics.json and
predictions_replies.jsonl). The difference is paired: each held-out prompt contributes (passed in run B)
minus (passed in run A), and the interval is the mean of those ± 1.96 standard errors over prompts, which
is narrower than comparing two independent rates when the runs fail on the same hard prompts. Runs must
have scored the same prompts, in the same order, with the same checker.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from distill_trainer.code_stamp import stamp_markdown
from distill_trainer.errors import UsageError
from distill_trainer.integrity import write_text_atomically


def load_run(folder) -> dict:
    """{"name", "metrics", "records"} of a finished distill_context run."""
    folder = Path(folder)
    metrics_path, records_path = folder / "metrics.json", folder / "predictions_replies.jsonl"
    for path in (metrics_path, records_path):
        if not path.is_file():
            raise UsageError(f"{path} does not exist; give output folders of finished distill_context runs")
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if metrics.get("recipe") != "distill_context":
        raise UsageError(f"{folder} is a {metrics.get('recipe')!r} run; give distill_context output folders")
    records = [json.loads(line) for line in records_path.read_text(encoding="utf-8").splitlines() if line]
    if not records or "after_check" not in records[0]:
        raise UsageError(
            f"{folder} holds no checked held-out replies; run it with eval_data_file and a checker"
        )
    return {"name": folder.name, "metrics": metrics, "records": records}


def paired_difference(first: list[bool], second: list[bool]) -> dict:
    """Mean of second - first over paired items, its standard error and 95% interval."""
    n = len(first)
    differences = [float(b) - float(a) for a, b in zip(first, second)]
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1) if n > 1 else float("nan")
    stderr = math.sqrt(variance / n)
    return {
        "n": n,
        "difference": mean,
        "stderr": stderr,
        "low": mean - 1.96 * stderr,
        "high": mean + 1.96 * stderr,
    }


def _passed(run: dict) -> list[bool]:
    return [bool(record["after_check"]["passed"]) for record in run["records"]]


def _rate(rule) -> str:
    return f"{rule['rate']:.3f} ± {rule['stderr']:.3f} ({rule['passed']}/{rule['n']})" if rule else "-"


def _kl(kl) -> str:
    return f"{kl['kl_per_token']:.4f}" if kl else "-"


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def compare_runs(folders) -> str:
    """Markdown: the first run's teacher and untrained student, one row per run's trained student, then
    each run's paired difference from the first."""
    runs = [load_run(folder) for folder in folders]
    if len(runs) < 2:
        raise UsageError("give at least two run folders to compare")
    prompts = [record["prompt"] for record in runs[0]["records"]]
    for run in runs[1:]:
        if [record["prompt"] for record in run["records"]] != prompts:
            raise UsageError(
                f"{run['name']} scored other held-out prompts than {runs[0]['name']}; compare runs of one "
                "eval_data_file and num_eval_examples"
            )
    lines = [
        f"# Trained students on the same {len(prompts)} held-out prompts",
        "",
        "| run | replies | rule followed (rate ± s.e.) | cut off | KL, teacher's replies | KL, own replies "
        "| training (s) | whole run (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    first = runs[0]["metrics"]["eval"]
    base = runs[0]["name"]
    rows = [(f"teacher of {base}, with the context", "-", first["teacher"], None, None)]
    rows.append((f"student before ({base}), without it", "-", first["before"], None, None))
    rows += [
        (
            run["name"],
            run["metrics"].get("replies", "off-policy"),
            run["metrics"]["eval"]["after"],
            run["metrics"]["train"]["train_runtime"],
            run["metrics"]["seconds"],
        )
        for run in runs
    ]
    for name, replies, result, training, seconds in rows:
        rule = result.get("rule")
        cells = [name, replies, _rate(rule), str(rule.get("cut_off", "-")) if rule else "-"]
        cells += [_kl(result.get("kl")), _kl(result.get("kl_own")), _seconds(training), _seconds(seconds)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Paired differences in the rule-following rate from {runs[0]['name']} (95% interval):", ""]
    for run in runs[1:]:
        d = paired_difference(_passed(runs[0]), _passed(run))
        interval = f"95% [{d['low']:+.3f}, {d['high']:+.3f}]"
        lines.append(f"- {run['name']}: {d['difference']:+.3f} ± {d['stderr']:.3f} ({interval})")
    return stamp_runs("\n".join(lines) + "\n", runs)


def stamp_runs(text: str, runs: list[dict]) -> str:
    """`text` stamped with the code that made the runs (their metrics' record), when one code made them
    all; otherwise a line says which runs were made by other code than the first."""
    codes = [run["metrics"].get("code") for run in runs]
    if codes[0] is None:
        return text
    others = [
        run["name"] for run, code in zip(runs, codes) if (code or {}).get("digest") != codes[0]["digest"]
    ]
    if others:
        return (
            text
            + f"\nMade by other code than {runs[0]['name']}'s: {', '.join(others)}; rerun them to compare.\n"
        )
    return stamp_markdown(text, codes[0])


def add_arguments(parser) -> None:
    parser.add_argument(
        "runs", nargs="+", help="output folders of distill_context runs; the first is the base"
    )
    parser.add_argument("--output", default=None, help="also write the markdown to this file")


def compare_replies(args) -> None:
    text = compare_runs(args.runs)
    print(text, end="")
    if args.output:
        write_text_atomically(Path(args.output), text)
