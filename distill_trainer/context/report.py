"""The report of a context-distillation run on held-out prompts: the rule-following rate of the teacher
with the context and of the student without it, before and after distillation, and the student's KL to
the teacher on the teacher's completions; written as `report.md` beside `metrics.json`.
"""

from __future__ import annotations

from pathlib import Path

from distill_trainer.code_stamp import stamp_markdown
from distill_trainer.context.generation_eval import CUT_OFF
from distill_trainer.integrity import write_text_atomically

ROWS = (
    ("teacher", "teacher, with the context"),
    ("before", "student before, without the context"),
    ("after", "student after, without the context"),
)


def _rate(rule: dict | None) -> str:
    if not rule:
        return "-"
    return f"{rule['rate']:.3f} ± {rule['stderr']:.3f} ({rule['passed']}/{rule['n']})"


def _kl(kl: dict | None) -> str:
    if not kl:
        return "-"
    return (
        f"{kl['kl_per_token']:.4f} (per example {kl['kl_example_mean']:.4f} ± {kl['kl_example_stderr']:.4f})"
    )


def _failures(rule: dict | None) -> str:
    """Replies that broke the rule, by reason; replies cut off at the token limit are counted apart."""
    if not rule:
        return "-"
    broke = {reason: n for reason, n in rule["failures"].items() if reason != CUT_OFF}
    return ", ".join(f"{reason} {n}" for reason, n in broke.items()) or "-"


def format_report(metrics: dict) -> str:
    """Markdown: the settings, then one row per model with its rate (± standard error), failures by
    reason and KL per completion token."""
    evaluation = metrics.get("eval", {})
    lines = [
        f"# Context distillation: {metrics['student']} <- {metrics['teacher']}",
        "",
        f"- context ({metrics['context_placement']} placement): {metrics['context_summary']}",
        f"- data: {metrics['train_rows']} training rows, {metrics['eval_rows']} held-out rows; completions "
        f"by the teacher: {metrics['teacher_completions']['generated']} generated, "
        f"{metrics['teacher_completions']['reused']} read from the cache",
        f"- checker: {metrics.get('checker') or 'none'}; decoding: {metrics['decoding']}",
        f"- training: {metrics['train']['global_step']} steps, {metrics['train']['train_runtime']:.0f} s, "
        f"replies {metrics.get('replies', 'off-policy')}; whole run {metrics['seconds']:.0f} s",
        "",
        "| model | rule followed (rate ± s.e.) | broke the rule | cut off at max_new_tokens "
        "| KL(teacher ‖ model) per token, teacher's replies | KL, its own replies |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for key, name in ROWS:
        result = evaluation.get(key, {})
        rule = result.get("rule")
        lines.append(
            f"| {name} | {_rate(rule)} | {_failures(rule)} | {rule.get('cut_off', 0) if rule else '-'} "
            f"| {_kl(result.get('kl'))} | {_kl(result.get('kl_own'))} |"
        )
    lines += [
        "",
        "KL(teacher ‖ model) per reply token, over the whole vocabulary, the teacher reading the context and "
        "the student not: on the teacher's completions of the held-out prompts, and on the model's own "
        "replies to them (what it meets when it writes alone). A reply cut off at max_new_tokens is "
        "counted apart from one that broke the rule. Standard errors: binomial for rates, over examples "
        "for the KL.",
        "",
    ]
    return "\n".join(lines)


def write_report(output_dir, metrics: dict) -> Path:
    """report.md, stamped with the code that made it when metrics hold its record (`metrics["code"]`)."""
    path = Path(output_dir) / "report.md"
    text = format_report(metrics)
    if metrics.get("code"):
        text = stamp_markdown(text, metrics["code"])
    return write_text_atomically(path, text)
