"""distill_context with a teacher that reads another tokenizer (a SentencePiece-style tiny tokenizer, the
student a byte-level one): validation says the cross-tokenizer loss grades the replies, the recipe
trains end to end on the teacher's own replies, and the teacher output cache is refused with the fix;
`evaluate-replies` refuses such a teacher (its KL needs one tokenizer) before any weights load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import load_recipe, refuse_weight_loading, reply_recipe_argv
from safetensors.torch import load_file

from distill_trainer.errors import UsageError

CONTEXT = "Answer in one short sentence."
PROMPTS = ["Does the cat sit on the mat?", "Who saw the lawyer?", "Do two dogs run?", "Is the man playing?"]


def _argv(tmp_path, chat_dirs, teacher, **overrides):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"prompt": p + " again"}) + "\n" for p in PROMPTS[:2]))
    values = {
        "data_file": str(train),
        "eval_data_file": str(heldout),
        "context": CONTEXT,
        "max_new_tokens": 6,
        "generation_batch_size": 2,
        "student_mode": "full",
        "teacher_model_name_or_path": teacher,
        "teacher_output_cache": False,
        "save_strategy": "no",
    }
    return reply_recipe_argv(tmp_path, chat_dirs, values, overrides)


@pytest.mark.integration
def test_a_teacher_with_another_tokenizer_teaches_end_to_end(tmp_path, chat_dirs, other_teacher):
    recipe = load_recipe("distill_context")
    metrics = recipe.main(_argv(tmp_path, chat_dirs, other_teacher))
    assert metrics["cross_tokenizer"] is True
    assert metrics["train"]["global_step"] == 2
    assert metrics["teacher_completions"]["generated"] == len(PROMPTS) + 2
    logs = [log for log in metrics["log_history"] if "kd_loss" in log]
    assert len(logs) == 2 and all(0 < log["kd_loss"] < float("inf") for log in logs)
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    trained = load_file(str(tmp_path / "out" / "model.safetensors"))
    initial = load_file(str(Path(chat_dirs["student"]) / "model.safetensors"))
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(initial[k], trained[k]) for k in initial)
    assert "kl" not in metrics["eval"]["before"]  # the KL to the teacher needs one tokenizer


def test_validation_names_the_path_and_refuses_the_output_cache(
    tmp_path, chat_dirs, other_teacher, monkeypatch, capsys
):
    from distill_trainer.run.cli import main as cli

    refuse_weight_loading(monkeypatch)
    argv = _argv(tmp_path, chat_dirs, other_teacher)
    assert cli(["validate", *argv, "--recipe", "distill_context"]) == 0
    assert "reads another tokenizer: the cross-tokenizer loss grades the replies" in capsys.readouterr().out
    recipe = load_recipe("distill_context")
    with pytest.raises(UsageError, match="teacher_output_cache: false"):
        recipe.main(_argv(tmp_path, chat_dirs, other_teacher, teacher_output_cache=True))


def test_evaluate_replies_refuses_a_teacher_with_another_tokenizer_before_loading(
    tmp_path, chat_dirs, other_teacher, monkeypatch, capsys
):
    from distill_trainer.run.cli import main as cli
    from distill_trainer.run.reply_command import check_teacher_tokenizer

    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    refuse_weight_loading(monkeypatch)
    argv = ["evaluate-replies", "--model", chat_dirs["student"], "--data", str(data), "--context", CONTEXT]
    assert cli([*argv, "--teacher", other_teacher]) != 0
    error = capsys.readouterr().err
    assert "reads another tokenizer" in error and "omit --teacher" in error
    assert "give a teacher with the model's tokenizer" in error
    check_teacher_tokenizer(chat_dirs["student"], chat_dirs["teacher"])  # one tokenizer: no refusal
