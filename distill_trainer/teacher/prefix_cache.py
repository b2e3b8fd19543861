"""Prefix KV cache: run the prefix every row shares (a teacher's demonstrations, a chat template's system
prompt) through the model once, then only each row's own tokens.

    teacher = PrefixCachedModel(model, prefix_ids)            # demonstrations, as token ids
    logits = teacher.answer_logits(suffix_ids, suffix_mask, positions)

With k demonstrations fixed for a run, every teacher view is `prefix + suffix` where the prefix (the
demonstrations, plus any leading special token) is the same for all examples and the suffix is the
query and answer. A causal LM's keys and values for the prefix do not depend on what follows it, so
they are computed once and reused: each batch then costs a forward over the suffix tokens only, which
attend to the cached prefix. The logits equal those of the full forward up to float rounding.

`answer_logits` runs without gradients (a teacher, a scorer). `answer_states` follows the caller's grad
mode: a trained student builds a fresh object each step (its weights change) and its gradients flow
through the suffix's attention into the prefix's forward (`training/student_forward.py`).

Padding: the suffix may be left- or right-padded (pads masked out by `suffix_attention_mask`); the
prefix is never padded, since it is shared. Position ids continue from the prefix length and skip pads,
as in `answer_logits.answer_logits`. The cache goes in through `cache=` (transformers >= 5.24; the older
`past_key_values=` is deprecated).

Packing (`pack=True`, what `TeacherAnswerLogits` does by default on a CPU): the batch's suffixes are laid
end to end in one row, without their padding, under a mask that lets each token see the whole prefix and
its own query up to itself; position ids restart after the prefix for every query. Each query's logits are
those of the padded batch (up to float summation order), but the matmuls, most of a CPU teacher's time,
run over real tokens only. A packed row is capped at `PACK_TOKENS` tokens (more rows run one after the
other): attention over a packed row also computes the masked pairs between different queries, which grows
with the row's length squared. Packing needs plain full-attention cache layers and an attention that takes
an explicit 4-D mask (SDPA, eager); otherwise the padded path runs. It is measured on CPUs
(benchmarks/teacher_pass.py); a GPU runs a padded batch in one forward, where the packed rows would run
one after another, so there it stays off unless asked for.
"""

from __future__ import annotations

import copy

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from distill_trainer.errors import UsageError
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.grouped_attention import grouped_query_attention

# tokens per packed row: enough rows for the matmuls to run near their best on a CPU (see
# benchmarks/flops.py), few enough that the cross-query attention pairs stay a small share of the work
PACK_TOKENS = 512
PACKABLE_ATTENTION = ("sdpa", "eager")


def prefix_token_ids(prefix_ids) -> torch.Tensor:
    """A 1-D LongTensor of the prefix, from a list, a 1-D tensor, or a (batch, P) tensor whose rows are
    equal."""
    ids = torch.as_tensor(prefix_ids, dtype=torch.long).cpu()
    if ids.ndim == 2:
        if ids.shape[0] > 1 and not bool((ids == ids[:1]).all()):
            raise UsageError(
                "the rows of teacher_prefix_ids differ, so the demonstrations are not shared by the batch; "
                "use fixed demonstrations per run, or set teacher_prefix_cache=False"
            )
        ids = ids[0]
    if ids.ndim != 1 or ids.numel() == 0:
        raise UsageError("the teacher prefix must be a non-empty sequence of token ids (the demonstrations)")
    return ids


