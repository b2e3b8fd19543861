"""Where the teacher's signal comes from, decided once when the trainer is built: one object per source,
each giving the loss of a batch, the same function in training and in evaluation.

    signal = choose_teacher_signal(settings, teacher_loaded=..., outputs_cached=..., ...)  # the trainer
    loss, kd, ce, logits = signal.loss(model, batch, num_items_in_batch)

The sources:
- `GoldLabelsOnly`: no teacher (alpha=0, pattern-based fine-tuning): cross-entropy on the gold answer.
- `LiveFullVocabularyTeacher`: a loaded teacher, compared over the whole vocabulary (or its `loss_top_k`
  tokens plus the rest of its mass) at every answer token.
- `LiveCrossTokenizerTeacher`: a loaded teacher with another tokenizer, reading its own tokenization of
  each reply: the cross-tokenizer loss (`cross_tokenizer_loss.py`) at every student reply token.
- `LiveLabelWordTeacher`: a loaded teacher, compared over the label words at the first answer position.
- `CachedTeacherOutputs`: the teacher's outputs stored with the dataset (`teacher/output_cache.py`): top-k
  log-probabilities and tail mass (full vocabulary) or the label-word distribution.

The student's side follows `distill_vocab`. Full vocabulary: the final hidden states at the answer
positions, and the loss a chunk of positions at a time (`sequence_loss.py`), so no (batch, length,
vocabulary) tensor exists in training or in evaluation. Label words: the student's logits at the answer
positions (an answer is a label word, a token or a few), cross-entropy over them and the divergence at the
first one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from distill_trainer.errors import UsageError
from distill_trainer.models.output_head import output_head_removed
from distill_trainer.training.cross_tokenizer_loss import chunked_cross_tokenizer_loss
from distill_trainer.training.losses import (
    answer_cross_entropy,
    check_cached_token_ids,
    distillation_loss,
    restrict_to_label_words,
)
from distill_trainer.training.sequence_loss import chunked_sequence_loss
from distill_trainer.training.student_forward import student_answer_states
from distill_trainer.views.alignment_columns import ALIGNMENT_BATCH_KEYS, OWN_REPLIES

CACHED_TOP_K_KEYS = ("teacher_topk_logprobs", "teacher_topk_ids", "teacher_tail_logprob")
CACHED_LABEL_WORD_KEYS = ("teacher_label_logprobs",)
TEACHER_VIEW_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_answer_positions")


@dataclass(frozen=True)
class LossSettings:
    """The loss's settings, read once from a `DistillationConfig`."""

    alpha: float
    kind: str
    temperature: float
    beta: float
    distill_vocab: str
    top_k: int
    chunk_size: int
    unmatched: str = "reply_tokens"  # the cross-tokenizer loss's term at unmatched tokens
    share_prefix: bool = False  # run the batch's shared leading tokens once (training/student_forward.py)

    @classmethod
    def from_args(cls, args) -> LossSettings:
        return cls(
            alpha=args.alpha,
            kind=args.loss,
            temperature=args.temperature,
            beta=args.beta,
            distill_vocab=args.distill_vocab,
            top_k=args.loss_top_k,
            chunk_size=args.loss_chunk_size,
            unmatched=args.cross_tokenizer_unmatched,
            share_prefix=args.share_student_prefix,
        )


class LossTerms(NamedTuple):
    loss: torch.Tensor
    kd: torch.Tensor | None  # the distillation term (None without a teacher), for logging
    ce: torch.Tensor  # the cross-entropy term, for logging
    logits: torch.Tensor | None  # the student's answer logits where they were built (label words only)


