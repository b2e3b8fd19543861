"""The results of a knowledge-injection run: short-answer accuracy of every model on every question set,
forgetting, and context distillation against supervised fine-tuning on held-out wordings; written as
`results.md` and `results.json` beside `metrics.json`.

    results = knowledge_results(scores, forgetting, labels)       # JSON-ready
    text = format_results(results, header_lines)
"""

from __future__ import annotations

import json
from pathlib import Path

from distill_trainer.code_stamp import stamp_markdown
from distill_trainer.context.coverage import coverage_lines
from distill_trainer.context.short_answers import paired_difference
from distill_trainer.integrity import write_text_atomically

# row key -> what the row is, in table order
MODEL_ROWS = {
    "before": "student before, closed book",
    "cd": "student after CD, closed book",
    "sft": "student after SFT on the training answers, closed book",
    "open_student": "student, open book (document in the prompt)",
    "open_teacher": "teacher, open book (document in the prompt)",
}
SET_NAMES = {
    "train": "training wordings",
    "heldout_wordings": "held-out wordings",
    "heldout_facts": "held-out facts",
}
METRICS = ("exact", "contains")


def knowledge_results(scores: dict[str, dict], forgetting: dict[str, dict | None]) -> dict:
    """{"models": {row: {"label", "scores": {set: {exact, contains}}, "forgetting"}}, "cd_vs_sft": ...}.

    `scores`: row key -> set name -> `short_answers.score_answers` output; `forgetting`: row key -> KL."""
    models = {}
    for key, label in MODEL_ROWS.items():
        if key not in scores:
            continue
        models[key] = {
            "label": label,
            "scores": {
                name: {metric: score[metric] for metric in METRICS} for name, score in scores[key].items()
            },
            "forgetting_kl": forgetting.get(key),
        }
    comparison = {}
    if "cd" in scores and "sft" in scores:
        for name in scores["cd"]:
            if name in scores["sft"]:
                cd, sft = scores["cd"][name]["per_row"], scores["sft"][name]["per_row"]
                comparison[name] = {
                    metric: paired_difference([r[metric] for r in cd], [r[metric] for r in sft])
                    for metric in METRICS
                }
    return {"models": models, "cd_vs_sft": comparison}


def _rate(score: dict | None) -> str:
    if not score:
        return "-"
    return f"{score['rate']:.3f} ± {score['stderr']:.3f} ({score['hits']}/{score['n']})"


def _kl(kl: dict | None, key: str) -> str:
    if key in ("before", "open_student"):
        return "0 (the base model)"
    if not kl:
        return "-"
    return (
        f"{kl['kl_per_token']:.4f} (per prompt {kl['kl_example_mean']:.4f} ± {kl['kl_example_stderr']:.4f})"
    )


def comparison_sentence(comparison: dict, name: str = "heldout_wordings", metric: str = "contains") -> str:
    """One sentence: CD minus SFT on one set and metric, with its standard error and 95% interval."""
    if name not in comparison:
        return ""
    d = comparison[name][metric]
    low, high = d["ci95"]
    if low > 0:
        verdict = "CD is ahead (the interval excludes 0)"
    elif high < 0:
        verdict = "SFT is ahead (the interval excludes 0)"
    else:
        verdict = "the interval includes 0: no difference can be told at this size"
    return (
        f"CD − SFT on {SET_NAMES.get(name, name)} ({metric}): {d['difference']:+.3f} ± {d['stderr']:.3f} "
        f"(paired standard error; 95% interval {low:+.3f} to {high:+.3f}; n = {d['n']} questions, right "
        f"for CD only {d['first_only']}, for SFT only {d['second_only']}; unpaired s.e. "
        f"{d['unpaired_stderr']:.3f}): {verdict}."
    )


def format_results(results: dict, header: list[str]) -> str:
    """Markdown: the header lines, the accuracy table, forgetting, CD against SFT and, when the results
    have one, what the training questions cover (`coverage.coverage_lines`)."""
    sets = [name for name in SET_NAMES if any(name in m["scores"] for m in results["models"].values())]
    columns = [f"{SET_NAMES[name]}: {metric}" for name in sets for metric in METRICS]
    lines = [*header, ""]
    lines += ["| model | " + " | ".join(columns) + " | forgetting: KL(base ‖ model) per token |"]
    lines += ["| --- " * (len(columns) + 2) + "|"]
    for key, model in results["models"].items():
        cells = [_rate(model["scores"].get(name, {}).get(metric)) for name in sets for metric in METRICS]
        lines.append(
            f"| {model['label']} | " + " | ".join(cells) + f" | {_kl(model['forgetting_kl'], key)} |"
        )
    lines += [
        "",
        "Accuracy ± binomial standard error (right/asked). exact: the normalised answer equals the gold "
        "answer; contains: the normalised gold answer appears in the normalised answer as whole words "
        "(normalisation: lower case, punctuation, articles and thousands separators dropped). Closed book: "
        "the question alone; open book: the document as the teacher reads it, then the question. "
        "Forgetting: the KL from the student's own base model on the base model's replies to unrelated "
        "prompts (mean over tokens; per prompt ± standard error).",
        "",
    ]
    comparison = results.get("cd_vs_sft", {})
    if comparison:
        lines += ["## CD against SFT", ""]
        for name in ("heldout_wordings", "heldout_facts", "train"):
            for metric in ("contains", "exact"):
                sentence = comparison_sentence(comparison, name, metric)
                if sentence:
                    lines.append(f"- {sentence}")
        lines.append("")
    lines += coverage_lines(results.get("coverage", {}))
    return "\n".join(lines)


def write_results(output_dir, results: dict, header: list[str], code: dict | None = None) -> list[Path]:
    """results.md and results.json in `output_dir`, both naming the code that made them when `code` (a
    `code_stamp.stamp_json` record) is given."""
    output_dir = Path(output_dir)
    text = format_results(results, header)
    if code:
        text, results = stamp_markdown(text, code), {**results, "code": code}
    markdown = write_text_atomically(output_dir / "results.md", text)
    data = write_text_atomically(output_dir / "results.json", json.dumps(results, indent=2) + "\n")
    return [markdown, data]
