"""Every place where the trainer relies on a private part of `transformers.Trainer`, in one module.

transformers offers public hooks for most of what `ContextDistillationTrainer` changes (`compute_loss`,
`log`, `get_batch_samples`, `save_model`, `TrainerCallback` events), and the trainer uses those. What
follows has no public hook; each item says why. The other mixins reach these internals only through the
names defined here:

    write_checkpoint(run_dir, write_files)   how a checkpoint is written (AtomicCheckpointMixin: staged)
    add_checkpoint_files(folder)             files each checkpoint gains before it counts as written
    loss_sums / set_loss_sums / logged_loss_sum    the Trainer's running training-loss sums
    prepare_inputs / count_items_in_batch    the Trainer's batch placement and answer-token count

`internals_problems()` lists what of this a transformers release no longer offers;
tests/training/test_trainer_internals_contract.py fails on each with the transformers version, and a
trainer built under such a release warns once.
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path

import transformers
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from distill_trainer.errors import UsageError

logger = logging.getLogger(__name__)

TESTED_WITH = "5.25.0"  # the transformers release whose trainer.py these internals were read from

# (private method, the parameters this module passes it, the stock method that must call it)
PRIVATE_METHODS = (
    ("_save_checkpoint", ("model", "trial"), "_maybe_log_save_evaluate"),
    ("_get_output_dir", ("trial",), "_save_checkpoint"),
    ("_run_epoch", (), "_inner_training_loop"),
    ("_push_from_checkpoint", ("checkpoint_folder",), "_save_checkpoint"),
    ("_prepare_inputs", ("inputs",), None),
    ("_get_num_items_in_batch", ("batch_samples", "device"), "get_batch_samples"),
)
# the running loss sums: set in `_inner_training_loop` before the `on_train_begin` callbacks run, and read
# while training, at each logging step and at the end
LOSS_ATTRIBUTES = ("_tr_loss", "_total_loss_scalar", "_globalstep_last_logged")
LOSS_READERS = ("_run_epoch", "_maybe_log_save_evaluate", "_finalize_training")


def checkpoint_folder_name(global_step: int) -> str:
    return f"{PREFIX_CHECKPOINT_DIR}-{global_step}"


class TrainerInternalsMixin:
    """`Trainer` mixin holding every override of a private `Trainer` method. The mixins that use its hooks
    derive from it, so it comes after them in any class's bases order, and before `Trainer`."""

    # while a checkpoint is written elsewhere (write_checkpoint), the folder the stock save code writes into
    _checkpoint_parent: str | None = None

    def __init__(self, *args, **kwargs):
        warn_if_internals_changed()
        super().__init__(*args, **kwargs)

    # ---- hooks for the other mixins ----

    def write_checkpoint(self, run_dir: Path, write_files) -> None:
        """Write this step's checkpoint; `write_files(parent)` runs the Trainer's own save code with
        `parent` in place of `run_dir`. Default: in place, as the stock Trainer does."""
        write_files(run_dir)
        if self.args.should_save:
            self.add_checkpoint_files(run_dir / checkpoint_folder_name(self.state.global_step))

    def add_checkpoint_files(self, folder: Path) -> None:
        """Extra files a checkpoint holds (main process only); mixins extend it and call super()."""

    # ---- the overrides ----

    # Why private: the stock `_save_checkpoint` writes the weights, optimizer, scheduler, RNG states and
    # trainer state one after the other straight into `checkpoint-N`; no callback runs before it or between
    # its files (`on_save` comes after), and `save_model` covers the weights only. Writing the checkpoint
    # elsewhere and moving it into place once complete needs the whole method wrapped.
    def _save_checkpoint(self, model, trial) -> None:
        run_dir = Path(super()._get_output_dir(trial=trial))

        def write_files(parent) -> None:
            self._checkpoint_parent = str(parent)
            try:
                super(TrainerInternalsMixin, self)._save_checkpoint(model, trial)
            finally:
                self._checkpoint_parent = None

        self.write_checkpoint(run_dir, write_files)

    # Why private: it is where the stock `_save_checkpoint` takes the folder it writes each file into (for
    # this run or a hyperparameter-search trial); no argument or setting redirects it.
    def _get_output_dir(self, trial) -> str:
        if self._checkpoint_parent is not None:
            return self._checkpoint_parent
        return super()._get_output_dir(trial=trial)

    # Why private: a run resumed from its last checkpoint (killed after training, in its evaluation, say)
    # with `max_steps` ending inside an epoch would train one step more, since the Trainer looks at
    # max_steps only after a step. No callback can stop an epoch before its first step: `on_epoch_begin`
    # may set `should_training_stop`, but the epoch reads it only after training a step.
    def _run_epoch(self, *args, **kwargs):
        if self.state.max_steps > 0 and self.state.global_step >= self.state.max_steps:
            self.control.should_training_stop = True
            return None
        return super()._run_epoch(*args, **kwargs)

    # Why private: the stock `_save_checkpoint` uploads every checkpoint whenever `push_to_hub` is set
    # (unless hub_strategy is "end"); the student goes to the Hub once, complete with its card, after
    # training (`report.hub.ship_student`). No public method or callback stops the checkpoint uploads.
    def _push_from_checkpoint(self, checkpoint_folder) -> None:
        return None

    # Public overrides of the stock Hub behaviour, kept beside the private one above. The stock `__init__`
    # creates the Hub repository when `push_to_hub` is set, which fails an offline run before its first
    # step; the repository is created when the student is pushed.
    def init_hf_repo(self, token=None, private=None) -> None:
        self.hub_model_id = self.args.hub_model_id

    def push_to_hub(self, *args, **kwargs):
        """The stock method would upload `output_dir` with a generated card over the student's own; a
        student goes to the Hub with its card and recipe through `report.hub`."""
        raise UsageError(
            "ContextDistillationTrainer.push_to_hub does not upload by itself: save and push the student "
            "with distill_trainer.report.hub.ship_student(trainer, folder, card=...) (push_to_hub: true "
            "in the arguments), or push a saved student folder with distill_trainer.report.hub.push_student"
        )


