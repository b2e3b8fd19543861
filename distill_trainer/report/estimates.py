"""Each comparison row's analytic memory estimate, beside what it measured (the table's "x est."):

    add_memory_estimates(rows, {name: (recipe, values)}, data_args)

The token sizes come from the run's own data, for each model's tokenizer: the longest training row's
student view and teacher view (its shared demonstrations first), and the longest evaluation row. A phase
peaks at its longest batch, which pads every row to that length (transformers' length-grouped sampler
even runs it first), so a mean length would explain only the typical step: for the default run's PBFT
student the mean batch's step needs about 550 MiB above the weights, the longest one 1,450.
"""

from __future__ import annotations

from distill_trainer.memory.method_estimate import TokenSizes, estimate_method
from distill_trainer.memory.units import MIB
from distill_trainer.report.tables import JUDGED_PHASES


def longest_row_tokens(tokenizer, pattern, rows) -> int:
    """Tokens of the longest row's student view (query + answer) for this tokenizer: the padded length of
    the batch that holds it."""
    return max(
        (len(tokenizer(pattern.query(row) + pattern.answer(row["label"]))["input_ids"]) for row in rows),
        default=0,
    )


def token_sizes(data, student_tokenizer, teacher_tokenizer) -> TokenSizes:
    demonstrations = data.sampler.fixed or []
    prefix = (
        len(teacher_tokenizer("\n\n".join(demonstrations) + "\n\n")["input_ids"]) if demonstrations else 0
    )
    eval_rows = [row for rows in data.eval_sets.values() for row in rows]
    return TokenSizes(
        student=longest_row_tokens(student_tokenizer, data.pattern, data.train_rows),
        teacher=longest_row_tokens(teacher_tokenizer, data.pattern, data.train_rows) + prefix,
        teacher_prefix=prefix,
        eval_student=longest_row_tokens(student_tokenizer, data.pattern, eval_rows),
        eval_teacher=longest_row_tokens(teacher_tokenizer, data.pattern, eval_rows) + prefix,
    )


def add_memory_estimates(rows: list[dict], methods: dict[str, tuple[str, dict]], data_args) -> None:
    """Set each row's `estimate_mib`: the estimate of the judged phases it measured (the largest)."""
    from distill_trainer.models.loading import load_tokenizer
    from distill_trainer.nli.data import prepare_data

    data = prepare_data(data_args)
    sizes = {}
    for row in rows:
        recipe, values = methods[row["method"]]
        teacher = values.get("teacher_model_name_or_path")
        key = (values["model_name_or_path"], teacher if teacher and teacher != "self" else None)
        if key not in sizes:
            student_tokenizer = load_tokenizer(key[0])
            teacher_tokenizer = load_tokenizer(key[1]) if key[1] else student_tokenizer
            sizes[key] = token_sizes(data, student_tokenizer, teacher_tokenizer)
        runtime = int((row.get("runtime_mib") or 0) * MIB)
        phases = estimate_method(recipe, values, sizes[key], runtime)
        measured = row.get("phase_needed_mib") or {}
        judged = [phases[p] for p in JUDGED_PHASES if p in phases and measured.get(p) is not None]
        row["estimate_mib"] = round(max(judged) / MIB, 1) if judged else None
        row["estimate_phases_mib"] = {p: round(v / MIB, 1) for p, v in phases.items()}
