"""A causal LM's final hidden states instead of its logits, and its output head to apply later.

    with output_head_removed(model) as head:
        hidden = answer_logits(model, ids, mask, positions)   # (batch, n, hidden): the head is skipped
    logits = head(hidden[:, :8])                               # (batch, 8, vocab), a slice at a time

A loss over every token of a reply needs each position's logits, but never all of them at once: at a
152k vocabulary, 4 replies of 128 tokens are 311 MB of fp32 logits per model, and a loss keeps several
such tensors for its backward. Running the model with its head swapped for a pass-through returns the
hidden states through whatever wraps the model (PEFT, DDP: gradients still flow and synchronise), and
the loss then applies the real head to a chunk of positions at a time (`training.sequence_loss`).

Models that post-process their logits (Gemma's final logit soft-capping) get it from `head` too: the
swap turns it off in the forward and the head applies it. The swap changes nothing shared: within the
block the model holding the head reads a copy of its config with soft-capping off (the config object
itself, which other models and the saved checkpoint share, is never written), and on leaving it the
head and the config are put back whatever happened inside.
"""

from __future__ import annotations

import contextlib
import copy

import torch


class OutputHead:
    """hidden states (..., hidden) -> logits (..., vocab): the model's LM head, soft-capping included."""

    def __init__(self, module, softcap: float | None = None):
        self.module = module
        self.softcap = softcap

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = getattr(self.module, "weight", None)
        if weight is not None and weight.is_floating_point() and hidden.dtype != weight.dtype:
            hidden = hidden.to(weight.dtype)  # the head computes in its own dtype, as inside the model
        logits = self.module(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


class _HiddenStates(torch.nn.Module):
    """Stands in for the head: returns the hidden states, tied by a zero term to the head's trainable
    parameters. DDP (with find_unused_parameters) marks a parameter its forward did not reach as done at
    once, and then fails when the chunked loss's gradient for the head arrives; the tie keeps the head in
    the forward's graph, so its gradients arrive once, summed.

    The parameters are looked up at each call, not kept: FSDP2 swaps a module's sharded parameters for
    gathered ones while it runs. A ZeRO-3 parameter is an empty placeholder outside its own module's
    forward and DeepSpeed reduces its gradient whenever it arrives, so it needs no tie and gets none."""

    def __init__(self, head):
        super().__init__()
        self.head = [head]  # in a list: not registered as a child, so no wrapper sees it twice

    def forward(self, hidden):
        for parameter in self.head[0].parameters():
            if parameter.requires_grad and not is_zero3_partitioned(parameter):
                hidden = hidden + 0.0 * parameter.view(-1)[0].to(hidden.dtype)
        return hidden


def is_zero3_partitioned(parameter) -> bool:
    """Whether DeepSpeed ZeRO-3 manages `parameter`: its data is gathered only while its module runs."""
    return hasattr(parameter, "ds_id")


def _holder(model):
    """(the module that holds the LM head as an attribute, that attribute's name, its config)."""
    inner = model
    while isinstance(getattr(inner, "module", None), torch.nn.Module):  # DDP / DeepSpeed wrappers
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # PEFT
        inner = inner.get_base_model()
    head = inner.get_output_embeddings()
    for name, child in inner.named_children():
        if child is head:
            return inner, name, inner.config
    raise ValueError(f"cannot find the output head of {type(inner).__name__} among its modules")


@contextlib.contextmanager
def output_head_removed(model):
    """Within the block, `model(...)` returns hidden states where it returned logits; yields the head."""
    holder, name, config = _holder(model)
    module = getattr(holder, name)
    softcap = getattr(config, "final_logit_softcapping", None)
    setattr(holder, name, _HiddenStates(module))
    if softcap:
        uncapped = copy.copy(config)
        uncapped.final_logit_softcapping = None
        holder.config = uncapped
    try:
        yield OutputHead(module, softcap)
    finally:
        setattr(holder, name, module)
        if softcap:
            holder.config = config


def output_head(model) -> OutputHead:
    """The model's head (soft-capping included), for hidden states taken another way."""
    holder, name, config = _holder(model)
    return OutputHead(getattr(holder, name), getattr(config, "final_logit_softcapping", None))
