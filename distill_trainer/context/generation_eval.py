"""Measuring a model on a context it should have absorbed: its replies, the share that follow a checkable
rule, and its token-level KL to the teacher on the teacher's own completions.

    replies = generate_for_rows(student, tokenizer, rows, settings, with_context=False)
    rate = rule_following([r["text"] for r in replies], "python_function")   # rate, stderr, failures
    kl = completion_kl(student, teacher, views, TwoViewCollator(tokenizer.pad_token_id))   # a Teacher
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from distill_trainer.context.reply_checks import get_checker
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.output_head import output_head_removed
from distill_trainer.teacher.generation import GenerationSettings, HFGenerator
from distill_trainer.training.losses import token_divergence
from distill_trainer.views.chat import chat_prompt_ids, shared_prefix_length, stop_token_ids


def generate_for_rows(
    model,
    tokenizer,
    rows: list[dict],
    settings: GenerationSettings,
    *,
    placement: str = "system",
    with_context: bool = False,
    batch_size: int = 8,
    progress: str | None = None,
) -> list[dict]:
    """{"text", "ids"} per row: the model's reply to the prompt, with or without the row's context."""
    prompts, prefix = [], 0
    for row in rows:
        context = row["context"] if with_context else ""
        prompts.append(chat_prompt_ids(tokenizer, row["prompt"], context, placement))
    contexts = {row["context"] for row in rows}
    if with_context and len(contexts) == 1:
        prefix = shared_prefix_length(tokenizer, contexts.pop(), placement)
    elif not with_context:  # the template's own opening (a default system prompt) is shared too
        prefix = shared_prefix_length(tokenizer, "", placement)
    generate = HFGenerator(
        model, stop_token_ids(tokenizer), tokenizer.pad_token_id, batch_size=batch_size, progress=progress
    )
    replies = generate(prompts, settings, prefix_length=prefix)
    return [{"ids": ids, "text": tokenizer.decode(ids, skip_special_tokens=True)} for ids in replies]


CUT_OFF = "cut off at max_new_tokens"


def rule_following(
    replies: list[str], checker: str, cut_off: list[bool] | None = None
) -> tuple[dict, list[dict]]:
    """({n, passed, rate, stderr, failures by reason, cut_off}, [{passed, reason}] per reply).

    `cut_off` (per reply: it hit the token limit without its stop token) counts such a reply that fails
    the check apart, as "cut off at max_new_tokens": it may have been on its way to following the rule."""
    check = get_checker(checker)
    results = [dict(zip(("passed", "reason"), check(reply))) for reply in replies]
    for result, cut in zip(results, cut_off or []):
        if cut and not result["passed"]:
            result["reason"] = CUT_OFF
    n = len(results)
    passed = sum(r["passed"] for r in results)
    rate = passed / n if n else float("nan")
    summary = {
        "checker": checker,
        "n": n,
        "passed": passed,
        "rate": rate,
        # binomial standard error of the rate
        "stderr": math.sqrt(rate * (1 - rate) / n) if n else float("nan"),
        "failures": dict(Counter(r["reason"] for r in results if not r["passed"]).most_common()),
        "cut_off": sum(r["reason"] == CUT_OFF for r in results),
        "broke_rule": sum(not r["passed"] and r["reason"] != CUT_OFF for r in results),
    }
    return summary, results


@torch.no_grad()
def completion_kl(
    student, teacher, views, collator, batch_size: int = 4, progress=None, chunk_size: int = 256
) -> dict:
    """KL(teacher || student) per completion token, over the whole vocabulary, on `views` (chat views of
    the teacher's completions): the teacher (a `teacher.teacher.Teacher`) reads the context, the student
    does not. Both models return hidden states and their logits are built `chunk_size` positions at a
    time, so no (batch, reply length, vocabulary) tensor exists (0: the whole batch at once).

    Returns the token-weighted mean, and the mean and standard error over examples of each example's
    mean (examples, not tokens, are the independent draws)."""
    was_training = student.training
    student.eval()
    totals, counts = [], []
    starts = range(0, len(views), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch")
    device = next(student.parameters()).device
    try:
        for start in starts:
            batch = collator([views[i] for i in range(start, min(start + batch_size, len(views)))])
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with output_head_removed(student) as head:
                hidden = answer_logits(
                    student, batch["input_ids"], batch["attention_mask"], batch["answer_positions"]
                )
            teacher_hidden, teacher_head = teacher.answer_hidden(batch)
            kl = _token_kl(hidden, head, teacher_hidden, teacher_head, chunk_size) * batch["answer_mask"]
            totals += kl.sum(-1).tolist()
            counts += batch["answer_mask"].sum(-1).tolist()
    finally:
        student.train(was_training)
    per_example = [t / c for t, c in zip(totals, counts)]
    n = len(per_example)
    mean = sum(per_example) / n
    variance = sum((x - mean) ** 2 for x in per_example) / (n - 1) if n > 1 else float("nan")
    return {
        "n": n,
        "tokens": int(sum(counts)),
        "kl_per_token": sum(totals) / sum(counts),
        "kl_example_mean": mean,
        "kl_example_stderr": math.sqrt(variance / n),
    }


def _token_kl(hidden, head, teacher_hidden, teacher_head, chunk_size: int) -> torch.Tensor:
    """(batch, length) KL(teacher || student) from both models' hidden states at the same positions,
    applying each output head to a few positions (`chunk_size` over the batch) at a time."""
    width = hidden.shape[1] if chunk_size <= 0 else max(1, chunk_size // hidden.shape[0])
    kl = torch.zeros(hidden.shape[:2], dtype=torch.float32, device=hidden.device)
    for start in range(0, hidden.shape[1], width):
        part = slice(start, start + width)
        student_logprobs = F.log_softmax(head(hidden[:, part]).float(), -1)
        teacher_logits = teacher_head(teacher_hidden[:, part]).to(student_logprobs.device)
        teacher_logprobs = F.log_softmax(teacher_logits.float(), -1)
        kl[:, part] = token_divergence(student_logprobs, teacher_logprobs)
    return kl


def reply_records(rows: list[dict], result: dict) -> list[dict]:
    """One JSON-ready record per held-out row: prompt, context, each model's reply and its check."""
    records = []
    for i, row in enumerate(rows):
        record = {"prompt": row["prompt"], "context": row["context"]}
        for key, value in result.items():
            record[key] = value["replies"][i]
            if "checks" in value:
                record[f"{key}_check"] = value["checks"][i]
        records.append(record)
    return records
