"""On-policy context distillation: the student writes the replies it is graded on.

    config = DistillationConfig(..., lmbda=1.0, loss="reverse_kl")   # every step on-policy
    trainer = ContextDistillationTrainer(model=student, teacher="self", args=config, ...)

At an on-policy step, each row's prompt is cut out of its student view (no context), the student
samples a reply from its current weights (`rollout_*` settings, seeded by the run's seed and the step, so
a rerun or a resume repeats it), and the batch is rebuilt with that reply in both views: the teacher reads
the context, the prompt and the student's reply, and the loss is taken at every reply token. Everything
else (the prefix KV cache over the shared context, the chunked loss, gradient accumulation's token count)
works as for the dataset's replies, because the rebuilt batch is an ordinary two-view batch.

`lmbda` (GKD's name) is the share of optimizer steps that are on-policy; step i is on-policy when
floor((i + 1) * lmbda) > floor(i * lmbda), so any run of steps uses each source at the configured rate
(to within one step), deterministically, rather than by a coin flip per step.

Replies come from a `teacher.generation.ReplyGenerator` (prompts in, token ids out): by default the
student itself through the KV-cached loop; a served engine can be passed as `rollout_generator` (see
docs/context-distillation.md).
"""

from __future__ import annotations

import math

import torch

from distill_trainer.errors import UsageError
from distill_trainer.teacher.generation import GenerationSettings, HFGenerator
from distill_trainer.training.trainer_internals import count_items_in_batch
from distill_trainer.views.alignment_columns import OWN_REPLIES
from distill_trainer.views.chat import stop_token_ids
from distill_trainer.views.cross_tokenizer import cross_tokenizer_row
from distill_trainer.views.text import two_view_row


def is_on_policy_step(step: int, lmbda: float) -> bool:
    """Whether optimizer step `step` (0-based) takes the student's replies."""
    return math.floor((step + 1) * lmbda + 1e-9) > math.floor(step * lmbda + 1e-9)


def rollout_settings(args, step: int, process_index: int = 0) -> GenerationSettings:
    """The sampling settings of one step's rollouts; the seed differs per step and per process."""
    return GenerationSettings(
        max_new_tokens=args.rollout_max_new_tokens,
        do_sample=args.rollout_do_sample,
        temperature=args.rollout_temperature,
        top_p=args.rollout_top_p,
        seed=(args.seed * 1_000_003 + step) * 64 + process_index,
    )


def _prompt(ids: torch.Tensor, mask: torch.Tensor, first_answer_position: int) -> list[int]:
    """A view's prompt: its real tokens up to the one that predicts the first answer token."""
    end = first_answer_position + 1
    return ids[:end][mask[:end].bool()].tolist()


def batch_prompts(batch: dict) -> tuple[list[list[int]], list[list[int]], int]:
    """(student prompts, teacher prompts, shared teacher prefix length) of a collated two-view batch."""
    width = batch["answer_mask"].shape[1]
    # a teacher with another tokenizer has its own reply tokens, with their own mask
    teacher_mask = batch.get("teacher_answer_mask", batch["answer_mask"])
    teacher_width = teacher_mask.shape[1]
    students, teachers = [], []
    counts = zip(batch["answer_mask"].sum(-1).tolist(), teacher_mask.sum(-1).tolist())
    for row, (n, n_teacher) in enumerate(counts):
        first = width - int(n)  # answers are right-aligned
        students.append(
            _prompt(
                batch["input_ids"][row],
                batch["attention_mask"][row],
                int(batch["answer_positions"][row, first]),
            )
        )
        teachers.append(
            _prompt(
                batch["teacher_input_ids"][row],
                batch["teacher_attention_mask"][row],
                int(batch["teacher_answer_positions"][row, teacher_width - int(n_teacher)]),
            )
        )
    shared = batch["teacher_prefix_ids"].shape[1] if "teacher_prefix_ids" in batch else 0
    return students, teachers, shared


def common_prefix_length(prompts: list[list[int]]) -> int:
    """Leading ids every prompt shares, leaving each at least one id of its own."""
    length = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for prompt in prompts[1:]:
        while length > 0 and prompt[:length] != first[:length]:
            length -= 1
    return max(length, 0)