# ---- the running training-loss sums ----
# Why private: the Trainer keeps the loss summed so far in these attributes only (not in `TrainerState`,
# not in the logs at full precision); a resumed run continues them so that its `train_loss` equals an
# uninterrupted run's bitwise (`resumable_loss.py`).


def loss_sums(trainer) -> dict:
    """{"logged": the sum already logged, "pending": the part not yet logged, "last_logged": its step}."""
    return {
        "logged": trainer._total_loss_scalar,
        "pending": float(trainer._tr_loss.item()),
        "last_logged": trainer._globalstep_last_logged,
    }


def set_loss_sums(trainer, logged: float, pending: float, last_logged: int | None = None) -> None:
    """Continue the sums from saved values; valid from `on_train_begin` on (the Trainer zeroes them
    just before)."""
    trainer._total_loss_scalar = float(logged)
    trainer._tr_loss.fill_(float(pending))
    if last_logged is not None:
        trainer._globalstep_last_logged = int(last_logged)


def logged_loss_sum(trainer) -> float:
    return trainer._total_loss_scalar


# ---- batches ----
# Why private: `_prepare_inputs` places a batch the way the training step does (device, DeepSpeed dtype);
# the teacher output cache runs batches outside the training loop and needs the same placement.
# `_get_num_items_in_batch` counts the loss items of an accumulated batch across processes; batches
# rewritten by on-policy rollouts in `get_batch_samples` (public) need that count again.


def prepare_inputs(trainer, batch: dict) -> dict:
    return trainer._prepare_inputs(batch)


def count_items_in_batch(trainer, batches: list, device):
    return trainer._get_num_items_in_batch(batches, device)


# ---- the contract ----


def internals_problems(trainer_class=Trainer) -> list[str]:
    """What this module relies on that `trainer_class` (the installed transformers' Trainer) lacks."""
    problems = []
    for name, parameters, caller in PRIVATE_METHODS:
        method = getattr(trainer_class, name, None)
        if not callable(method):
            problems.append(f"Trainer.{name} no longer exists")
            continue
        found = inspect.signature(method).parameters
        missing = [p for p in parameters if p not in found]
        if missing:
            takes = ", ".join(found)
            problems.append(f"Trainer.{name} no longer takes {', '.join(missing)} (it takes {takes})")
        if caller and f"self.{name}(" not in _source(trainer_class, caller):
            problems.append(f"Trainer.{caller} no longer calls self.{name}(...)")
    loop = _source(trainer_class, "_inner_training_loop")
    begin = loop.find("callback_handler.on_train_begin(")
    for name in LOSS_ATTRIBUTES:
        assigned = loop.find(f"self.{name} = ")
        if assigned < 0 or begin < 0 or assigned > begin:
            problems.append(f"Trainer._inner_training_loop no longer sets self.{name} before on_train_begin")
    readers = "".join(_source(trainer_class, name) for name in LOSS_READERS)
    for name in LOSS_ATTRIBUTES:
        if f"self.{name}" not in readers:
            problems.append(f"no Trainer method of {', '.join(LOSS_READERS)} reads self.{name} any more")
    return problems


def _source(trainer_class, name: str) -> str:
    method = getattr(trainer_class, name, None)
    try:
        return inspect.getsource(method) if method is not None else ""
    except (OSError, TypeError):
        return ""


def problems_message(problems: list[str]) -> str:
    return (
        f"transformers {transformers.__version__} changed Trainer internals that "
        f"distill_trainer/training/trainer_internals.py relies on (read from transformers {TESTED_WITH}): "
        + "; ".join(problems)
        + ". Adapt trainer_internals.py to this release, or install transformers=="
        + TESTED_WITH
    )


@functools.cache
def warn_if_internals_changed() -> None:
    problems = internals_problems()
    if problems:
        logger.warning(problems_message(problems))
