"""`ContextDistillationTrainer`: a `transformers.Trainer` whose loss makes a prompt-stripped student
match a few-shot-prompted teacher on the answer tokens.

    trainer = ContextDistillationTrainer(model=student, teacher="self", args=DistillationConfig(...),
                                         train_dataset=views, data_collator=TwoViewCollator(pad_id))
    trainer.train()

Batches come from `TwoViewCollator`. Only the logits at answer positions are ever built (the models'
own `logits_to_keep` gathers the hidden states before the LM head), so a step never holds a
(batch, sequence, vocabulary) tensor for either model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections import defaultdict

import torch
from accelerate.utils import DistributedType
from transformers import Trainer

from distill_trainer.errors import NonFiniteLossError, UsageError
from distill_trainer.teacher.output_cache import has_teacher_outputs
from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits
from distill_trainer.teacher.teacher import Teacher, is_self
from distill_trainer.training.checkpoints import AtomicCheckpointMixin, last_complete_checkpoint
from distill_trainer.training.config import PACKING, DistillationConfig
from distill_trainer.training.cross_tokenizer import REASON, check_cross_tokenizer_settings
from distill_trainer.training.losses import require_answer_tokens
from distill_trainer.training.resumable_loss import ResumableTrainLossMixin
from distill_trainer.training.rollouts import OnPolicyMixin
from distill_trainer.training.teacher_outputs import TeacherOutputsMixin
from distill_trainer.training.teacher_signal import CachedTeacherOutputs, LossSettings, choose_teacher_signal
from distill_trainer.training.trainer_internals import TrainerInternalsMixin
from distill_trainer.views.alignment_columns import has_alignment_columns
from distill_trainer.views.cross_tokenizer import CrossTokenizerReplies, tokenizers_differ
from distill_trainer.views.vocabulary_map import vocabulary_tensors

logger = logging.getLogger(__name__)


class ContextDistillationTrainer(
    AtomicCheckpointMixin,
    ResumableTrainLossMixin,
    TeacherOutputsMixin,
    OnPolicyMixin,
    TrainerInternalsMixin,
    Trainer,
):
    """Trainer for context distillation (and, with `alpha=0` and no teacher, pattern-based fine-tuning).

    Args:
        teacher: a `teacher.teacher.Teacher`, a model, a Hub id / path / embedded alias (loaded with
            `args.teacher_*`), `"self"` for the student's own base model with its LoRA adapters disabled
            (no second copy of the weights), or None (only valid with alpha=0).
        label_token_ids: the student's verbalizer token ids (one per label, first token of each label
            word); needed for `distill_vocab="label_words"`.
        teacher_label_token_ids: the teacher's, when its tokenizer differs; defaults to `label_token_ids`.
        teacher_tokenizer: the teacher's tokenizer. With `distill_vocab="full"`, one that differs from
            `processing_class` (the student's) selects the cross-tokenizer loss: the datasets' rows must
            then come from `views.cross_tokenizer`.
        rollout_generator: what writes the student's replies at on-policy steps (`args.lmbda`), a
            `teacher.generation.ReplyGenerator`; default: the student itself, KV cache on.
    """

    # compute_loss divides by the answer-token count of the whole accumulated batch itself
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model=None,
        args: DistillationConfig | None = None,
        teacher=None,
        label_token_ids=None,
        teacher_label_token_ids=None,
        teacher_tokenizer=None,
        memory_tracker=None,
        teacher_ensemble=None,
        rollout_generator=None,
        **kwargs,
    ):
        if args is None or not isinstance(args, DistillationConfig):
            raise UsageError("ContextDistillationTrainer needs args=DistillationConfig(...)")
        teacher = teacher if teacher is not None else args.teacher_model_name_or_path
        if teacher_ensemble is not None and not (
            args.teacher_output_cache and args.distill_vocab == "label_words"
        ):
            raise UsageError(
                "a teacher ensembled over demonstration sets or calibrated is built from cached label-word "
                "outputs; set teacher_output_cache: true and distill_vocab: label_words"
            )
        if args.distill_vocab == "label_words" and label_token_ids is None and args.alpha > 0:
            raise UsageError("distill_vocab='label_words' needs label_token_ids (the verbalizer's token ids)")
        super().__init__(model=model, args=args, **kwargs)
        self._check_processes_are_connected()
        # makes the Trainer count answer tokens over the accumulated batch (num_items_in_batch)
        self.model_accepts_loss_kwargs = True
        self.label_token_ids = label_token_ids
        self.teacher_label_token_ids = (
            teacher_label_token_ids if teacher_label_token_ids is not None else label_token_ids
        )
        # phases "teacher_load" and "teacher_pass" are recorded here when a memory.MemoryTracker is given
        self._phase_tracker = memory_tracker
        self._phase = (
            memory_tracker.phase if memory_tracker is not None else lambda name: contextlib.nullcontext()
        )
        # what the teacher output cache did: {"path", "reused", "seconds"} per dataset (None without it)
        self.teacher_output_cache_info = None
        # more demonstration sets and/or their calibration (teacher.ensemble.TeacherEnsembleViews)
        self.teacher_ensemble = teacher_ensemble
        self._teacher_tokenizer = teacher_tokenizer
        self.teacher = self._teacher_from(teacher) if args.alpha > 0 else None
        # the reply's two tokenizations and shared vocabulary, when the teacher reads another tokenizer
        self.cross_tokenizer = self._cross_tokenizer_replies(teacher_tokenizer)
        if self.teacher is not None and args.teacher_output_cache:
            self._use_teacher_output_cache()  # loads the teacher only if some outputs are not cached yet
        elif self.teacher is not None:
            self._load_teacher()
        # where the teacher's signal comes from, decided once: a train_dataset carrying the teacher's
        # outputs (teacher/output_cache.py, or swapped in above) needs no teacher
        self.teacher_signal = choose_teacher_signal(
            self._loss_settings(),
            teacher_loaded=self.teacher is not None,
            outputs_cached=has_teacher_outputs(self.train_dataset),
            answer_hidden=lambda inputs: self.teacher_answer_hidden(inputs),
            answer_logits=lambda inputs: self.teacher_answer_logits(inputs),
            label_token_ids=self.label_token_ids,
            teacher_label_token_ids=self.teacher_label_token_ids,
            shared_vocabulary=(
                vocabulary_tensors(self.cross_tokenizer.pairs) if self.cross_tokenizer is not None else None
            ),
        )
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._init_rollouts(rollout_generator)

    def _loss_settings(self) -> LossSettings:
        """The loss's settings; the student's shared-prefix forward only where one forward per step is not
        expected: a single process (DDP, DeepSpeed and FSDP hook the forward) and no gradient
        checkpointing (which turns the key/value cache off)."""
        settings = LossSettings.from_args(self.args)
        plain = self.accelerator.num_processes == 1 and not self.args.gradient_checkpointing
        plain = plain and self.accelerator.distributed_type in (DistributedType.NO, DistributedType.MULTI_CPU)
        return dataclasses.replace(settings, share_prefix=settings.share_prefix and plain)

    def _check_processes_are_connected(self) -> None:
        """Launched processes that do not join one process group would each train alone on all the data
        and overwrite each other's outputs. On a machine without GPUs this is what a multi-GPU accelerate
        config (or torchrun) does unless the recipe says use_cpu: true."""
        launched = int(os.environ.get("WORLD_SIZE") or 1)
        if launched > 1 and self.accelerator.num_processes == 1:
            raise UsageError(
                f"{launched} processes were launched but they did not join one process group, so each "
                "would train alone and overwrite the others' outputs; without GPUs set use_cpu: true "
                "(--use_cpu true) to train them together over gloo, or launch a single process"
            )

    def _cross_tokenizer_replies(self, teacher_tokenizer) -> CrossTokenizerReplies | None:
        """The cross-tokenizer path's tokenizer pair, taken when a separate teacher's tokenizer differs from
        the student's under a full-vocabulary loss; None otherwise (label words compare across tokenizers
        by themselves)."""
        if self.teacher is None or self.teacher.is_self or self.args.distill_vocab != "full":
            return None
        if not tokenizers_differ(self.processing_class, teacher_tokenizer):
            return None
        check_cross_tokenizer_settings(self.args)
        if not has_alignment_columns(self.train_dataset):
            raise UsageError(
                "the teacher's tokenizer differs from the student's and distill_vocab is 'full', but the "
                "training rows carry one tokenization only: the cross-tokenizer loss needs each reply in "
                "both (views.cross_tokenizer, as distill_context and distill_document build them); for "
                "classification set distill_vocab: label_words, which compares the label words across "
                "tokenizers"
            )
        logger.info("%s", REASON)
        return CrossTokenizerReplies(self.processing_class, teacher_tokenizer)

    def _teacher_from(self, teacher) -> Teacher | None:
        """A `Teacher` for what `teacher=` named (nothing is loaded yet), running with this run's settings."""
        if teacher is None:
            return None
        if not isinstance(teacher, Teacher):
            if is_self(teacher):
                teacher = Teacher.for_model(self.model, teacher)
            elif isinstance(teacher, str):
                teacher = Teacher.from_source(
                    teacher,
                    self.args.teacher_dtype,
                    self.args.teacher_quantization,
                    process_index=self.accelerator.local_process_index,
                )
            else:
                teacher = Teacher.for_model(teacher, "teacher")
        teacher.runner = TeacherAnswerLogits(
            use_prefix_cache=self.args.teacher_prefix_cache, pack=PACKING[self.args.teacher_pack_queries]
        )
        return teacher

    def _load_teacher(self) -> None:
        """The teacher loaded (a memory phase of its own), checked against the student and placed."""
        with self._phase("teacher_load"):
            self.teacher.place(self.accelerator, self.args.device)
            if self.args.distill_vocab == "full" and self.cross_tokenizer is None:
                self.teacher.check_vocabulary(self.model, self.processing_class, self._teacher_tokenizer)

    def teacher_answer_logits(self, inputs) -> torch.Tensor:
        """The teacher's logits at the answer positions of the teacher view (batch, answer_len, vocab); with
        a shared demonstration prefix in the batch (and teacher_prefix_cache) only the queries run."""
        return self.teacher.answer_logits(inputs)

    def teacher_answer_hidden(self, inputs):
        """(the teacher's final hidden states at the teacher view's answer positions, its output head)."""
        return self.teacher.answer_hidden(inputs)

    @property
    def teacher_from_cache(self) -> bool:
        """Whether the teacher's signal is read from the datasets (teacher output cache), not a live one."""
        return isinstance(self.teacher_signal, CachedTeacherOutputs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The loss of `teacher_signal` (chosen when the trainer was built), the same in training and in
        evaluation; with `return_outputs`, the student's answer logits where they were built (label words)."""
        n_local = int(inputs["answer_mask"].sum())
        require_answer_tokens(n_local)
        loss, kd, ce, student_logits = self.teacher_signal.loss(model, inputs, num_items_in_batch)
        # num_items_in_batch counts answer tokens over the accumulated batch and, when averaging across
        # devices, over all processes: DDP then averages gradients, so scale back by the process count
        scale = 1.0
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            scale = float(self.accelerator.num_processes)
        loss = self._guard_finite(loss * scale)
        self._log_terms(kd, ce, num_items_in_batch, n_local, scale)
        if not return_outputs:
            return loss
        return loss, ({"logits": student_logits} if student_logits is not None else {})

    def _guard_finite(self, loss):
        """Stop (or skip the batch) on a NaN/inf loss: one bad step would poison every weight after it."""
        if not self.model.training or bool(torch.isfinite(loss)):
            return loss
        step = self.state.global_step + 1
        if self.args.skip_nonfinite_loss:
            logger.warning("non-finite loss at step %d: batch skipped (skip_nonfinite_loss=true)", step)
            self._metrics["train"]["skipped_batches"].append(1.0)
            # Detached from the model, so backward leaves every gradient None and the optimizer skips the
            # parameters outright: no momentum or weight-decay update for this step (tested). Limits: with
            # gradient accumulation the other micro-batches of the step still update; in a multi-process
            # run the other processes would wait for this one's gradients, so stop there instead.
            if self.accelerator.num_processes > 1:
                raise NonFiniteLossError(
                    f"the loss is {float(loss.detach())} at step {step}; skip_nonfinite_loss works in "
                    "single-process runs only; lower the learning rate or use float32"
                )
            return loss.new_zeros((), requires_grad=True)
        output_dir = self.args.output_dir
        last = last_complete_checkpoint(output_dir) if output_dir else None
        raise NonFiniteLossError(
            f"the loss is {float(loss.detach())} at step {step}; training stopped before updating the "
            f"weights (last good checkpoint: {last or 'none'}). Lower the learning rate, use float32, or set "
            "skip_nonfinite_loss: true to skip such batches"
        )

    # ---- logging ----

    def _log_terms(self, kd, ce, num_items_in_batch, n_local, scale):
        mode = "train" if self.model.training else "eval"
        # Each term is (this process's sum over answer tokens) / denominator; recover the sums, add them up
        # over the processes, and log the per-token mean of the micro-batch over all of them, which is what
        # a 1-process run with the same global batch logs (rank 0's share alone would be noisier and biased).
        denominator = n_local if num_items_in_batch is None else float(num_items_in_batch)
        terms = {"ce_loss": ce} if kd is None else {"ce_loss": ce, "kd_loss": kd}
        sums = torch.tensor(
            [float(t.detach()) * denominator for t in terms.values()] + [float(n_local)],
            device=self.accelerator.device,
        )
        if self.accelerator.num_processes > 1:
            sums = self.accelerator.reduce(sums, reduction="sum")
        for name, total in zip(terms, sums[:-1].tolist()):
            self._metrics[mode][name].append(total / float(sums[-1]))

    def log(self, logs: dict, *args, **kwargs) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, *args, **kwargs)