def rebuild_batch(batch: dict, replies: list[list[int]], collator, cross_tokenizer=None) -> dict:
    """The batch with each row's answer replaced by `replies` in both views; with `cross_tokenizer` (a
    `views.cross_tokenizer.CrossTokenizerReplies`) the teacher reads its own tokenization of each reply."""
    students, teachers, shared = batch_prompts(batch)
    if cross_tokenizer is None:
        features = [two_view_row(s, t, reply, shared) for s, t, reply in zip(students, teachers, replies)]
    else:
        features = [
            cross_tokenizer_row(s, t, cross_tokenizer.from_student_ids(reply), shared)
            for s, t, reply in zip(students, teachers, replies)
        ]
    rebuilt = collator(features)
    if cross_tokenizer is not None:
        rebuilt[OWN_REPLIES] = torch.ones(len(features), dtype=torch.bool)
    device = batch["input_ids"].device
    return {key: value.to(device) for key, value in rebuilt.items()}


def check_on_policy_settings(args) -> None:
    """What on-policy steps (lmbda > 0) cannot work with, refused before anything runs."""
    if args.lmbda == 0:
        return
    if args.teacher_output_cache:
        raise UsageError(
            f"lmbda={args.lmbda} grades the student's own replies, which no cache can hold in advance; set "
            "teacher_output_cache: false (or lmbda: 0 for the teacher's replies only)"
        )
    if args.distill_vocab != "full" or args.alpha == 0:
        raise UsageError(
            "on-policy distillation (lmbda > 0) grades every reply token: it needs distill_vocab: full and "
            "alpha > 0"
        )


class OnPolicyMixin:
    """`get_batch_samples` that swaps in the student's replies at on-policy steps (`lmbda`), before the
    Trainer counts the answer tokens of the accumulated batch."""

    def _init_rollouts(self, rollout_generator=None) -> None:
        self.rollout_generator = rollout_generator
        self.rollout_steps: list[tuple[int, str]] = []  # (optimizer step, "student" | "dataset")
        if self.args.lmbda == 0:
            return
        check_on_policy_settings(self.args)
        tokenizer = self.processing_class
        if tokenizer is None or getattr(tokenizer, "pad_token_id", None) is None:
            raise UsageError(
                "on-policy distillation needs processing_class=<the tokenizer, with a pad token>"
            )
        # a teacher with another tokenizer reads each rollout re-tokenized (`self.cross_tokenizer`)
        try:
            self._stop_ids = stop_token_ids(tokenizer)
        except UsageError:  # no chat template: the EOS token ends a reply
            self._stop_ids = [tokenizer.eos_token_id]

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, count = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.args.lmbda == 0 or not batches:
            return batches, count
        step = self.state.global_step
        on_policy = is_on_policy_step(step, self.args.lmbda)
        self.rollout_steps.append((step, "student" if on_policy else "dataset"))
        self._metrics["train"]["on_policy"].append(float(on_policy))
        if not on_policy:
            return batches, count
        settings = rollout_settings(self.args, step, self.accelerator.process_index)
        batches = [self._student_rollout(batch, settings) for batch in batches]
        return batches, count_items_in_batch(self, batches, device)

    def _student_rollout(self, batch: dict, settings: GenerationSettings) -> dict:
        students, _, _ = batch_prompts(batch)
        model = self.accelerator.unwrap_model(self.model)
        generate = self.rollout_generator or HFGenerator(
            model, self._stop_ids, self.processing_class.pad_token_id, batch_size=len(students)
        )
        was_training = model.training
        model.eval()  # no dropout while it writes
        try:
            replies = generate(students, settings, prefix_length=common_prefix_length(students))
        finally:
            model.train(was_training)
        if not replies or any(not reply for reply in replies):
            raise UsageError(
                "the rollout generator returned an empty reply; it must return at least one token"
            )
        cut = sum(reply[-1] not in self._stop_ids for reply in replies)
        self._metrics["train"]["rollout_tokens"].append(sum(map(len, replies)) / len(replies))
        self._metrics["train"]["rollout_cut_off"].append(cut / len(replies))
        return rebuild_batch(batch, replies, self.data_collator, getattr(self, "cross_tokenizer", None))
