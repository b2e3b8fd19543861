"""Two views of one chat example: the teacher's prompt holds a context (a system prompt, a document, a
privileged hint), the student's does not; both end with the same completion token ids.

    row = build_chat_views(tokenizer, "Write a function that adds two numbers.", completion,
                           context="Answer with one Python function with type hints and a docstring.")

The columns are those of `views.build_views`, so `TwoViewCollator`, `ContextDistillationTrainer`, the
teacher prefix KV cache and the teacher output cache take these rows unchanged.

Each prompt goes through the tokenizer's chat template with `add_generation_prompt=True`, the completion
is tokenized on its own, and the ids are concatenated. Tokenizing the templated conversation with the
answer inside would let the template and the tokenizer decide the completion's tokens differently in the
two views; concatenating ids keeps them identical, which is what the loss compares. The completion ends
with the template's end-of-turn token, so the student also learns where the teacher stops.
"""

from __future__ import annotations

from distill_trainer.errors import UsageError
from distill_trainer.views.text import two_view_row

# where the teacher reads the context: as the system message, or before the prompt in the user turn
# (for templates without a system role, or models that follow a system prompt poorly)
CONTEXT_PLACEMENTS = ("system", "user")
USER_SEPARATOR = "\n\n"
# two prompts that share no first character: the teacher-prompt prefix they share is the context's part
_PROBES = ("Alpha probe", "Zulu probe")


def _check_template(tokenizer) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise UsageError(
            f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; use an "
            "instruction-tuned (chat) model, or set tokenizer.chat_template"
        )


def _messages(prompt: str, context: str, placement: str) -> list[dict]:
    if placement not in CONTEXT_PLACEMENTS:
        raise UsageError(
            f"context_placement={placement!r} is not valid; choose one of: {', '.join(CONTEXT_PLACEMENTS)}"
        )
    if not context:
        return [{"role": "user", "content": prompt}]
    if placement == "user":
        return [{"role": "user", "content": context + USER_SEPARATOR + prompt}]
    return [{"role": "system", "content": context}, {"role": "user", "content": prompt}]


def _ids(tokenizer, text: str) -> list[int]:
    # the template's text spells out its special tokens (and any BOS) itself: add none
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def chat_prompt_ids(tokenizer, prompt: str, context: str = "", placement: str = "system") -> list[int]:
    """Token ids of the templated prompt, up to where the assistant's reply starts."""
    _check_template(tokenizer)
    messages = _messages(prompt, context, placement)
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as error:  # jinja raises its own types (e.g. "System role not supported")
        hint = "set context_placement: user" if placement == "system" and context else "check the template"
        raise UsageError(f"the chat template rejected the conversation ({error}); {hint}") from None
    return _ids(tokenizer, text)


def end_of_turn_ids(tokenizer) -> list[int]:
    """The ids that close an assistant turn in this template (ChatML's <|im_end|>, Llama 3's <|eot_id|>):
    what the template writes right after an assistant message, up to whitespace; else the EOS token."""
    _check_template(tokenizer)
    marker = "XQXQ"
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:
        text = ""
    after = text.rsplit(marker, 1)[-1].strip() if marker in text else ""
    ids = _ids(tokenizer, after)
    special = set(tokenizer.all_special_ids)
    # keep up to the first special token (a template may write a newline or a BOS for the next turn)
    for i, token in enumerate(ids):
        if token in special:
            return ids[: i + 1]
    if tokenizer.eos_token_id is None:
        raise UsageError("the tokenizer has no end-of-turn or EOS token to end a completion with")
    return [tokenizer.eos_token_id]


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end a generated reply: the end of turn and EOS."""
    ids = set(end_of_turn_ids(tokenizer)[-1:])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return sorted(ids)


def completion_ids(tokenizer, completion: str, end_ids: list[int] | None = None) -> list[int]:
    """The completion's ids followed by the end-of-turn ids (added once, even if the text ends with it)."""
    end = end_of_turn_ids(tokenizer) if end_ids is None else end_ids
    ids = _ids(tokenizer, completion.rstrip())
    while ids[-len(end) :] == end:
        ids = ids[: -len(end)]
    return ids + end


def shared_prefix_length(tokenizer, context: str, placement: str = "system") -> int:
    """How many leading tokens every teacher prompt with this context has in common (the system message,
    or the user turn's opening and the context), found by templating two unrelated prompts."""
    first, second = (chat_prompt_ids(tokenizer, probe, context, placement) for probe in _PROBES)
    length = 0
    while length < min(len(first), len(second)) and first[length] == second[length]:
        length += 1
    return length


def build_chat_views(
    tokenizer,
    prompt: str,
    completion: str | None = None,
    context: str = "",
    placement: str = "system",
    completion_token_ids: list[int] | None = None,
    prefix_length: int | None = None,
) -> dict:
    """Token ids of both views of one chat example, as `views.build_views` returns them.

    Args:
        completion: the reply text (end of turn appended), or None when `completion_token_ids` is given.
        completion_token_ids: the reply as token ids, e.g. as the teacher generated it, end of turn
            included; used as they are.
        prefix_length: `shared_prefix_length(tokenizer, context, placement)`, when the caller computed it
            once for many rows with the same context.
    """
    if completion_token_ids is not None:
        answer = list(completion_token_ids)
    elif completion is not None:
        answer = completion_ids(tokenizer, completion)
    else:
        raise UsageError("a chat example needs a completion (text or token ids)")
    if not answer:
        raise UsageError("the completion is empty after tokenization; every example needs a reply")
    student = chat_prompt_ids(tokenizer, prompt, "", placement)
    teacher = chat_prompt_ids(tokenizer, prompt, context, placement)
    shared = shared_prefix_length(tokenizer, context, placement) if prefix_length is None else prefix_length
    # the collator uses the prefix cache only where every row's ids really start with the same prefix
    shared = min(shared, len(teacher) - 1) if context else 0
    return two_view_row(student, teacher, answer, max(shared, 0))
