"""distill_document with a teacher that reads another tokenizer: validation names the cross-tokenizer path,
the teacher answers in its own chat template, CD trains the student through the cross-tokenizer loss, and
the teacher output cache (token ids of one tokenizer) is refused with the fix."""

from __future__ import annotations

import pytest
from helpers import load_recipe, refuse_weight_loading
from safetensors.torch import load_file
from test_distill_document import recipe_argv

from distill_trainer.errors import UsageError


def _argv(tmp_path, chat_dirs, other_teacher, **overrides):
    settings = dict(
        teacher_model_name_or_path=other_teacher,
        teacher_output_cache=False,
        sft_baseline=False,
        save_strategy="no",
    )
    return recipe_argv(tmp_path, chat_dirs, **(settings | overrides))


@pytest.mark.integration
def test_a_teacher_with_another_tokenizer_teaches_the_document(tmp_path, chat_dirs, other_teacher):
    metrics = load_recipe("distill_document").main(_argv(tmp_path, chat_dirs, other_teacher))
    assert metrics["cross_tokenizer"] is True and metrics["teacher_loaded"]
    # 6 training, 3 held-out wordings, 1 held-out fact: the teacher answers every question once
    assert metrics["teacher_completions"]["generated"] == 10
    assert metrics["cd"]["train"]["global_step"] == 2
    logs = [log for log in metrics["cd"]["log_history"] if "kd_loss" in log]
    assert len(logs) == 2 and all(0 < log["kd_loss"] < float("inf") for log in logs)
    # LoRA's B matrices start at zero: trained adapters that are not all zero moved the student
    adapters = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    lora_b = [value for key, value in adapters.items() if "lora_B" in key]
    assert lora_b and any(bool(value.abs().sum() > 0) for value in lora_b)
    assert metrics["results"]["models"]["cd"]["scores"]["heldout_wordings"]["contains"]["n"] == 3


def test_validation_names_the_path_and_refuses_the_output_cache(
    tmp_path, chat_dirs, other_teacher, monkeypatch, capsys
):
    from distill_trainer.run.cli import main as cli

    refuse_weight_loading(monkeypatch)
    argv = _argv(tmp_path, chat_dirs, other_teacher)
    assert cli(["validate", *argv, "--recipe", "distill_document"]) == 0
    assert "reads another tokenizer: the cross-tokenizer loss grades the replies" in capsys.readouterr().out
    with pytest.raises(UsageError, match="teacher_output_cache: false"):
        load_recipe("distill_document").main(
            _argv(tmp_path, chat_dirs, other_teacher, teacher_output_cache=True)
        )
