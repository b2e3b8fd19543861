"""The mean training loss of a resumed run, over all of its steps.

The stock `Trainer` starts its running loss sum at zero in every `train()` call, so a run resumed from a
checkpoint reports the mean over the steps after the resume only. Here each checkpoint also stores the
sum so far (`train_loss_state.json`: the sum already logged, the part not yet logged and the step it was
last logged at), and a resumed run starts from it: its `train_loss`, in the result and in the Trainer's
own log line, is then the same number, bitwise, as an uninterrupted run's, and so is its first `loss`
line after the resume.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from distill_trainer.training.trainer_internals import (
    TrainerInternalsMixin,
    logged_loss_sum,
    loss_sums,
    set_loss_sums,
)

logger = logging.getLogger(__name__)

LOSS_STATE = "train_loss_state.json"


class _RestoreLossSum(TrainerCallback):
    """Sets the trainer's running sums right after `train()` has zeroed them (on_train_begin)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        saved, self.trainer._loss_state_to_restore = self.trainer._loss_state_to_restore, None
        if saved is not None:
            # without "last_logged" (older files) the pending part spans the steps since the resume
            set_loss_sums(self.trainer, saved["logged"], saved["pending"], saved.get("last_logged"))


class ResumableTrainLossMixin(TrainerInternalsMixin):
    """`Trainer` mixin: each checkpoint holds the loss sums, and a resumed run continues them."""

    _loss_state_to_restore: dict | None = None
    _loss_callback_added = False
    _loss_restored = False  # this train() call resumed with the saved sums

    def add_checkpoint_files(self, folder: Path) -> None:
        super().add_checkpoint_files(folder)
        sums = loss_sums(self)
        state = {
            "logged": sums["logged"],
            "pending": sums["pending"],
            "global_step": self.state.global_step,
            "last_logged": sums["last_logged"],
        }
        (folder / LOSS_STATE).write_text(json.dumps(state), encoding="utf-8")

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        self._loss_state_to_restore = None
        if resume_from_checkpoint and isinstance(resume_from_checkpoint, (str, Path)):
            try:
                self._loss_state_to_restore = json.loads(
                    (Path(resume_from_checkpoint) / LOSS_STATE).read_text()
                )
            except (OSError, ValueError):
                logger.warning(
                    "%s has no %s: train_loss will average the steps after the resume only",
                    resume_from_checkpoint,
                    LOSS_STATE,
                )
        if not self._loss_callback_added:
            self.add_callback(_RestoreLossSum(self))
            self._loss_callback_added = True
        self._loss_restored = self._loss_state_to_restore is not None
        try:
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        finally:
            restored, self._loss_restored = self._loss_restored, False
        if not restored:  # a fresh run: the Trainer's own mean is already over every step
            return result
        # `log` below already put the mean into the metrics and the log history; the result's own field
        # was computed by the Trainer over the steps after the resume
        return type(result)(result.global_step, result.metrics["train_loss"], result.metrics)

    def log(self, logs: dict, *args, **kwargs) -> None:
        # The Trainer's closing line divides the (restored) sum by the steps of this call only: print,
        # record and return the mean over every step instead
        if self._loss_restored and "train_loss" in logs:
            logs["train_loss"] = logged_loss_sum(self) / max(self.state.global_step, 0.001)
        super().log(logs, *args, **kwargs)
