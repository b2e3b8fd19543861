"""The dataset columns that carry a teacher's cached outputs: written by output_cache.py, batched by the
collator (views.py), read by the trainer's loss. Kept apart so the collator needs nothing from the cache."""

# per answer token: the top-k log-probabilities of the full vocabulary, their ids, the log of the tail mass
PER_ANSWER_TOKEN_TEACHER_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs", "teacher_tail_logprob")
# per example: the label-word distribution at the first answer position
PER_EXAMPLE_TEACHER_COLUMNS = ("teacher_label_logprobs",)
TEACHER_OUTPUT_COLUMNS = PER_ANSWER_TOKEN_TEACHER_COLUMNS + PER_EXAMPLE_TEACHER_COLUMNS
