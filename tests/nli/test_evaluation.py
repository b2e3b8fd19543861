import importlib.util
import itertools
import math
import random
from pathlib import Path

import pytest
import torch

from distill_trainer.errors import UsageError
from distill_trainer.nli.evaluation import (
    METRIC_PATH,
    LabelWordScores,
    classification_metrics,
    evaluate_task,
    score_label_words,
)
from distill_trainer.nli.patterns import get_pattern, label_token_ids
from distill_trainer.nli.tasks import get_task, load_split
from distill_trainer.views.text import SEPARATOR

DATA = str(Path(__file__).parents[1] / "data")
DEMOS = "The cat sat on the mat ? Yes\n\nA man is playing a guitar ? No"
QUERIES = ["Two dogs run in the park question: Dogs run. ?", "The senator thanked the artist ?", "premise ?"]


@torch.no_grad()
def reference_logprobs(model, tokenizer, query, words, demonstrations):
    """Unbatched, unpadded full forward over the teacher's text: the sum of the words' token log-probs."""
    prefix = (
        tokenizer(demonstrations + SEPARATOR, add_special_tokens=False)["input_ids"] if demonstrations else []
    )
    prefix = prefix + tokenizer(query, add_special_tokens=False)["input_ids"]
    scores, argmax = [], None
    for word in words:
        answer = tokenizer(word, add_special_tokens=False)["input_ids"]
        logp = torch.log_softmax(model(torch.tensor([prefix + answer])).logits[0].float(), -1)
        scores.append(sum(float(logp[len(prefix) - 1 + t, tok]) for t, tok in enumerate(answer)))
        argmax = int(logp[len(prefix) - 1].argmax())
    return scores, argmax


@pytest.mark.parametrize("words", [[" Yes", " No"], [" Yes Yes", " No question"]])
@pytest.mark.parametrize("demonstrations", ["", DEMOS])
def test_label_word_scoring_equals_a_full_forward(student, tokenizer, words, demonstrations):
    student.eval()
    scores = score_label_words(
        student, tokenizer, QUERIES, words, demonstrations, batch_size=2, progress=False
    )
    for i, query in enumerate(QUERIES):
        expected, argmax = reference_logprobs(student, tokenizer, query, words, demonstrations)
        assert torch.allclose(scores.logprobs[i], torch.tensor(expected), atol=1e-4)
        assert int(scores.predictions[i]) == max(range(len(words)), key=lambda j: expected[j])
        assert int(scores.vocab_argmax[i]) == argmax


def test_multi_token_words_really_are_multi_token(tokenizer):
    assert all(len(ids) > 1 for ids in label_token_ids(tokenizer, [" Yes Yes", " No question"]))


def test_per_query_demonstrations_and_training_mode_restored(student, tokenizer):
    student.train()
    blocks = [DEMOS, "", "The cat sat on the mat ? Yes"]
    scores = score_label_words(student, tokenizer, QUERIES, [" Yes", " No"], blocks, progress=False)
    assert student.training
    student.eval()
    for i in range(3):
        expected, _ = reference_logprobs(student, tokenizer, QUERIES[i], [" Yes", " No"], blocks[i])
        assert torch.allclose(scores.logprobs[i], torch.tensor(expected), atol=1e-4)
    with pytest.raises(UsageError, match="2 demonstration blocks for 3 queries"):
        score_label_words(student, tokenizer, QUERIES, [" Yes", " No"], blocks[:2], progress=False)


def test_label_words_that_collide_after_tokenization(tokenizer):
    with pytest.raises(UsageError, match="' Yes' and ' Yes question' collide after tokenization"):
        label_token_ids(tokenizer, [" Yes", " Yes question"])
    with pytest.raises(UsageError, match="empty after tokenization"):
        label_token_ids(tokenizer, [" Yes", ""])


def test_vocab_predictions_map_argmax_tokens_to_labels():
    scores = LabelWordScores(torch.zeros(3, 2), torch.tensor([11, 5, 12]), first_token_ids=[11, 12])
    assert scores.vocab_predictions.tolist() == [0, -1, 1]


