"""The rows a run reads, the same in every recipe: evaluation sets, fixed demonstrations (never an
evaluation query), training queries (never a fixed demonstration), and their two-view datasets.

    data = prepare_data(data_args)                     # eval sets, demonstrations, training queries
    train = build_view_dataset(tokenizer, data.train_rows, data.pattern, data.sampler, max_length=2048)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from distill_trainer.errors import UsageError
from distill_trainer.nli.arguments import DataArguments
from distill_trainer.nli.demonstrations import (
    DemonstrationSampler,
    balanced_subset,
    fit_demonstrations,
    member_seed,
    per_subcase_subset,
    row_key,
)
from distill_trainer.nli.patterns import Pattern, label_token_ids
from distill_trainer.nli.row_checks import print_reports
from distill_trainer.nli.tasks import TASKS, NLITask, get_task, load_split
from distill_trainer.views.text import SEPARATOR, build_views


@dataclass
class NLIData:
    """Everything a recipe reads: the training task's pool, its training queries, the evaluation sets."""

    task: NLITask
    pattern: Pattern
    pool: Dataset
    sampler: DemonstrationSampler
    eval_sets: dict[str, Dataset]
    train_rows: Dataset | None = None
    reports: list = field(default_factory=list)  # row_checks.DataReport per file read
    # the teacher's demonstration sets: [sampler] alone, or the members of an ensemble (set 0 is `sampler`)
    samplers: list[DemonstrationSampler] = field(default_factory=list)

    def data_report(self) -> dict:
        """What each data file gave (rows read, kept, dropped by reason), for metrics.json."""
        return {report.where: report.as_dict() for report in self.reports}


def load_eval_set(name: str, data_args: DataArguments, reports: list | None = None) -> Dataset:
    task = get_task(name)
    rows = load_split(
        task,
        task.eval_split,
        data_args.data_source,
        data_args.data_dir,
        drop_invalid_rows=data_args.drop_invalid_rows,
        reports=reports,
    )
    if "subcase" in task.extra_columns:
        return per_subcase_subset(rows, data_args.hans_per_subcase, data_args.subset_seed)
    return balanced_subset(
        rows,
        data_args.num_eval_examples,
        task.num_labels,
        data_args.subset_seed,
        what=f"{name} evaluation rows (num_eval_examples)",
    )


def prepare_data(data_args: DataArguments, with_train: bool = True) -> NLIData:
    """Evaluation sets, then the fixed demonstrations (never an evaluation query), then the training
    queries (never a fixed demonstration, an evaluation row or a `holdout_rows` row). The same arguments
    give the same rows in every recipe, so pattern-based fine-tuning and context distillation train on the
    same queries."""
    task, pattern = get_task(data_args.task), data_args.get_pattern()
    if task.train_split is None:
        trainable = ", ".join(name for name, t in TASKS.items() if t.train_split)
        raise UsageError(
            f"task {task.name!r} has no training split for demonstrations or training; "
            f"use it in eval_tasks and set task to one of: {trainable}"
        )
    reports = []
    eval_sets = {name: load_eval_set(name, data_args, reports) for name in data_args.eval_tasks}
    eval_keys = {row_key(row) for rows in eval_sets.values() for row in rows}
    pool = load_split(
        task,
        task.train_split,
        data_args.data_source,
        data_args.data_dir,
        keep_idx=data_args.demonstration_ids is not None,
        drop_invalid_rows=data_args.drop_invalid_rows,
        reports=reports,
    )
    holdout_keys = set()
    if with_train and data_args.holdout_rows:  # rows settings are chosen on: never trained on
        if not Path(data_args.holdout_rows).is_file():
            raise UsageError(
                f"holdout_rows: {data_args.holdout_rows} does not exist; give the JSONL of dev rows "
                "(recipes/select_prompt.py writes dev.jsonl) or remove holdout_rows"
            )
        holdout = load_split(task, "holdout", data_file=data_args.holdout_rows, reports=reports)
        holdout_keys = {row_key(row) for row in holdout}
    from accelerate import PartialState

    if PartialState().is_main_process:  # one report, not one per process
        print_reports(reports)
    samplers = demonstration_samplers(pool, pattern, task, data_args, eval_keys)
    sampler = samplers[0]
    demonstration_keys = set().union(*(member.fixed_keys for member in samplers))
    train_rows = None
    if with_train:
        train_rows = balanced_subset(
            pool,
            data_args.num_train_examples,
            task.num_labels,
            data_args.subset_seed,
            exclude_keys=demonstration_keys | eval_keys | holdout_keys,
            what="training examples (num_train_examples)",
        )
    return NLIData(task, pattern, pool, sampler, eval_sets, train_rows, reports, samplers)


