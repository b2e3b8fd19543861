"""When the teacher reads another tokenizer than the student (full-vocabulary distillation of replies):
what the trainer and the reply recipes' validation refuse, and the line that says the path is taken."""

from __future__ import annotations

from distill_trainer.errors import UsageError

REASON = (
    "the teacher's tokenizer differs from the student's, so logit i does not mean the same token in both "
    "models: the cross-tokenizer loss is used (both tokenizations of each reply aligned by characters; "
    "the configured divergence over the shared vocabulary where the tokens match one to one, ULD's "
    "sorted-probability distance elsewhere)"
)


def check_cross_tokenizer_settings(args) -> None:
    """The settings a teacher with another tokenizer cannot serve, refused with the fix."""
    if args.teacher_output_cache:
        raise UsageError(
            "teacher_output_cache stores the teacher's top-k token ids at the student's reply tokens, which "
            "only mean something when both read one tokenizer; this teacher's tokenizer differs from the "
            "student's, so its signal must come from the live teacher: set teacher_output_cache: false"
        )
    if args.loss_top_k:
        raise UsageError(
            f"loss_top_k: {args.loss_top_k} compares the teacher's top-k token ids with the student's "
            "logits, which needs one tokenizer; this teacher's differs: set loss_top_k: 0"
        )
