"""Evaluation on every evaluation set of a run, as the recipes do it: results of a model on disk read back
from the evaluation cache, and a teacher ensembled over demonstration sets and calibrated when asked.

    results = evaluate_on_tasks(model, tokenizer, data, config, data_args, data.sampler.for_query,
                                model_id=fingerprint, teacher_ensemble=True)
    results.metrics["mnli"]["accuracy"], results.predictions["hans"]

With `teacher_ensemble` and `demonstration_sets > 1` or a `teacher_calibration`, each
demonstration set is evaluated (and cached) on its own, exactly as a single-set run would, and the
ensemble's scores are combined from theirs (`teacher.ensemble.combine_members`): adding sets or
calibration to a run whose sets were scored before costs only the content-free queries.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from distill_trainer.nli.data import NLIData
from distill_trainer.nli.eval_cache import evaluation_key, load_evaluation, rendered_prompts, store_evaluation
from distill_trainer.nli.evaluation import (
    LabelWordScores,
    evaluate_task,
    label_token_ids,
    score_label_words,
    task_metrics,
)
from distill_trainer.nli.tasks import get_task
from distill_trainer.teacher.ensemble import combine_members, content_free_distribution, content_free_rows
from distill_trainer.views.text import SEPARATOR


@dataclass
class EvalResults:
    metrics: dict[str, dict] = field(default_factory=dict)
    predictions: dict[str, list[dict]] = field(default_factory=dict)
    seconds: float = 0.0


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _the_model(model):
    """`model` itself, or what the loader `model` returns (called only when something must be scored)."""
    return model() if callable(model) and not isinstance(model, torch.nn.Module) else model


def uses_ensemble(data_args) -> bool:
    return data_args.demonstration_sets > 1 or data_args.teacher_calibration != "none"


def evaluate_on_tasks(
    model,
    tokenizer,
    data: NLIData,
    config,
    data_args,
    demonstrations=None,
    max_length: int | None = None,
    model_id: str | None = None,
    teacher_ensemble: bool = False,
) -> EvalResults:
    """Evaluate on every evaluation set; `demonstrations` as in `evaluate_task` (None: zero-shot); `model`
    may be a function that loads it, called only when something has to be scored.

    With `model_id` (see `eval_cache`), results of the same model files, prompt and rows are read back
    instead of recomputed, and stored when they are not there yet. With `teacher_ensemble`, the model is
    the few-shot teacher: `data.samplers` give its demonstration sets (see the module doc)."""
    results, start = EvalResults(), time.perf_counter()
    if not data_args.evaluate_after_training:
        return results
    ensemble = teacher_ensemble and uses_ensemble(data_args)
    content_free = None
    if ensemble and data_args.teacher_calibration == "content_free":
        content_free = [
            content_free_scores(model, tokenizer, data, sampler, config, model_id)
            for sampler in data.samplers
        ]
    for name, rows in data.eval_sets.items():

        def one_set(demos, name=name, rows=rows):
            return evaluate_set(
                model, tokenizer, data, config, data_args, name, rows, demos, max_length, model_id
            )

        if not ensemble:
            found = one_set(demonstrations)
        else:
            members = [one_set(sampler.for_query if data_args.k else None) for sampler in data.samplers]
            bias = content_free
            if data_args.teacher_calibration == "batch":  # each set's mean answer on these very rows
                bias = [content_free_distribution(_scores(records)) for _, records in members]
            found = combine_evaluations(members, bias, rows, get_task(name), tokenizer, data, data_args)
        results.metrics[name], results.predictions[name] = found
    results.seconds = time.perf_counter() - start
    return results


def evaluate_set(model, tokenizer, data, config, data_args, name, rows, demonstrations, max_length, model_id):
    """(metrics, predictions) of one demonstration set on one evaluation set, cached when `model_id`."""
    key = found = None
    if model_id is not None:
        blocks = [demonstrations(row) if callable(demonstrations) else demonstrations for row in rows]
        key = evaluation_key(
            model_id,
            task=name,
            rows=[dict(row) for row in rows],
            demonstrations=blocks,
            prompts=rendered_prompts(data.pattern, rows),
            max_length=max_length,
            drop=data_args.drop_demonstrations_to_fit,
        )
        found = load_evaluation(key)
    if found is not None:
        if is_main_process():
            print(
                f"{name}: evaluation of these model files on these rows and prompt read back from the cache"
            )
        return found
    found = evaluate_task(
        _the_model(model),
        tokenizer,
        rows,
        get_task(name),
        data.pattern,
        demonstrations,
        batch_size=config.per_device_eval_batch_size,
        max_length=max_length,
        drop_demonstrations_to_fit=data_args.drop_demonstrations_to_fit,
        progress=not config.disable_tqdm,
    )
    if key is not None and is_main_process():
        store_evaluation(key, *found)
    return found


def content_free_scores(model, tokenizer, data, sampler, config, model_id) -> torch.Tensor:
    """One demonstration set's (labels,) log content-free distribution, cached like an evaluation."""
    block = SEPARATOR.join(sampler.fixed)
    queries = [data.pattern.query(row) for row in content_free_rows()]
    key = found = None
    if model_id is not None:
        key = evaluation_key(
            model_id,
            task="content_free",
            rows=queries,
            demonstrations=block,
            prompts=rendered_prompts(data.pattern, content_free_rows()),
        )
        found = load_evaluation(key)
    if found is None:
        scores = score_label_words(
            _the_model(model),
            tokenizer,
            queries,
            data.pattern.label_words,
            block,
            batch_size=config.per_device_eval_batch_size,
            progress=False,
        )
        found = ({}, [{"logprobs": row} for row in scores.logprobs.tolist()])
        if key is not None and is_main_process():
            store_evaluation(key, *found)
    return content_free_distribution(torch.tensor([row["logprobs"] for row in found[1]]))


