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

import logging
import os
from collections import defaultdict

import torch
from transformers import Trainer
from transformers.trainer_utils import get_last_checkpoint

from .config import DistillationConfig
from .errors import NonFiniteLossError, UsageError
from .losses import answer_cross_entropy, distillation_loss
from .models import check_same_vocabulary, load_causal_lm

logger = logging.getLogger(__name__)


def answer_logits(model, input_ids, attention_mask, positions, **forward_kwargs) -> torch.Tensor:
    """Logits (batch, answer_len, vocab) at the given per-row positions, never the full sequence's.

    Position ids come from the attention mask, so left padding gives the same numbers as none.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    outputs = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=positions,
        use_cache=False,
        **forward_kwargs,
    )
    return outputs.logits


class ContextDistillationTrainer(Trainer):
    """Trainer for context distillation (and, with `alpha=0` and no teacher, pattern-based fine-tuning).

    Args:
        teacher: a model, a Hub id / path / embedded alias (loaded with `args.teacher_*`), `"self"` for the
            student's own base model with its LoRA adapters disabled (no second copy of the weights), or
            None (only valid with alpha=0).
        label_token_ids: the student's verbalizer token ids (one per label, first token of each label
            word); needed for `distill_vocab="label_words"`.
        teacher_label_token_ids: the teacher's, when its tokenizer differs; defaults to `label_token_ids`.
    """

    # compute_loss divides by the answer-token count of the whole accumulated batch itself
    loss_is_scaled_for_ga = True

    def __init__(self, model=None, args: DistillationConfig | None = None, teacher=None, label_token_ids=None,
                 teacher_label_token_ids=None, teacher_tokenizer=None, **kwargs):
        if args is None or not isinstance(args, DistillationConfig):
            raise UsageError("ContextDistillationTrainer needs args=DistillationConfig(...)")
        teacher = teacher if teacher is not None else args.teacher_model_name_or_path
        if teacher is None and args.alpha > 0:
            raise UsageError(
                f"alpha={args.alpha} needs a teacher; pass teacher= (a model, a path or 'self'), or set alpha=0 "
                "for pattern-based fine-tuning"
            )
        if args.distill_vocab == "label_words" and label_token_ids is None and args.alpha > 0:
            raise UsageError("distill_vocab='label_words' needs label_token_ids (the verbalizer's token ids)")
        super().__init__(model=model, args=args, **kwargs)
        # makes the Trainer count answer tokens over the accumulated batch (num_items_in_batch)
        self.model_accepts_loss_kwargs = True
        self.label_token_ids = label_token_ids
        self.teacher_label_token_ids = teacher_label_token_ids if teacher_label_token_ids is not None else label_token_ids
        self.teacher = self._setup_teacher(teacher, teacher_tokenizer)
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}

    # ---- teacher ----

    def _setup_teacher(self, teacher, teacher_tokenizer):
        if teacher is None or self.args.alpha == 0:
            return None
        if teacher == "self":
            if not hasattr(self.model, "disable_adapter"):
                raise UsageError(
                    "teacher='self' needs a LoRA student (student_mode=lora): the teacher is the base model with "
                    "the adapters switched off"
                )
            return "self"
        if isinstance(teacher, str):
            device_map = {"": self.accelerator.local_process_index} if torch.cuda.is_available() else None
            teacher = load_causal_lm(teacher, dtype=self.args.teacher_dtype,
                                     quantization=self.args.teacher_quantization, device_map=device_map)
        if self.args.distill_vocab == "full":
            check_same_vocabulary(self.model, teacher, self.processing_class, teacher_tokenizer)
        teacher.eval()
        teacher.requires_grad_(False)
        if not getattr(teacher, "is_loaded_in_8bit", False) and not getattr(teacher, "is_loaded_in_4bit", False):
            teacher = teacher.to(self.args.device)
        return teacher

    @torch.no_grad()
    def teacher_answer_logits(self, model, inputs) -> torch.Tensor:
        """The teacher's logits at the answer positions of the teacher view (batch, answer_len, vocab)."""
        args = (inputs["teacher_input_ids"], inputs["teacher_attention_mask"], inputs["teacher_answer_positions"])
        if self.teacher == "self":
            with self.accelerator.unwrap_model(model).disable_adapter():
                return answer_logits(model, *args)
        return answer_logits(self.teacher, *args)

    # ---- loss ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mask = inputs["answer_mask"]
        n_local = int(mask.sum())
        if n_local == 0:
            raise UsageError("a batch has no answer tokens; every example needs a non-empty answer")
        student_logits = answer_logits(model, inputs["input_ids"], inputs["attention_mask"], inputs["answer_positions"])
        # num_items_in_batch counts answer tokens over the accumulated batch and, when averaging across
        # devices, over all processes: DDP then averages gradients, so scale back by the process count
        scale = 1.0
        if num_items_in_batch is not None and self.args.average_tokens_across_devices:
            scale = float(self.accelerator.num_processes)
        ce = answer_cross_entropy(student_logits, inputs["answer_ids"], mask, num_items_in_batch)
        loss = (1 - self.args.alpha) * ce if self.args.alpha < 1 else ce.new_zeros(())
        kd = None
        if self.teacher is not None:
            kd = self._distillation_term(model, inputs, student_logits, mask, num_items_in_batch)
            loss = loss + self.args.alpha * kd
        loss = self._guard_finite(loss * scale)
        self._log_terms(kd, ce, num_items_in_batch, n_local, scale)
        return (loss, {"logits": student_logits}) if return_outputs else loss

    def _distillation_term(self, model, inputs, student_logits, mask, num_items_in_batch):
        teacher_logits = self.teacher_answer_logits(model, inputs)
        if self.args.distill_vocab == "label_words":
            # The verbalizer decides at the first answer position (column 0 of the positions holds it for
            # every row, see TwoViewCollator), so both models are compared there, over the label words
            # only. Normalising by the answer-token count keeps gradient accumulation exact; with
            # single-token label words (the usual case) that count is the number of examples.
            first = torch.ones_like(mask[:, :1])
            student_ids = torch.as_tensor(self.label_token_ids, device=mask.device)
            teacher_ids = torch.as_tensor(self.teacher_label_token_ids, device=mask.device)
            return distillation_loss(
                student_logits[:, :1].index_select(-1, student_ids),
                teacher_logits[:, :1].index_select(-1, teacher_ids),
                first, kind=self.args.loss, temperature=self.args.temperature, beta=self.args.beta,
                num_items_in_batch=num_items_in_batch,
            )
        return distillation_loss(student_logits, teacher_logits, mask, kind=self.args.loss,
                                 temperature=self.args.temperature, beta=self.args.beta,
                                 num_items_in_batch=num_items_in_batch)

    def _guard_finite(self, loss):
        """Stop (or skip the batch) on a NaN/inf loss: one bad step would poison every weight after it."""
        if not self.model.training or bool(torch.isfinite(loss)):
            return loss
        step = self.state.global_step + 1
        if self.args.skip_nonfinite_loss:
            logger.warning("non-finite loss at step %d: batch skipped (skip_nonfinite_loss=true)", step)
            self._metrics["train"]["skipped_batches"].append(1.0)
            return loss.new_zeros((), requires_grad=True)
        output_dir = self.args.output_dir
        last = get_last_checkpoint(output_dir) if output_dir and os.path.isdir(output_dir) else None
        raise NonFiniteLossError(
            f"the loss is {float(loss.detach())} at step {step}; training stopped before updating the weights "
            f"(last good checkpoint: {last or 'none'}). Lower the learning rate, use float32, or set "
            "skip_nonfinite_loss: true to skip such batches"
        )

    # ---- logging ----

    def _log_terms(self, kd, ce, num_items_in_batch, n_local, scale):
        mode = "train" if self.model.training else "eval"
        # undo the accumulated-batch normalisation so the logged value is this batch's per-token mean
        factor = 1.0 if num_items_in_batch is None else float(num_items_in_batch) / n_local
        self._metrics[mode]["ce_loss"].append(float(ce.detach()) * factor)
        if kd is not None:
            self._metrics[mode]["kd_loss"].append(float(kd.detach()) * factor)

    def log(self, logs: dict, *args, **kwargs) -> None:
        mode = "train" if self.model.training else "eval"
        prefix = "eval_" if mode == "eval" else ""
        for key, values in self._metrics[mode].items():
            if values:
                logs[prefix + key] = sum(values) / len(values)
        self._metrics[mode].clear()
        super().log(logs, *args, **kwargs)