# ---------------------------------------------------------------- metrics


def pairwise_auc(scores, positives):
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def load_metric_module():
    spec = importlib.util.spec_from_file_location("nli_metric_module", METRIC_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rank_auc_matches_the_pairwise_definition_with_ties():
    module, rng = load_metric_module(), random.Random(0)
    for _ in range(20):
        scores = [rng.choice([0.0, 0.5, 1.0, rng.random()]) for _ in range(25)]
        positives = [rng.random() < 0.4 for _ in scores]
        if any(positives) and not all(positives):
            assert module.roc_auc(scores, positives) == pytest.approx(pairwise_auc(scores, positives))
    assert module.roc_auc([1, 2], [True, True]) is None


def test_metrics_through_the_evaluate_module():
    predictions, references = [0, 0, 1, 1, 0, -1], [0, 1, 1, 1, 0, 0]
    margins = [2.0, 0.5, -1.0, -0.2, 1.0, 0.1]
    m = classification_metrics(predictions, references, margins, num_labels=2)
    assert m["n"] == 6 and m["accuracy"] == pytest.approx(4 / 6)
    assert m["accuracy_stderr"] == pytest.approx(math.sqrt((4 / 6) * (2 / 6) / 6))
    # label 0: tp 2, predicted 3, actual 3 -> F1 2/3; label 1: tp 2, predicted 2, actual 3 -> F1 0.8
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["per_label_accuracy"] == [pytest.approx(2 / 3), pytest.approx(2 / 3)]
    assert m["predicted_label_balance"] == [pytest.approx(3 / 6), pytest.approx(2 / 6)]
    assert m["auc"] == pytest.approx(pairwise_auc(margins, [r == 0 for r in references]))
    assert classification_metrics([0, 1, 2], [0, 1, 1], [0.0, 0.0, 0.0], num_labels=3)["auc"] is None


# ---------------------------------------------------------------- a whole task


def test_evaluate_hans_reports_per_heuristic_and_per_label(student, tokenizer):
    task, pattern = get_task("hans"), get_pattern("minimal", 2)
    rows = load_split(task, "validation", "local", DATA)
    demos = ["The cat sat on the mat ? Yes", "A man is playing a guitar ? No"]
    metrics, predictions = evaluate_task(
        student, tokenizer, rows, task, pattern, demos, batch_size=16, progress=False
    )
    assert metrics["n"] == len(rows) == len(predictions) and metrics["num_demonstrations"] == 2
    assert set(metrics["per_heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}
    assert sum(m["n"] for m in metrics["per_heuristic"].values()) == len(rows)
    assert set(metrics["per_label_accuracy"]) == {"entailment", "non_entailment"}
    assert all(m["auc"] is not None for m in metrics["per_heuristic"].values())
    correct = sum(p["prediction"] == p["label"] for p in predictions)
    assert metrics["accuracy"] == pytest.approx(correct / len(rows))
    for p in predictions:
        assert (p["margin"] > 0) == (p["prediction"] == 0) and p["heuristic"] and p["subcase"]
    # the margins in the predictions give the AUC reported in the metrics
    labels0 = [p["label"] == 0 for p in predictions]
    assert metrics["auc"] == pytest.approx(
        pairwise_auc([p["margin"] for p in predictions], labels0), abs=1e-6
    )


def test_evaluate_mnli_zero_shot_with_a_callable_sampler(student, tokenizer):
    task, pattern = get_task("mnli"), get_pattern("gpt3", 2)
    rows = load_split(task, "validation_matched", "local", DATA)
    metrics, _ = evaluate_task(student, tokenizer, rows, task, pattern, None, progress=False)
    assert metrics["num_demonstrations"] == 0 and "per_heuristic" not in metrics
    per_row, _ = evaluate_task(
        student, tokenizer, rows, task, pattern, lambda row: [row["premise"] + " ? Yes"], progress=False
    )
    assert per_row["num_demonstrations"] == 1