class PrefixCachedModel:
    """A causal LM with a fixed prompt prefix already run through it.

    The prefix's key/value cache is computed lazily on the first call (on the suffix's device, under
    whatever context the caller holds, e.g. a PEFT model's `disable_adapter()`, and grad mode), then
    kept. Each call
    gives the forward a fresh cache object whose layers point at the stored prefix tensors expanded to
    the batch size (views, no copy). A forward concatenates prefix and suffix states into new tensors
    and never writes into the stored ones, so the prefix stays clean for the next batch (transformers'
    cache layers may otherwise be updated in place: never hand the stored cache itself to a forward).

    Args:
        model: a causal LM (transformers), frozen while the object lives; a quantized model works too.
        prefix_ids: the shared prefix's token ids (see `prefix_token_ids`).
    """

    def __init__(self, model, prefix_ids):
        self.model = model
        self.prefix_ids = prefix_token_ids(prefix_ids)
        self._prefix_cache = None

    @property
    def prefix_length(self) -> int:
        return int(self.prefix_ids.numel())

    def matches(self, model, prefix_ids) -> bool:
        """True if this cache was built for `model` and exactly these prefix ids."""
        return model is self.model and torch.equal(prefix_token_ids(prefix_ids).cpu(), self.prefix_ids)

    def _build_prefix_cache(self, device):
        ids = self.prefix_ids.to(device)[None]
        # the config tells sliding-window layers apart; a DeepSpeed engine or DDP wrapper holds it on .module
        cache = DynamicCache(config=getattr(self.model, "module", self.model).config)
        # logits_to_keep=1: the prefix's own logits are not needed; building them would cost P x vocab
        self.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            position_ids=torch.arange(ids.shape[1], device=device)[None],
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._prefix_cache = cache

    def _batch_cache(self, batch_size: int, keep_added: bool = False):
        """A cache for one batch whose layers serve the stored prefix, expanded to the batch (views).
        With `keep_added` the layers also store what each forward adds (generation needs it)."""
        cache = copy.copy(self._prefix_cache)
        cache.layers = [_batch_layer(layer, batch_size, keep_added) for layer in self._prefix_cache.layers]
        return cache

    def can_pack(self) -> bool:
        """Whether packed suffixes give the padded path's numbers here: every cache layer is plain full
        attention (a sliding window would need its own mask) and the attention takes a 4-D mask."""
        config = getattr(self.model, "module", self.model).config
        return (
            self._prefix_cache is not None
            and all(type(layer) is DynamicLayer for layer in self._prefix_cache.layers)
            and getattr(config, "_attn_implementation", None) in PACKABLE_ATTENTION
        )

    @torch.no_grad()
    def generation_cache(self, batch_size: int, device):
        """A cache holding the prefix for `batch_size` rows that grows as tokens are generated after it;
        the stored prefix stays untouched (each layer copies it into a buffer of its own, `_GrowingLayer`)."""
        if self._prefix_cache is None:
            self._build_prefix_cache(device)
        return self._batch_cache(batch_size, keep_added=True)

    @torch.no_grad()
    def answer_logits(self, suffix_ids, suffix_attention_mask, positions, pack: bool = False) -> torch.Tensor:
        """`answer_states` without gradients (on a CPU, grouped-query attention without copied heads)."""
        with grouped_query_attention(suffix_ids.device):
            return self.answer_states(suffix_ids, suffix_attention_mask, positions, pack)

    def answer_states(self, suffix_ids, suffix_attention_mask, positions, pack: bool = False) -> torch.Tensor:
        """Logits (batch, n_positions, vocab) at `positions`, counted within the suffix (the final hidden
        states where the model's head is removed, `models.output_head`), under the caller's grad mode.

        Args:
            suffix_ids: (batch, S) the per-example continuation of the prefix (query + answer), padded.
            suffix_attention_mask: (batch, S) 1 for real tokens, 0 for padding.
            positions: (batch, n) per-row indices into the suffix whose logits are wanted (for scoring a
                label word, the query's last token; for distillation, the answer positions).
            pack: run the suffixes packed (see the module's docstring) where `can_pack()` allows it.
        """
        device = suffix_ids.device
        if self._prefix_cache is None:
            self._build_prefix_cache(device)
        if pack and suffix_ids.shape[0] > 1 and self.can_pack():
            return self._packed_answer_logits(suffix_ids, suffix_attention_mask, positions)
        batch, prefix = suffix_ids.shape[0], self.prefix_length
        suffix_attention_mask = suffix_attention_mask.long()
        attention_mask = torch.cat(
            [torch.ones(batch, prefix, dtype=torch.long, device=device), suffix_attention_mask], dim=1
        )
        position_ids = prefix + (suffix_attention_mask.cumsum(-1) - 1).clamp(min=0)
        outputs = self.model(
            input_ids=suffix_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=self._batch_cache(batch),
            use_cache=True,
            logits_to_keep=positions,
        )
        return outputs.logits

    def _packed_answer_logits(self, suffix_ids, suffix_attention_mask, positions) -> torch.Tensor:
        mask = suffix_attention_mask.bool()
        lengths = mask.sum(-1).tolist()
        # padded position -> index among its row's real tokens (answer positions are always real tokens)
        ranks = (mask.long().cumsum(-1) - 1).gather(1, positions)
        out, start = [], 0
        while start < len(lengths):
            stop, tokens = start + 1, lengths[start]
            while stop < len(lengths) and tokens + lengths[stop] <= PACK_TOKENS:
                tokens += lengths[stop]
                stop += 1
            out.append(self._packed_row(suffix_ids[start:stop], mask[start:stop], ranks[start:stop]))
            start = stop
        return torch.cat(out)

    def _packed_row(self, suffix_ids, mask, ranks) -> torch.Tensor:
        """Logits (rows, n_positions, vocab) of `rows` suffixes run as one packed row."""
        device, prefix = suffix_ids.device, self.prefix_length
        lengths = mask.sum(-1)
        ids = suffix_ids[mask][None]  # row-major: each query's tokens in order, one query after another
        total = ids.shape[1]
        query = torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)
        starts = lengths.cumsum(0) - lengths
        within = torch.arange(total, device=device) - starts[query]
        allowed = torch.cat(
            [
                torch.ones(total, prefix, dtype=torch.bool, device=device),
                (query[:, None] == query[None, :]) & (within[:, None] >= within[None, :]),
            ],
            dim=1,
        )
        # additive float mask in the attention's own dtype (the cached keys'): SDPA and eager both read it
        # as is, where a boolean one eager would add as 0/1
        dtype = self._prefix_cache.layers[0].keys.dtype
        attention_mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
        attention_mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        keep = (starts[:, None] + ranks).reshape(1, -1)
        outputs = self.model(
            input_ids=ids,
            attention_mask=attention_mask[None, None],
            position_ids=(prefix + within)[None],
            cache=self._batch_cache(1),
            use_cache=True,
            logits_to_keep=keep,
        )
        return outputs.logits.reshape(len(lengths), ranks.shape[1], -1)