class TeacherSignal:
    """A source of the teacher's signal. Subclasses give the teacher's side of the loss in the form
    `distill_vocab` asks for: `sequence_teacher` (full vocabulary) or `label_word_divergence`."""

    name = "teacher"

    def __init__(self, settings: LossSettings):
        self.settings = settings

    def required_keys(self) -> tuple[str, ...]:
        """The batch keys this source reads beside the student's view."""
        return ()

    def missing_hint(self, inputs) -> str:
        return "build every dataset the same way as the training dataset"

    def check_batch(self, inputs) -> None:
        missing = [key for key in self.required_keys() if key not in inputs]
        if missing:
            raise UsageError(
                f"a batch lacks {', '.join(missing)}, which the trainer's teacher signal ({self.name}, "
                f"chosen when the trainer was built) reads; {self.missing_hint(inputs)}"
            )

    def loss(self, model, inputs, num_items_in_batch=None) -> LossTerms:
        self.check_batch(inputs)
        if self.settings.distill_vocab == "full":
            return self._sequence_loss(model, inputs, num_items_in_batch)
        return self._label_word_loss(model, inputs, num_items_in_batch)

    # ---- the teacher's side, per form

    def sequence_teacher(self, inputs, student_head) -> dict:
        """`chunked_sequence_loss`'s teacher arguments ({} without a teacher)."""
        raise NotImplementedError(f"{self.name} has no full-vocabulary signal")

    def label_word_divergence(self, inputs, student_logits, mask, num_items_in_batch):
        """The distillation term over the label words (None without a teacher)."""
        raise NotImplementedError(f"{self.name} has no label-word signal")

    # ---- the student's side, per form

    def student_states(self, model, inputs) -> torch.Tensor:
        """The student's logits (or, head removed, final hidden states) at the answer positions."""
        ids, mask, positions = inputs["input_ids"], inputs["attention_mask"], inputs["answer_positions"]
        return student_answer_states(model, ids, mask, positions, self.settings.share_prefix)

    def _sequence_loss(self, model, inputs, num_items_in_batch) -> LossTerms:
        """Every answer token against the whole vocabulary: chunked, no (batch, length, vocab) tensor."""
        settings = self.settings
        with output_head_removed(model) as head:
            hidden = self.student_states(model, inputs)
        teacher = self.sequence_teacher(inputs, head)
        loss, kd, ce = chunked_sequence_loss(
            hidden,
            head,
            inputs["answer_mask"],
            answer_ids=inputs["answer_ids"],
            weights=(settings.alpha if teacher else 0.0, 1.0 - settings.alpha),
            kind=settings.kind,
            temperature=settings.temperature,
            beta=settings.beta,
            top_k=settings.top_k,
            chunk_size=settings.chunk_size,
            num_items_in_batch=num_items_in_batch,
            **teacher,
        )
        return LossTerms(loss, kd, ce, None)

    def _label_word_loss(self, model, inputs, num_items_in_batch) -> LossTerms:
        alpha, mask = self.settings.alpha, inputs["answer_mask"]
        student_logits = self.student_states(model, inputs)
        ce = answer_cross_entropy(student_logits, inputs["answer_ids"], mask, num_items_in_batch)
        loss = (1 - alpha) * ce if alpha < 1 else ce.new_zeros(())
        kd = self.label_word_divergence(inputs, student_logits, mask, num_items_in_batch)
        if kd is not None:
            loss = loss + alpha * kd
        return LossTerms(loss, kd, ce, student_logits)

    def _divergence_options(self, num_items_in_batch) -> dict:
        settings = self.settings
        return dict(
            kind=settings.kind,
            temperature=settings.temperature,
            beta=settings.beta,
            num_items_in_batch=num_items_in_batch,
        )


class GoldLabelsOnly(TeacherSignal):
    """No teacher (alpha=0): the gold answer's cross-entropy only."""

    name = "gold labels only"

    def sequence_teacher(self, inputs, student_head) -> dict:
        return {}

    def label_word_divergence(self, inputs, student_logits, mask, num_items_in_batch):
        return None


class _LiveTeacher(TeacherSignal):
    """A loaded teacher: it reads the teacher's view of every batch."""

    def required_keys(self) -> tuple[str, ...]:
        return TEACHER_VIEW_KEYS

    def missing_hint(self, inputs) -> str:
        return "build the dataset with both views (nli.data.build_view_dataset with demonstrations)"


class LiveFullVocabularyTeacher(_LiveTeacher):
    """A loaded teacher's final hidden states and output head at the teacher view's answer positions;
    `answer_hidden(inputs)` runs it (the trainer's `teacher_answer_hidden`)."""

    name = "live teacher, full vocabulary"

    def __init__(self, settings: LossSettings, answer_hidden):
        super().__init__(settings)
        self.answer_hidden = answer_hidden

    def sequence_teacher(self, inputs, student_head) -> dict:
        hidden, head = self.answer_hidden(inputs)
        return {"teacher_hidden": hidden, "teacher_head": head}


class LiveCrossTokenizerTeacher(LiveFullVocabularyTeacher):
    """A loaded teacher whose tokenizer differs from the student's: its hidden states at its own reply
    tokens, compared with the student's through the reply's alignment (`views/cross_tokenizer.py`)
    over `shared_vocabulary` (student ids, teacher ids) at exact matches, by ULD's distance elsewhere."""

    name = "live teacher, another tokenizer"

    def __init__(self, settings: LossSettings, answer_hidden, shared_vocabulary):
        super().__init__(settings, answer_hidden)
        self.shared_vocabulary = shared_vocabulary

    def required_keys(self) -> tuple[str, ...]:
        return TEACHER_VIEW_KEYS + ALIGNMENT_BATCH_KEYS

    def missing_hint(self, inputs) -> str:
        return (
            "the teacher reads another tokenizer, so each row needs the teacher's own tokenization of the "
            "reply and its alignment: build the rows with views.cross_tokenizer"
        )

    def _sequence_loss(self, model, inputs, num_items_in_batch) -> LossTerms:
        settings = self.settings
        with output_head_removed(model) as head:
            hidden = self.student_states(model, inputs)
        teacher_hidden, teacher_head = self.answer_hidden(inputs)
        loss, kd, ce = chunked_cross_tokenizer_loss(
            hidden,
            head,
            inputs["answer_mask"],
            teacher_hidden=teacher_hidden,
            teacher_head=teacher_head,
            teacher_pair_index=inputs["teacher_pair_index"],
            exact_match=inputs["exact_match"],
            shared_vocabulary=self.shared_vocabulary,
            answer_ids=inputs["answer_ids"],
            # a batch of the student's own rollouts carries OWN_REPLIES (rollouts.rebuild_batch)
            reply_is_teachers=OWN_REPLIES not in inputs,
            unmatched=settings.unmatched,
            weights=(settings.alpha, 1.0 - settings.alpha),
            kind=settings.kind,
            temperature=settings.temperature,
            beta=settings.beta,
            chunk_size=settings.chunk_size,
            num_items_in_batch=num_items_in_batch,
        )
        return LossTerms(loss, kd, ce, None)


