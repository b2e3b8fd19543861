"""Each comparison row's analytic memory estimate, beside what it measured (the table's "x est."):

    add_memory_estimates(rows, {name: (recipe, values)}, data_args)

The token sizes come from the run's own data: the mean padded length of the training batches' student
view, and of the teacher's (its shared demonstrations first) for each model's tokenizer.
"""

from __future__ import annotations

from distill_trainer.memory.method_estimate import TokenSizes, estimate_method
from distill_trainer.memory.units import MIB
from distill_trainer.report.tables import JUDGED_PHASES


def mean_padded_tokens(tokenizer, data, batch_size: int) -> int:
    """Mean padded length of the training batches' student view (query + answer) for this tokenizer."""
    lengths = [
        len(tokenizer(data.pattern.query(row) + data.pattern.answer(row["label"]))["input_ids"])
        for row in data.train_rows
    ]
    batches = [max(lengths[i : i + batch_size]) for i in range(0, len(lengths), batch_size)]
    return round(sum(batches) / len(batches)) if batches else 0


def token_sizes(data, student_tokenizer, teacher_tokenizer, batch_size: int) -> TokenSizes:
    demonstrations = data.sampler.fixed or []
    prefix = (
        len(teacher_tokenizer("\n\n".join(demonstrations) + "\n\n")["input_ids"]) if demonstrations else 0
    )
    student = mean_padded_tokens(student_tokenizer, data, batch_size)
    teacher = mean_padded_tokens(teacher_tokenizer, data, batch_size) + prefix
    return TokenSizes(student=student, teacher=teacher, teacher_prefix=prefix, eval_student=student,
                      eval_teacher=teacher)  # fmt: skip


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
            batch = values.get("per_device_train_batch_size", 8)
            sizes[key] = token_sizes(data, student_tokenizer, teacher_tokenizer, batch)
        runtime = int((row.get("runtime_mib") or 0) * MIB)
        phases = estimate_method(recipe, values, sizes[key], runtime)
        measured = row.get("phase_needed_mib") or {}
        judged = [phases[p] for p in JUDGED_PHASES if p in phases and measured.get(p) is not None]
        row["estimate_mib"] = round(max(judged) / MIB, 1) if judged else None
        row["estimate_phases_mib"] = {p: round(v / MIB, 1) for p, v in phases.items()}
