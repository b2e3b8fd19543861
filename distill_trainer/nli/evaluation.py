"""Evaluation: label-word scoring at the answer position, ICL evaluation, and NLI metrics.

    scores = score_label_words(model, tokenizer, queries, [" Yes", " No"], demonstrations=prompt)
    metrics, predictions = evaluate_task(model, tokenizer, hans_rows, task, pattern, demonstrations=None)

A label word's score is the sum of its tokens' log-probabilities after the query (one token for the
usual " Yes" / " No"). Only the logits at answer positions are built (`answer_logits`). Metrics go
through the `evaluate` module shipped in `nli/metrics/nli.py`, loaded by path (the stock
`evaluate.load("accuracy")` fetches a script from the Hub).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from distill_trainer.errors import UsageError
from distill_trainer.finite import nonfinite_rows, refuse_nonfinite
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.nli.demonstrations import fit_demonstrations
from distill_trainer.nli.patterns import Pattern, label_token_ids
from distill_trainer.nli.tasks import NLITask
from distill_trainer.teacher.prefix_cache import PrefixCachedModel
from distill_trainer.views.text import SEPARATOR, TwoViewCollator, build_views

METRIC_PATH = Path(__file__).parent / "metrics" / "nli.py"


# ---------------------------------------------------------------- label words


@dataclass
class LabelWordScores:
    """Per query: log-prob of each label word (n, num_labels) and the full-vocabulary argmax token id (n,)."""

    logprobs: torch.Tensor
    vocab_argmax: torch.Tensor
    first_token_ids: list[int]

    @property
    def predictions(self) -> torch.Tensor:
        return self.logprobs.argmax(-1)

    @property
    def vocab_predictions(self) -> torch.Tensor:
        """The label whose first token is the full-vocabulary argmax, or -1 when it is no label word."""
        lookup = {token: label for label, token in enumerate(self.first_token_ids)}
        return torch.tensor([lookup.get(int(t), -1) for t in self.vocab_argmax])


@torch.no_grad()
def score_label_words(
    model,
    tokenizer,
    queries: list[str],
    label_words,
    demonstrations="",
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "scoring",
    prefix_cache: bool = True,
) -> LabelWordScores:
    """Score every label word after every query, optionally behind few-shot demonstrations.

    Args:
        demonstrations: one rendered few-shot block (str, without trailing separator) shared by all
            queries, or one per query (list of str); "" for zero-shot.
        prefix_cache: with one block shared by all queries, run it through the model once and reuse its
            key/value cache (`PrefixCachedModel`): same scores, each query then costs a forward over itself.
    """
    label_ids = label_token_ids(tokenizer, label_words)
    demos = [demonstrations] * len(queries) if isinstance(demonstrations, str) else list(demonstrations)
    if len(demos) != len(queries):
        raise UsageError(
            f"got {len(demos)} demonstration blocks for {len(queries)} queries; give one per query"
        )
    # with one-token label words every label is read at the same position: one forward per query
    single = all(len(ids) == 1 for ids in label_ids)
    answers = [0] if single else list(range(len(label_words)))
    jobs = [(q, a) for q in range(len(queries)) for a in answers]
    features, shared_prefix = [], None
    cache_prefix = prefix_cache and isinstance(demonstrations, str) and bool(demonstrations)
    for q, a in jobs:
        views = build_views(tokenizer, queries[q], label_words[a], demos[q], SEPARATOR)
        ids, positions = views["teacher_input_ids"], views["teacher_answer_positions"]
        if cache_prefix:  # keep the query + answer; the shared prefix (demonstrations) runs once
            cut = views["teacher_prefix_length"]
            shared_prefix, ids, positions = ids[:cut], ids[cut:], [p - cut for p in positions]
        features.append({"input_ids": ids, "answer_positions": positions, "answer_ids": views["answer_ids"]})
    # longest first: similar lengths share a batch (less padding), and memory trouble shows at once
    order = sorted(range(len(jobs)), key=lambda j: -len(features[j]["input_ids"]))
    collator = TwoViewCollator(tokenizer.pad_token_id, padding_side="left")
    logprobs = torch.zeros(len(queries), len(label_words))
    vocab_argmax = torch.zeros(len(queries), dtype=torch.long)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    cached = PrefixCachedModel(model, shared_prefix) if shared_prefix else None
    try:
        for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
            chunk = order[start : start + batch_size]
            batch = collator([features[j] for j in chunk])
            inputs = (
                batch["input_ids"].to(device),
                batch["attention_mask"].to(device),
                batch["answer_positions"].to(device),
            )
            logits = cached.answer_logits(*inputs) if cached is not None else answer_logits(model, *inputs)
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, j in enumerate(chunk):
                q, a = jobs[j]
                n = len(features[j]["answer_ids"])
                first = logp.shape[1] - n  # answers are right-aligned in the batch's answer columns
                if single:
                    logprobs[q] = logp[row, first, [ids[0] for ids in label_ids]]
                else:
                    logprobs[q, a] = sum(logp[row, first + t, tok] for t, tok in enumerate(label_ids[a]))
                if a == 0:
                    vocab_argmax[q] = logp[row, first].argmax()
    finally:
        model.train(was_training)
    source = f"model {getattr(model, 'name_or_path', None) or type(model).__name__}"
    refuse_nonfinite(source, nonfinite_rows(logprobs), len(queries), "queries", "nothing was scored")
    return LabelWordScores(logprobs, vocab_argmax, [ids[0] for ids in label_ids])


# ---------------------------------------------------------------- metrics


@lru_cache(maxsize=1)
def nli_metric():
    import evaluate

    return evaluate.load(str(METRIC_PATH))


def classification_metrics(predictions, references, margins=None, num_labels: int = 2) -> dict:
    """Accuracy (+ standard error), macro-F1, per-label accuracy, label balance and margin AUC."""
    return nli_metric().compute(
        predictions=list(predictions),
        references=list(references),
        scores=None if margins is None else list(margins),
        num_labels=num_labels,
    )


def task_metrics(
    scores: LabelWordScores,
    labels: list[int],
    task: NLITask,
    groups: list[str] | None = None,
    group_name: str = "group",
) -> dict:
    """All metrics of one task; `groups` (e.g. HANS heuristics, one per row) adds the same per group."""
    predictions, margins = scores.predictions.tolist(), None
    if task.num_labels == 2:
        margins = (scores.logprobs[:, 0] - scores.logprobs[:, 1]).tolist()
    metrics = _named(classification_metrics(predictions, labels, margins, task.num_labels), task)
    vocab_predictions = scores.vocab_predictions.tolist()
    metrics["vocab_accuracy"] = _accuracy(vocab_predictions, labels, task)
    if groups is not None:
        per_group = metrics[f"per_{group_name}"] = {}
        for group in sorted(set(groups)):
            rows = [i for i, g in enumerate(groups) if g == group]
            per_group[group] = _named(
                classification_metrics(
                    [predictions[i] for i in rows],
                    [labels[i] for i in rows],
                    None if margins is None else [margins[i] for i in rows],
                    task.num_labels,
                ),
                task,
            )
            per_group[group]["vocab_accuracy"] = _accuracy(
                [vocab_predictions[i] for i in rows], [labels[i] for i in rows], task
            )
    return metrics


def _accuracy(predictions, labels, task: NLITask) -> float:
    return classification_metrics(predictions, labels, num_labels=task.num_labels)["accuracy"]


def _named(metrics: dict, task: NLITask) -> dict:
    """Per-label lists become {label name: value}."""
    for key in ("per_label_accuracy", "predicted_label_balance"):
        metrics[key] = dict(zip(task.label_names, metrics[key]))
    return metrics


# ---------------------------------------------------------------- one task, end to end


def evaluate_task(
    model,
    tokenizer,
    rows,
    task: NLITask,
    pattern: Pattern,
    demonstrations=None,
    batch_size: int = 8,
    max_length: int | None = None,
    drop_demonstrations_to_fit: bool = False,
    progress: bool = True,
) -> tuple[dict, list[dict]]:
    """Score `rows` (a Dataset or list of dicts) and return (metrics, predictions).

    Args:
        demonstrations: None for zero-shot (the prompt-stripped student), a list of rendered
            demonstrations shared by every row, or a callable row -> list of demonstrations
            (`DemonstrationSampler.for_query`).
    """
    rows = list(rows)
    queries = [pattern.query(row) for row in rows]
    # the length guard checks the longest label word: every label word must fit behind the prompt
    longest_answer = max(
        pattern.label_words, key=lambda word: len(tokenizer(word, add_special_tokens=False)["input_ids"])
    )
    blocks, counts = [], []
    for row, query in zip(rows, queries):
        demos = (
            []
            if demonstrations is None
            else (demonstrations(row) if callable(demonstrations) else demonstrations)
        )
        demos = fit_demonstrations(
            tokenizer, demos, query, longest_answer, max_length, drop_demonstrations_to_fit
        )
        blocks.append(SEPARATOR.join(demos))
        counts.append(len(demos))
    shared = len(set(blocks)) == 1
    scores = score_label_words(
        model,
        tokenizer,
        queries,
        pattern.label_words,
        blocks[0] if shared else blocks,
        batch_size=batch_size,
        progress=progress,
        desc=f"eval {task.name}",
    )
    labels = [int(row["label"]) for row in rows]
    groups = [row["heuristic"] for row in rows] if "heuristic" in task.extra_columns else None
    metrics = task_metrics(scores, labels, task, groups, group_name="heuristic")
    metrics["num_demonstrations"] = max(counts) if counts else 0
    return metrics, prediction_records(rows, scores, task, tokenizer, counts)


def prediction_records(rows, scores: LabelWordScores, task: NLITask, tokenizer, counts) -> list[dict]:
    """One JSON-ready record per row: inputs, gold, prediction, label-word log-probs, margin."""
    records = []
    vocab_predictions = scores.vocab_predictions.tolist()
    for i, row in enumerate(rows):
        logprobs = scores.logprobs[i].tolist()
        record = {
            "index": i,
            "premise": row["premise"],
            "hypothesis": row["hypothesis"],
            "label": int(row["label"]),
            "prediction": int(scores.predictions[i]),
            "logprobs": [round(x, 6) for x in logprobs],
            "vocab_prediction": vocab_predictions[i],
            "vocab_token": tokenizer.decode([int(scores.vocab_argmax[i])]),
            "num_demonstrations": counts[i],
        }
        if task.num_labels == 2:
            record["margin"] = round(logprobs[0] - logprobs[1], 6)
        for column in task.extra_columns:
            record[column] = row[column]
        records.append(record)
    return records
