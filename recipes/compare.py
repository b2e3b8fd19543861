"""Compare every method on one model pair and one data setting, on in-domain MNLI and out-of-domain HANS,
with peak memory (per phase) and time per method:

- in-context learning: the teacher with k demonstrations (icl_teacher), the student zero-shot (zero_shot)
  and with the same k demonstrations (icl_student);
- pattern-based fine-tuning of the student on gold labels: full, LoRA (pbft_full, pbft_lora);
- context distillation from the teacher: full, LoRA, BitFit (cd_full, cd_lora, cd_bitfit), LoRA from an
  8-bit (or 4-bit) teacher (cd_lora_8bit, cd_lora_4bit), LoRA with the student as its own teacher
  (cd_lora_self);
- the memory reference: LoRA fine-tuning of the teacher itself for a few steps (pbft_teacher_lora), beside
  the analytic estimate of its full fine-tuning.

    ./run.sh             # = python recipes/compare.py --config recipes/configs/embedded/compare.yaml
    ./run.sh --quick     # the same, smaller (see quick_* in CompareArguments)
    python recipes/compare.py --config recipes/configs/embedded/compare.yaml --methods icl_teacher cd_lora
    python recipes/compare.py --config recipes/configs/embedded/compare-student-sizes.yaml   # 3 students
    python recipes/compare.py --config ... --select_learning_rates cd_lora=1e-3,2e-3   # on the dev rows

Every method is one run of an existing recipe (icl_eval, pattern_finetune, context_distill) with a
resolved config written to results/<run_name>/<method>/method.yaml, so any row can be rerun alone. By
default each method runs in a fresh process: its peak memory is then its own, not mixed with the
methods before it. All methods read the same training queries and the same evaluation rows (the data
settings are shared); with teacher_output_cache, the teacher's answers on the training queries are
computed once and read by every CD method and by later runs. Writes summary.json, summary.md (table,
HANS per heuristic, findings with 95% intervals, memory against fine-tuning the teacher, sizes on disk),
plots and each method's predictions into results/<run_name>/, and points results/latest at it.

With `students:` (a list in place of model_name_or_path) the methods run for each student in its own
folder of the run (its own summary), the teacher's row and its pass over the training queries once, and
sizes.md, sizes.json and sizes.png put the students side by side (run/student_sizes.py, report/sizes.py).

The methods and their arguments are in distill_trainer/run/comparison_arguments.py, each method's config
in run/comparison_methods.py, the plan and the running in run/comparison.py, and what the summary states
beside its table in report/comparison_settings.py.
"""

import distill_trainer.run.quiet_start  # noqa: F401  (first: Ctrl-C while the imports below load)

# isort: split
import sys
import time
from dataclasses import replace
from pathlib import Path

from distill_trainer import DataArguments, DistillationConfig, StudentArguments, parse_config
from distill_trainer.code_digest import code_record
from distill_trainer.errors import UsageError
from distill_trainer.report.comparison_settings import (
    data_read,
    disk_sizes,
    run_settings,
    teacher_finetuning_reference,
)
from distill_trainer.report.estimates import add_memory_estimates
from distill_trainer.report.tables import print_table, write_report
from distill_trainer.run.comparison import (
    RecipeScripts,
    check_only,
    check_planned_methods,
    link_latest,
    plan_methods,
    prepare_embedded_models,
    publish,
    run_methods,
    say_why_rerun,
)
from distill_trainer.run.comparison_arguments import CompareArguments, apply_full, apply_quick
from distill_trainer.run.comparison_methods import read_method_yaml
from distill_trainer.run.interrupt import forget_run, note_run
from distill_trainer.run.learning_rate_selection import select_learning_rates
from distill_trainer.run.runner import run_recipe
from distill_trainer.run.student_sizes import compare_student_sizes

# the methods' recipes: this file's siblings, imported as `recipes.<name>` when this file was imported as
# part of that package, as sibling scripts when it runs as one
RECIPE_SCRIPTS = RecipeScripts(Path(__file__).resolve().parent, __package__ or None)
# the scripts whose code makes a comparison's table (beside the library): this one and its methods' recipes
COMPARISON_SCRIPTS = [
    f"recipes/{name}.py" for name in ("compare", "icl_eval", "pattern_finetune", "context_distill")
]
CONFIG_TYPES = (StudentArguments, DataArguments, CompareArguments, DistillationConfig)


