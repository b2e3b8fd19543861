"""The contract with `transformers.Trainer` that `training/trainer_internals.py` relies on: each private
method it overrides or calls still exists, takes what it is given and is called where the override needs
it, and the running loss sums are attributes of the kinds it reads and writes. A transformers release
that changes any of them fails here with a message naming that release."""

import pytest
import torch
import transformers
from helpers import make_trainer
from transformers import Trainer, TrainerCallback

from distill_trainer.errors import UsageError
from distill_trainer.training import trainer_internals
from distill_trainer.training.trainer import ContextDistillationTrainer
from distill_trainer.training.trainer_internals import (
    LOSS_ATTRIBUTES,
    PRIVATE_METHODS,
    TrainerInternalsMixin,
    internals_problems,
    problems_message,
)


def test_the_installed_trainer_offers_every_internal_relied_on():
    problems = internals_problems()
    assert not problems, problems_message(problems)


@pytest.mark.parametrize("name", [name for name, _, _ in PRIVATE_METHODS])
def test_a_missing_private_method_is_named(name):
    changed = type("ChangedTrainer", (Trainer,), {name: None})
    problems = internals_problems(changed)
    assert f"Trainer.{name} no longer exists" in problems


def test_a_changed_signature_and_a_caller_that_no_longer_calls_are_named():
    def _get_output_dir(self, run):  # renamed parameter
        return run

    def _maybe_log_save_evaluate(self, *args, **kwargs):  # saves some other way
        return None

    changed = type(
        "ChangedTrainer",
        (Trainer,),
        {"_get_output_dir": _get_output_dir, "_maybe_log_save_evaluate": _maybe_log_save_evaluate},
    )
    problems = internals_problems(changed)
    assert any(p.startswith("Trainer._get_output_dir no longer takes trial") for p in problems)
    assert "Trainer._maybe_log_save_evaluate no longer calls self._save_checkpoint(...)" in problems


def test_a_loss_sum_set_after_on_train_begin_is_named(monkeypatch):
    real = trainer_internals._source

    def source(trainer_class, name):
        text = real(trainer_class, name)
        if name == "_inner_training_loop":  # the sum now starts after the callbacks ran
            moved = "\n        self._total_loss_scalar = 0.0\n"
            text = text.replace("self._total_loss_scalar = 0.0", "") + moved
        return text

    monkeypatch.setattr(trainer_internals, "_source", source)
    assert internals_problems() == [
        "Trainer._inner_training_loop no longer sets self._total_loss_scalar before on_train_begin"
    ]


def test_the_message_names_the_installed_and_the_tested_release():
    message = problems_message(["Trainer._run_epoch no longer exists"])
    assert f"transformers {transformers.__version__} changed" in message
    assert f"transformers=={trainer_internals.TESTED_WITH}" in message
    assert "Trainer._run_epoch no longer exists" in message and "trainer_internals.py" in message


def test_every_private_override_of_the_trainer_is_in_trainer_internals():
    """No other class of the trainer's bases overrides a private Trainer method."""
    private = {name for name in vars(Trainer) if name.startswith("_") and not name.startswith("__")}
    for base in ContextDistillationTrainer.__mro__:
        if base in (Trainer, TrainerInternalsMixin, object) or issubclass(Trainer, base):
            continue
        overridden = sorted(private & set(vars(base)))
        assert not overridden, f"{base.__name__} overrides private Trainer methods {overridden}"
    mro = ContextDistillationTrainer.__mro__
    assert mro.index(TrainerInternalsMixin) == mro.index(Trainer) - 1


class RecordLossSums(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.seen = trainer, {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.seen["begin"] = {name: getattr(self.trainer, name, None) for name in LOSS_ATTRIBUTES}

    def on_save(self, args, state, control, **kwargs):
        self.seen["save"] = trainer_internals.loss_sums(self.trainer)


def test_the_loss_sums_are_there_when_the_mixins_use_them(tmp_path, tokenizer, student, teacher):
    settings = {"max_steps": 2, "save_strategy": "steps", "save_steps": 2, "logging_steps": 1}
    trainer = make_trainer(tmp_path, student, teacher, tokenizer, **settings)
    recorder = RecordLossSums(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    begin = recorder.seen["begin"]
    assert isinstance(begin["_tr_loss"], torch.Tensor) and begin["_tr_loss"].dim() == 0
    assert isinstance(begin["_total_loss_scalar"], float)
    assert isinstance(begin["_globalstep_last_logged"], int)
    saved = recorder.seen["save"]
    # logged at every step: everything is in the logged sum, nothing pending, last logged at step 2
    assert saved["pending"] == 0.0 and saved["last_logged"] == 2 and saved["logged"] > 0
    assert trainer_internals.logged_loss_sum(trainer) == pytest.approx(
        sum(log["loss"] for log in trainer.state.log_history if "loss" in log)
    )


def test_the_trainer_does_not_upload_by_itself(tmp_path, tokenizer, student, teacher):
    trainer = make_trainer(tmp_path, student, teacher, tokenizer, push_to_hub=True, hub_model_id="me/x")
    assert trainer.hub_model_id == "me/x"  # no repository was created while building it (offline)
    with pytest.raises(UsageError, match="ship_student"):
        trainer.push_to_hub()