class LiveLabelWordTeacher(_LiveTeacher):
    """A loaded teacher's logits at the answer positions, renormalised over its label words;
    `answer_logits(inputs)` runs it (the trainer's `teacher_answer_logits`)."""

    name = "live teacher, label words"

    def __init__(self, settings: LossSettings, answer_logits, label_token_ids, teacher_label_token_ids):
        super().__init__(settings)
        self.answer_logits = answer_logits
        self.label_token_ids = label_token_ids
        self.teacher_label_token_ids = teacher_label_token_ids

    def label_word_divergence(self, inputs, student_logits, mask, num_items_in_batch):
        # The verbalizer decides at the first answer position (column 0 of the positions holds it for every
        # row, see TwoViewCollator), so both models are compared there, over the label words only.
        # Normalising by the answer-token count keeps gradient accumulation exact; with single-token label
        # words (the usual case) that count is the number of examples.
        teacher_logits = self.answer_logits(inputs)
        return distillation_loss(
            restrict_to_label_words(student_logits[:, :1], self.label_token_ids),
            restrict_to_label_words(teacher_logits[:, :1], self.teacher_label_token_ids),
            torch.ones_like(mask[:, :1]),
            **self._divergence_options(num_items_in_batch),
        )


class CachedTeacherOutputs(TeacherSignal):
    """The teacher's outputs read from the dataset (teacher output cache): log-probabilities at the
    temperature the cache was built with (part of its key)."""

    name = "cached teacher outputs"

    def __init__(self, settings: LossSettings, label_token_ids=None):
        super().__init__(settings)
        self.label_token_ids = label_token_ids

    def required_keys(self) -> tuple[str, ...]:
        return CACHED_TOP_K_KEYS if self.settings.distill_vocab == "full" else CACHED_LABEL_WORD_KEYS

    def missing_hint(self, inputs) -> str:
        if self.settings.distill_vocab == "full" and all(k in inputs for k in CACHED_LABEL_WORD_KEYS):
            return "the cached outputs are label-word ones: rebuild the cache with distill_vocab=full"
        if self.settings.distill_vocab == "label_words" and all(k in inputs for k in CACHED_TOP_K_KEYS):
            return "the cached outputs are top-k ones: rebuild the cache with distill_vocab=label_words"
        return (
            "build every dataset with teacher_output_cache (output_cache.load_or_build_teacher_outputs), "
            "or pass teacher= and a dataset without cached outputs"
        )

    def sequence_teacher(self, inputs, student_head) -> dict:
        check_cached_token_ids(inputs["teacher_topk_ids"], student_head.module.weight.shape[0])
        return {"teacher_topk": tuple(inputs[key] for key in CACHED_TOP_K_KEYS)}

    def label_word_divergence(self, inputs, student_logits, mask, num_items_in_batch):
        return distillation_loss(
            restrict_to_label_words(student_logits[:, :1], self.label_token_ids),
            inputs["teacher_label_logprobs"][:, None],
            torch.ones_like(mask[:, :1]),
            teacher_is_logprobs=True,
            **self._divergence_options(num_items_in_batch),
        )


def choose_teacher_signal(
    settings: LossSettings,
    *,
    teacher_loaded: bool,
    outputs_cached: bool,
    answer_hidden=None,
    answer_logits=None,
    label_token_ids=None,
    teacher_label_token_ids=None,
    shared_vocabulary=None,
) -> TeacherSignal:
    """The source of the teacher's signal for a trainer: cached outputs when its training data carries
    them (they win over a loaded teacher, as they were computed to replace it), else the loaded teacher,
    else none (alpha=0). `shared_vocabulary` (student ids, teacher ids): the teacher reads another
    tokenizer (full vocabulary: the cross-tokenizer loss)."""
    if settings.alpha == 0:
        return GoldLabelsOnly(settings)
    if outputs_cached:
        return CachedTeacherOutputs(settings, label_token_ids)
    if not teacher_loaded:
        raise UsageError(
            f"alpha={settings.alpha} needs a teacher; pass teacher= (a model, a path or 'self'), or set "
            "alpha=0 for pattern-based fine-tuning"
        )
    if settings.distill_vocab == "full" and shared_vocabulary is not None:
        return LiveCrossTokenizerTeacher(settings, answer_hidden, shared_vocabulary)
    if settings.distill_vocab == "full":
        return LiveFullVocabularyTeacher(settings, answer_hidden)
    return LiveLabelWordTeacher(settings, answer_logits, label_token_ids, teacher_label_token_ids)