def config_path_of(argv) -> str | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    return argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None


def main(argv=None) -> dict:
    (student_args, data_args, compare, config), given = parse_config(CONFIG_TYPES, argv)
    if compare.full:
        apply_full(compare)
    if compare.quick:
        given = apply_quick(data_args, compare, config, given)
    students = students_of(student_args, compare)
    # run_name is TrainingArguments' own field: the name of the run, here its folder
    # run_name default: the config file's name and the time, e.g. compare-20260101-120000
    stem = Path(config_path_of(argv)).stem if config_path_of(argv) else "compare"
    suffix = "-quick" if compare.quick else "-full" if compare.full else ""
    run_name = given.get("run_name") or f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}{suffix}"
    run_dir = Path(compare.results_dir) / run_name
    # Ctrl-C, a kill, a full disk: the same command with this run_name continues this folder
    note_run(run_dir, [] if given.get("run_name") else ["--run_name", run_name])

    # ------------------------------------------------------------ embedded models ready (timed apart)
    setup_seconds = prepare_embedded_models([*students, config.teacher_model_name_or_path])

    # ------------------------------------------------------------ one resolved config per method, checked
    if compare.check_only:
        checked = {}
        for student in students:
            one_student = replace(student_args, model_name_or_path=student)
            one_compare = compare.for_student(student) if compare.students else compare
            checked[student] = check_only(one_student, data_args, one_compare, config, run_name, given)
        return checked if compare.students else checked[students[0]]
    if compare.select_learning_rates:  # choosing the learning rates on the dev rows: no comparison runs
        report = select_learning_rates(
            (student_args, data_args, compare, config), students, run_dir, given, RECIPE_SCRIPTS
        )
        forget_run(run_dir)
        return report
    publish_to = Path(compare.publish_dir) / (stem + suffix) if compare.publish_dir else None
    if compare.students:
        return compare_student_sizes(
            (student_args, data_args, compare, config),
            run_dir,
            given,
            publish_to,
            report=report_student,
            code=code_record(COMPARISON_SCRIPTS),
        )
    plan = plan_methods(student_args, data_args, compare, config, run_dir, given)
    say_why_rerun(plan.reran)
    check_planned_methods(plan, run_dir)

    # ------------------------------------------------------------ run them (or read them back), and report
    summary, _ = run_and_report(plan, student_args, data_args, compare, config, run_dir, setup_seconds)
    link_latest(run_dir)
    if publish_to:
        publish(run_dir, publish_to)
    print_table(summary, run_dir)
    forget_run(run_dir)
    return summary


def report_student(plan, configs, run_dir):
    """One student's methods of a comparison over students, run and reported (the embedded models were
    prepared before: no set-up time to report)."""
    return run_and_report(plan, *configs, run_dir, {})


def students_of(student_args, compare) -> list[str]:
    if compare.students and student_args.model_name_or_path:
        raise UsageError(
            f"both model_name_or_path ({student_args.model_name_or_path}) and students are set; a comparison "
            "over students takes them from students: drop model_name_or_path"
        )
    return list(compare.students or [student_args.model_name_or_path])


def run_and_report(plan, student_args, data_args, compare, config, run_dir, setup_seconds):
    """(summary, rows with their predictions) of one student's methods, run or read back, in its folder:
    summary.json, summary.md and the plots."""
    results, seconds = run_methods(plan, compare, run_dir, RECIPE_SCRIPTS)
    settings = run_settings(student_args, data_args, compare, config, plan.earlier, seconds, setup_seconds)
    settings["run_again"] = {name: why for name, why in plan.reran.items() if why}
    settings["data"] = data_read(results)
    add_memory_estimates(
        results, {name: read_method_yaml(run_dir / name) for name in plan.recipes}, data_args
    )
    settings["memory_reference"] = teacher_finetuning_reference(results, data_args, config)
    settings["disk_mb"] = disk_sizes(results, config)
    summary = write_report(run_dir, results, settings, code_record(COMPARISON_SCRIPTS))
    return summary, results


if __name__ == "__main__":
    run_recipe(main)
