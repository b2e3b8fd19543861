"""A comparison over student sizes: the same methods for each of several students against one teacher,
with the same training queries and evaluation rows, each student in its own folder of the run (its own
summary.md, as a comparison of that student alone writes), then the report across sizes
(report/sizes.py).

    report = compare_student_sizes((student_args, data_args, compare, config), run_dir, given, None,
                                   report=report_student, code=code_record(scripts))
    # report: recipes/compare.py runs one student's plan; code: stamped into sizes.md and sizes.json

What each student shares with the others is read back rather than run again: the teacher's own rows
(`comparison.read_shared_rows`) and its pass over the training queries (the teacher output cache, keyed
on the teacher's view only). A student's rows that an earlier run computed under the same fingerprint (the
default run's 135M student, say) are read back as in any comparison (run/method_reuse.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from distill_trainer.report.sizes import format_size_markdown, size_entry, write_size_report
from distill_trainer.run.comparison import (
    check_planned_methods,
    plan_methods,
    publish,
    read_shared_rows,
    say_why_rerun,
    student_folders,
)
from distill_trainer.run.comparison_methods import read_method_yaml
from distill_trainer.run.interrupt import forget_run


def compare_student_sizes(
    configs, run_dir: Path, given, publish_to: Path | None, report, code: dict | None = None
) -> dict:
    """Every method for each of `compare.students`, each student in its own folder of the run with its own
    summary, against the same teacher, training queries and evaluation rows; then sizes.md, sizes.json and
    sizes.png. The teacher's rows run once (the later students read them back), and so does its pass over
    the training queries (the teacher output cache's key does not depend on the student).

    configs: (student_args, data_args, compare, config) as the comparison parsed them; report(plan,
    configs, student_dir) -> (summary, rows): runs one student's plan and writes its summary; code: the
    record of the code that made the sizes (`code_digest.code_record`), stamped into both tables."""
    student_args, data_args, compare, config = configs
    folders = student_folders(compare.students)
    # ------------------------------------------------------------ every student's plan, all checked first
    plans, computed = {}, {}
    for student, folder in folders.items():
        one_student = replace(student_args, model_name_or_path=student)
        student_compare = compare.for_student(student)
        plan = plan_methods(one_student, data_args, student_compare, config, run_dir / folder, given)
        read_shared_rows(plan, computed)
        computed.update(
            {fingerprint: run_dir / folder / name for name, (_, fingerprint) in plan.recipes.items()}
        )
        say_why_rerun({f"{folder}/{name}": why for name, why in plan.reran.items()})
        plans[student] = (one_student, student_compare, plan)
    for student, (_, _, plan) in plans.items():
        check_planned_methods(plan, run_dir / folders[student])

    # ------------------------------------------------------------ each student's methods, then the sizes
    sizes = []
    for student, (one_student, student_compare, plan) in plans.items():
        print(f"==== student {student}", flush=True)
        summary, rows = report(
            plan, (one_student, data_args, student_compare, config), run_dir / folders[student]
        )
        sizes.append(size_entry(student, folders[student], rates_used(rows), summary, rows))
    settings = {
        "teacher": config.teacher_model_name_or_path,
        "students": list(compare.students),
        "methods": list(compare.methods),
        "num_train_examples": data_args.num_train_examples,
        "num_eval_examples": data_args.num_eval_examples,
        "hans_per_subcase": data_args.hans_per_subcase,
        "quick": compare.quick,
    }
    written = write_size_report(run_dir, sizes, settings, code)
    if publish_to:
        publish(run_dir, publish_to, folders.values())
    print(format_size_markdown(sizes, written["verdict"], settings), flush=True)
    print(f"outputs: {run_dir}/sizes.md, sizes.json, sizes.png; each student's summary in its folder")
    forget_run(run_dir)
    return written


def rates_used(rows: list[dict]) -> dict:
    """The learning rate each trained method of one student ran with (from its resolved config)."""
    rates = {}
    for row in rows:
        _, values = read_method_yaml(Path(row["output_dir"]))
        if "learning_rate" in values:
            rates[row["method"]] = values["learning_rate"]
    return rates
