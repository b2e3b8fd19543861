"""Batched generation of replies from token-id prompts, with a shared prompt prefix run once.

    settings = GenerationSettings(max_new_tokens=96)              # greedy
    generate = HFGenerator(model, stop_ids=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
    replies = generate(prompts, settings, prefix_length=shared_prefix_length(...))   # token ids per prompt

Everything that writes replies (the teacher's completions, the student's on-policy rollouts, held-out
evaluation) goes through one small interface, `ReplyGenerator`: prompts in as token ids, replies out as
token ids. `HFGenerator` is the implementation here (a transformers model, KV cache on); a served engine
(vLLM, SGLang) fits the same call where a GPU has one, see docs/context-distillation.md.

When every prompt starts with the same `prefix_length` ids (a shared system prompt), the prefix's keys and
values are computed once (`teacher.prefix_cache.PrefixCachedModel`) and each batch runs only its own tokens.
Batches are left-padded after the prefix: [prefix | pads | prompt], pads masked out, positions counted
over real tokens only, so the last column is every row's last prompt token and one decoding step serves
the whole batch. Rows that have finished leave the batch (and the cache) once a quarter of it has, so a
long reply does not keep the short ones' rows computing. The loop is written out here, not
`model.generate`: it owns the cache and positions that the shared prefix needs, and it reads the same
under every transformers release this project supports.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Protocol

import torch

from distill_trainer.errors import UsageError
from distill_trainer.models.grouped_attention import grouped_query_attention


@dataclass(frozen=True)
class GenerationSettings:
    """How replies are decoded; every field is part of the completion cache's key."""

    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise UsageError(f"the generation temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1], got {self.top_p}")

    def as_dict(self) -> dict:
        values = asdict(self)
        if not self.do_sample:  # greedy decoding ignores these: equal caches whatever they say
            values.update(temperature=None, top_p=None, seed=None)
        return values


def _next_tokens(logits: torch.Tensor, settings: GenerationSettings, generator) -> torch.Tensor:
    logits = logits.float()
    if not settings.do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1:
        sorted_probs, order = probs.sort(-1, descending=True)
        # keep the smallest set of tokens whose mass reaches top_p (always at least the most likely one)
        drop = sorted_probs.cumsum(-1) - sorted_probs >= settings.top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def _generate_batch(model, prompts, settings, stop_ids, pad_token_id, prefix, generator) -> list[list[int]]:
    device = next(model.parameters()).device
    rows = len(prompts)
    length = max(len(p) for p in prompts)
    ids = torch.full((rows, length), pad_token_id, dtype=torch.long)
    mask = torch.zeros((rows, length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, length - len(prompt) :] = torch.tensor(prompt)
        mask[row, length - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    if prefix is not None:
        cache, offset = prefix.generation_cache(rows, device), prefix.prefix_length
    else:
        from transformers import DynamicCache

        cache, offset = DynamicCache(config=getattr(model, "module", model).config), 0
    attention = torch.cat([torch.ones(rows, offset, dtype=torch.long, device=device), mask], dim=1)
    positions = offset + (mask.cumsum(-1) - 1).clamp(min=0)
    stop = torch.tensor(sorted(stop_ids), device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    replies: list[list[int]] = [[] for _ in range(rows)]
    alive = list(range(rows))  # the prompt each row of the running batch answers
    for _ in range(settings.max_new_tokens):
        # a single new token takes transformers' own grouped path; the prompt's tokens take SDPA's
        with grouped_query_attention(device) if ids.shape[1] > 1 else contextlib.nullcontext():
            logits = model(
                input_ids=ids,
                attention_mask=attention,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits[:, -1]
        token = _next_tokens(logits, settings, generator)
        for row in (~done).nonzero().flatten().tolist():
            replies[alive[row]].append(int(token[row]))
        done |= torch.isin(token, stop)
        if bool(done.all()):
            break
        ids = token.masked_fill(done, pad_token_id)[:, None]
        attention = torch.cat([attention, torch.ones(len(alive), 1, dtype=torch.long, device=device)], dim=1)
        positions = positions[:, -1:] + 1
        if 4 * int(done.sum()) >= len(alive):  # a quarter of the rows finished: stop computing them
            keep = (~done).nonzero().flatten()
            ids, attention, positions, done = ids[keep], attention[keep], positions[keep], done[keep]
            for layer in cache.layers:
                layer.batch_select_indices(keep)
            alive = [alive[row] for row in keep.tolist()]
    return replies


def generate_replies(
    model,
    prompts: list[list[int]],
    settings: GenerationSettings,
    *,
    stop_ids: list[int],
    pad_token_id: int,
    prefix_length: int = 0,
    batch_size: int = 8,
    progress: str | None = None,
    on_batch=None,
) -> list[list[int]]:
    """The reply's token ids for each prompt (ending with its stop token, or cut at max_new_tokens).

    Args:
        prompts: templated prompts as token ids (`views.chat.chat_prompt_ids`).
        prefix_length: leading ids shared by every prompt; run once through the model and reused.
        progress: a tqdm description, or None for no progress bar.
        on_batch: called with (prompt indices, their replies) after each batch, e.g. to store them.
    """
    from distill_trainer.teacher.prefix_cache import PrefixCachedModel

    if not prompts:
        return []
    if pad_token_id is None:
        raise UsageError("the tokenizer has no pad token; set tokenizer.pad_token (e.g. to its EOS token)")
    prefix = None
    if prefix_length > 0 and all(len(p) > prefix_length for p in prompts):
        shared = prompts[0][:prefix_length]
        if all(p[:prefix_length] == shared for p in prompts):
            prefix = PrefixCachedModel(model, shared)
    start = prefix.prefix_length if prefix is not None else 0
    generator = None
    if settings.do_sample:
        generator = torch.Generator(device=next(model.parameters()).device).manual_seed(settings.seed)
    # longest first: rows of a batch have similar lengths, so little of each forward is padding
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    starts = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch")
    replies: list[list[int]] = [[] for _ in prompts]
    for first in starts:
        indices = order[first : first + batch_size]
        batch = [prompts[i][start:] for i in indices]
        done = _generate_batch(model, batch, settings, stop_ids, pad_token_id, prefix, generator)
        for index, reply in zip(indices, done):
            replies[index] = reply
        if on_batch is not None:
            on_batch(indices, done)
    return replies


class ReplyGenerator(Protocol):
    """Prompts in, replies out, as token ids; each reply ends with a stop token or is cut at
    `settings.max_new_tokens`. `prefix_length`: leading ids every prompt shares (a hint; may be ignored)."""

    def __call__(
        self, prompts: list[list[int]], settings: GenerationSettings, *, prefix_length: int = 0
    ) -> list[list[int]]: ...


@dataclass
class HFGenerator:
    """The `ReplyGenerator` of a transformers causal LM: `generate_replies`, batched, KV cache on."""

    model: object
    stop_ids: list[int]
    pad_token_id: int
    batch_size: int = 8
    progress: str | None = None

    def __call__(self, prompts, settings, *, prefix_length=0, on_batch=None):
        return generate_replies(
            self.model,
            prompts,
            settings,
            stop_ids=self.stop_ids,
            pad_token_id=self.pad_token_id,
            prefix_length=prefix_length,
            batch_size=self.batch_size,
            progress=self.progress,
            on_batch=on_batch,
        )
