"""NLI classification metrics as an `evaluate` module, shipped inside the package and loaded by path.

    metric = evaluate.load("<package>/metrics/nli.py")
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], scores=[2.1, -0.3, 0.4], num_labels=2)

`scores` is the label-word margin (log-prob of label 0 minus label 1); its AUC does not depend on a
threshold, so it shows whether a model tells the classes apart even when its accuracy only reflects a
bias towards one label. No scikit-learn: the AUC is the Mann-Whitney statistic computed from ranks.
"""

import math

import datasets
import evaluate

_DESCRIPTION = (
    "Accuracy with its standard error, macro-F1, per-label accuracy, the predicted-label balance, and\n"
    "(binary tasks, given scores) the ROC AUC of a score that is high for label 0. A prediction of -1 (no\n"
    "label, e.g. the full-vocabulary argmax was not a label word) counts as wrong."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted label ids (int; -1 = none of the labels).
    references: gold label ids (int, 0 .. num_labels - 1).
    scores: optional float per example, larger meaning "more label 0" (binary tasks only).
    num_labels: number of labels (default: 1 + the largest reference).
Returns:
    n, accuracy, accuracy_stderr, macro_f1, per_label_accuracy (list, None for an absent label),
    predicted_label_balance (list of fractions), auc (None without scores, for more than two labels,
    or when a label is absent).
"""


def roc_auc(scores, positives) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting one half."""
    n_pos = sum(1 for p in positives if p)
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    start = 0
    while start < len(order):  # tied scores share the average of their ranks
        end = start
        while end + 1 < len(order) and scores[order[end + 1]] == scores[order[start]]:
            end += 1
        for i in order[start : end + 1]:
            ranks[i] = (start + end) / 2 + 1
        start = end + 1
    rank_sum = sum(r for r, p in zip(ranks, positives) if p)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def macro_f1(predictions, references, num_labels: int) -> float:
    f1s = []
    for label in range(num_labels):
        tp = sum(1 for p, r in zip(predictions, references) if p == label and r == label)
        predicted = sum(1 for p in predictions if p == label)
        actual = sum(1 for r in references if r == label)
        # an empty class contributes 0, as scikit-learn's zero_division=0 does
        f1s.append(2 * tp / (predicted + actual) if predicted + actual else 0.0)
    return sum(f1s) / num_labels


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NLIMetrics(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, scores=None, num_labels=None):
        predictions, references, n = list(predictions), list(references), len(references)
        if n == 0:
            raise ValueError("no examples to score")
        num_labels = num_labels or max(references) + 1
        accuracy = sum(1 for p, r in zip(predictions, references) if p == r) / n
        per_label = []
        for label in range(num_labels):
            rows = [p for p, r in zip(predictions, references) if r == label]
            per_label.append(sum(1 for p in rows if p == label) / len(rows) if rows else None)
        auc = None
        if scores is not None and num_labels == 2:
            if len(scores) != n:
                raise ValueError(f"scores has {len(scores)} values for {n} examples")
            auc = roc_auc(list(scores), [r == 0 for r in references])
        return {
            "n": n,
            "accuracy": accuracy,
            "accuracy_stderr": math.sqrt(accuracy * (1 - accuracy) / n),
            "macro_f1": macro_f1(predictions, references, num_labels),
            "per_label_accuracy": per_label,
            "predicted_label_balance": [predictions.count(label) / n for label in range(num_labels)],
            "auc": auc,
        }
