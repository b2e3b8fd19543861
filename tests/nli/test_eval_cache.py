"""The evaluation cache keys on what the model was shown and the code that scores it, not on names: a
template's new wording (under the same pattern name) or a change to the scoring code is evaluated afresh,
an edit elsewhere (the loss) still reads the scores back."""

from types import SimpleNamespace

import pytest

from distill_trainer import code_digest
from distill_trainer.nli import task_evaluation
from distill_trainer.nli.patterns import Pattern

ROWS = [
    {"premise": "A cat sits.", "hypothesis": "An animal sits.", "label": 0},
    {"premise": "A man sings.", "hypothesis": "Nobody sings.", "label": 1},
]
CONFIG = SimpleNamespace(per_device_eval_batch_size=2, disable_tqdm=True)
DATA_ARGS = SimpleNamespace(drop_demonstrations_to_fit=False)


@pytest.fixture
def scored(monkeypatch, tmp_path):
    """Evaluate through the cache (under tmp_path) with a stand-in for the model's scoring, counting calls."""
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_evaluate_task(model, tokenizer, rows, task, pattern, *args, **kwargs):
        calls.append(pattern.template)
        return {"accuracy": len(calls)}, [{"logprobs": [0.0, -1.0]} for _ in rows]

    monkeypatch.setattr(task_evaluation, "evaluate_task", fake_evaluate_task)
    monkeypatch.setattr(task_evaluation, "is_main_process", lambda: True)

    def evaluate(template: str, demonstrations="A dog runs. question: Dogs run. answer: Yes"):
        data = SimpleNamespace(pattern=Pattern("custom", template, (" Yes", " No")))
        return task_evaluation.evaluate_set(
            None, None, data, CONFIG, DATA_ARGS, "mnli", ROWS, demonstrations, None, "model-files-1"
        )

    return evaluate, calls


def test_a_template_wording_change_misses_the_cache(scored):
    evaluate, calls = scored
    first = evaluate("{premise} question: {hypothesis} answer:")
    assert evaluate("{premise} question: {hypothesis} answer:") == first and len(calls) == 1  # read back
    evaluate("{premise} Question: {hypothesis} Answer:")  # same pattern name, new wording
    assert len(calls) == 2
    evaluate("{premise} question: {hypothesis} answer:", demonstrations="other demonstrations")
    assert len(calls) == 3


def test_the_scoring_code_is_in_the_key_and_the_loss_is_not(scored, monkeypatch):
    evaluate, calls = scored
    template = "{premise} question: {hypothesis} answer:"
    evaluate(template)
    files = dict(code_digest.library_files())

    def edited(path):
        monkeypatch.setattr(code_digest, "library_files", lambda: {**files, f"distill_trainer/{path}": "0"})

    edited("training/losses.py")
    evaluate(template)
    assert len(calls) == 1  # the loss does not score rows: read back
    edited("nli/evaluation.py")
    evaluate(template)
    assert len(calls) == 2