def _scores(records) -> torch.Tensor:
    return torch.tensor([record["logprobs"] for record in records])


def combine_evaluations(members, content_free, rows, task, tokenizer, data, data_args):
    """The ensemble's (metrics, predictions) from each set's; metrics also list each set alone."""
    first_ids = [ids[0] for ids in label_token_ids(tokenizer, data.pattern.label_words)]
    logprobs = combine_members([_scores(records) for _, records in members], content_free)
    # the full-vocabulary argmax is set 0's: an ensemble has no single vocabulary distribution
    base = members[0][1]
    vocab_argmax = torch.tensor(
        [first_ids[r["vocab_prediction"]] if r["vocab_prediction"] >= 0 else -1 for r in base]
    )
    scores = LabelWordScores(logprobs, vocab_argmax, first_ids)
    labels = [int(row["label"]) for row in rows]
    groups = [row["heuristic"] for row in rows] if "heuristic" in task.extra_columns else None
    metrics = task_metrics(scores, labels, task, groups, group_name="heuristic")
    metrics["num_demonstrations"] = members[0][0].get("num_demonstrations", data_args.k)
    metrics["teacher_ensemble"] = {
        "demonstration_sets": len(members),
        "calibration": data_args.teacher_calibration,
        "seeds": [sampler.seed for sampler in data.samplers],
        # per set: the label distribution that was divided out (content-free queries', or the rows' own)
        "bias": None if content_free is None else [c.exp().tolist() for c in content_free],
        "members": [
            {key: member.get(key) for key in ("accuracy", "accuracy_stderr", "auc")} for member, _ in members
        ],
    }
    predictions = []
    for i, record in enumerate(base):
        values = logprobs[i].tolist()
        updated = dict(record, prediction=int(scores.predictions[i]), logprobs=[round(x, 6) for x in values])
        if task.num_labels == 2:
            updated["margin"] = round(values[0] - values[1], 6)
        updated["member_predictions"] = [int(records[i]["prediction"]) for _, records in members]
        predictions.append(updated)
    return metrics, predictions


# ---------------------------------------------------------------- spread over demonstration seeds


def seed_spread(per_seed: dict[int, dict[str, dict]]) -> dict[str, dict]:
    """Per evaluation set: mean, min, max and range over seeds of accuracy and margin AUC; for an ensemble
    also of its set 0 alone (the single-set teacher each seed would give), so one run compares both."""
    spread = {}
    for task in next(iter(per_seed.values())):
        columns: dict[str, list[float]] = {}
        for metrics in per_seed.values():
            task_metrics_ = metrics[task]
            columns.setdefault("accuracy", []).append(task_metrics_["accuracy"])
            if task_metrics_.get("auc") is not None:
                columns.setdefault("auc", []).append(task_metrics_["auc"])
            member = (task_metrics_.get("teacher_ensemble") or {}).get("members", [None])[0]
            if member is not None:
                columns.setdefault("set0_accuracy", []).append(member["accuracy"])
                if member.get("auc") is not None:
                    columns.setdefault("set0_auc", []).append(member["auc"])
        spread[task] = {
            name: {
                "mean": sum(values) / len(values),
                "min": min(values),
                "max": max(values),
                "range": max(values) - min(values),
                "values": values,
            }
            for name, values in columns.items()
        }
    return spread


def format_spread(spread: dict[str, dict], seeds) -> str:
    """A markdown table of `seed_spread`."""
    lines = [
        f"spread over demonstration seeds {', '.join(str(s) for s in seeds)}:",
        "",
        "| task | metric | mean | min | max | max - min |",
        "|---|---|---|---|---|---|",
    ]
    for task, columns in spread.items():
        for name, s in columns.items():
            lines.append(
                f"| {task} | {name} | {s['mean']:.3f} | {s['min']:.3f} | {s['max']:.3f} | {s['range']:.3f} |"
            )
    return "\n".join(lines)