def _batch_layer(layer, batch_size: int, keep_added: bool = False):
    if not getattr(layer, "is_initialized", False) or getattr(layer, "keys", None) is None:
        return copy.copy(layer)
    keys = layer.keys.expand(batch_size, *layer.keys.shape[1:])
    values = layer.values.expand(batch_size, *layer.values.shape[1:])
    if type(layer) is DynamicLayer:
        return _GrowingLayer(keys, values) if keep_added else _PrefixLayer(keys, values)
    # other layer kinds (sliding windows) keep their own bookkeeping: a shallow copy whose update
    # replaces, never mutates, the shared tensors
    layer = copy.copy(layer)
    layer.keys, layer.values = keys, values
    return layer


class _PrefixLayer(DynamicLayer):
    """A full-attention cache layer that serves a fixed prefix and keeps nothing a forward adds.

    `update` returns prefix + new states for the attention but does not store them: each layer's
    (batch, heads, prefix + suffix, dim) tensors are freed as soon as its attention is done, instead of
    living, layer after layer, until the forward ends (a plain DynamicLayer would store them).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.keys, self.values = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        return torch.cat([self.keys, key_states], dim=-2), torch.cat([self.values, value_states], dim=-2)


class _GrowingLayer(DynamicLayer):
    """A full-attention cache layer for generation after a shared prefix: the prefix is copied once per
    batch into a buffer with room for what follows, and each step writes its tokens in place.

    A plain layer concatenates its whole cache with each new token, so a step after a long prefix (a
    document) copies every row's prefix keys and values, in every layer: on a CPU that copy, not the
    matmuls, was most of the time of answering with a 2,000-token document in view. The attention reads
    a view of the filled part of the buffer."""

    headroom = 64  # tokens of room added whenever the buffer is full (a short reply never regrows it)

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._filled = keys.shape[-2]
        self._keys, self._values = self._room(keys), self._room(values)
        self._expose()

    def _room(self, states: torch.Tensor, needed: int = 0) -> torch.Tensor:
        shape = list(states.shape)
        shape[-2] = max(needed, self._filled) + self.headroom
        buffer = states.new_empty(shape)
        buffer[..., : self._filled, :] = states[..., : self._filled, :]
        return buffer

    def _expose(self) -> None:
        self.keys = self._keys[..., : self._filled, :]
        self.values = self._values[..., : self._filled, :]

    def update(self, key_states, value_states, *args, **kwargs):
        end = self._filled + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            self._keys, self._values = self._room(self._keys, end), self._room(self._values, end)
        self._keys[..., self._filled : end, :] = key_states
        self._values[..., self._filled : end, :] = value_states
        self._filled = end
        self._expose()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._keys, self._values = self._keys[indices], self._values[indices]
        self._expose()


class TeacherAnswerLogits:
    """batch -> a teacher's logits at the answer positions, through the prefix KV cache when it applies.

    The cached path is taken when the batch carries a shared prefix (`TwoViewCollator` adds
    `teacher_prefix_ids` and the `teacher_suffix_*` tensors when the demonstrations are fixed);
    otherwise the full teacher view runs. The prefix cache is rebuilt when the model or the prefix
    changes, so a run that switches demonstrations stays correct. `pack`: run the suffixes packed
    (`PrefixCachedModel`'s docstring), which skips the padding's arithmetic; None (the default) packs
    on a CPU only.
    """

    def __init__(self, use_prefix_cache: bool = True, pack: bool | None = None):
        self.use_prefix_cache = use_prefix_cache
        self.pack = pack
        self.prefix_teacher: PrefixCachedModel | None = None

    @torch.no_grad()
    def __call__(self, model, batch: dict) -> torch.Tensor:
        if self.use_prefix_cache and "teacher_prefix_ids" in batch:
            prefix = batch["teacher_prefix_ids"]
            if self.prefix_teacher is None or not self.prefix_teacher.matches(model, prefix):
                self.prefix_teacher = PrefixCachedModel(model, prefix)
            return self.prefix_teacher.answer_logits(
                batch["teacher_suffix_input_ids"],
                batch["teacher_suffix_attention_mask"],
                batch["teacher_suffix_answer_positions"],
                pack=self.pack if self.pack is not None else batch["teacher_suffix_input_ids"].is_cpu,
            )
        return answer_logits(
            model,
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_answer_positions"],
        )