def demonstration_samplers(pool, pattern, task, data_args, eval_keys, seed: int | None = None) -> list:
    """The teacher's demonstration sets (one, or `demonstration_sets` members), never an evaluation row."""
    seed = data_args.demonstration_seed if seed is None else seed
    return [
        DemonstrationSampler(
            pool,
            pattern,
            task.num_labels,
            data_args.k,
            member_seed(seed, member),
            data_args.resample_demonstrations,
            exclude_keys=eval_keys,
            demonstration_ids=data_args.demonstration_ids if member == 0 else None,
        )
        for member in range(data_args.demonstration_sets)
    ]


def reseeded(data: NLIData, data_args: DataArguments, seed: int) -> NLIData:
    """`data` with the demonstration sets drawn with another seed (evaluation only: no training rows)."""
    eval_keys = {row_key(row) for rows in data.eval_sets.values() for row in rows}
    samplers = demonstration_samplers(data.pool, data.pattern, data.task, data_args, eval_keys, seed)
    return dataclasses.replace(data, sampler=samplers[0], samplers=samplers, train_rows=None)


def model_max_length(model_config, data_args: DataArguments) -> int | None:
    """The longest prompt allowed: `max_length` if set, else the model's position limit."""
    if data_args.max_length is not None:
        return data_args.max_length
    return getattr(model_config, "max_position_embeddings", None)


def build_view_dataset(
    tokenizer,
    rows,
    pattern: Pattern,
    sampler: DemonstrationSampler | None = None,
    max_length: int | None = None,
    drop_demonstrations_to_fit: bool = False,
    teacher_tokenizer=None,
) -> Dataset:
    """Two views per row (`build_views`); without a sampler, the student view only (pattern-based
    fine-tuning). A teacher with another tokenizer gets its view built with its own tokenizer."""
    other = teacher_tokenizer is not None and teacher_tokenizer.get_vocab() != tokenizer.get_vocab()
    features = []
    for index, row in enumerate(rows):
        query, answer = pattern.query(row), pattern.answer(row["label"])
        if sampler is None:
            views = build_views(tokenizer, query, answer)
            views = {k: v for k, v in views.items() if not k.startswith("teacher_")}
        else:
            demos = fit_demonstrations(
                teacher_tokenizer if other else tokenizer,
                sampler.for_query(row),
                query,
                answer,
                max_length,
                drop_demonstrations_to_fit,
            )
            views = build_views(tokenizer, query, answer, SEPARATOR.join(demos), SEPARATOR)
            if other:
                teacher = build_views(teacher_tokenizer, query, answer, SEPARATOR.join(demos), SEPARATOR)
                views["teacher_input_ids"] = teacher["teacher_input_ids"]
                views["teacher_answer_positions"] = teacher["teacher_answer_positions"]
                views["teacher_prefix_length"] = teacher["teacher_prefix_length"]  # for the prefix KV cache
        features.append({**views, "label": int(row["label"]), "example_index": index})
    return Dataset.from_list(features)


def first_token_ids(tokenizer, pattern: Pattern) -> list[int]:
    """The verbalizer's first token per label (checked for collisions), as the trainer wants them."""
    return [ids[0] for ids in label_token_ids(tokenizer, pattern.label_words)]
