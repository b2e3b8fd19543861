"""Teacher output cache: the teacher's answer distributions, computed once and stored with the dataset.

    train = load_or_build_teacher_outputs(teacher, train_views, collator, distill_vocab="full",
                                          temperature=2.0, top_k=64, label_token_ids=ids)
    del teacher   # training now reads the teacher's outputs from `train`

For a fixed (example, demonstrations) pair the teacher's answer distribution never changes, so every
epoch after the first would recompute the same numbers. One pass stores, per example:
- `distill_vocab="full"`: per answer token, the top-k log-probabilities at the distillation temperature,
  their token ids, and the log of the remaining (tail) mass (`losses.sparse_distillation_loss`);
- `distill_vocab="label_words"`: the exact label-word distribution at the first answer position.

The result is saved with the dataset (`datasets` Arrow, `save_to_disk`) under a key hashing the teacher
(config and weights, or its files with the dtype and quantization it loads with), the examples'
teacher-view tokens (which spell out the demonstrations, the pattern and the answers), the temperature,
k, the distillation vocabulary and its label words, and the code that computes the outputs with the
numeric packages' versions (`code_digest.modules_digest`). A later
run with the same key loads it; any change gives a new key and a fresh pass.

The label-word distribution is read from the teacher's view alone (its tokens, its answer positions, its
label-word ids), so its key leaves out the student's answer tokens: students with other tokenizers
(SmolLM2, Gemma, Qwen beside a Qwen teacher) share one teacher pass. Per-answer-token outputs (`full`)
are laid out on the answer tokens, so their key keeps them. A cache found under the key gives only its
teacher columns: the rows' own views are always the caller's, never those of the run that built it.

The key file also records the size and sha256 of every file of the saved dataset, and the values obey
cheap invariants (log-probabilities <= 0, each distribution's mass summing to 1). A cache that fails
either check on load (truncated, edited, corrupted) is rebuilt, with one warning naming its path.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from distill_trainer.cache_paths import cache_home
from distill_trainer.code_digest import modules_digest
from distill_trainer.errors import UsageError
from distill_trainer.finite import refuse_nonfinite
from distill_trainer.integrity import sha256_text
from distill_trainer.teacher.columns import (
    PER_ANSWER_TOKEN_TEACHER_COLUMNS,
    PER_EXAMPLE_TEACHER_COLUMNS,
    TEACHER_OUTPUT_COLUMNS,
)
from distill_trainer.teacher.store import load_verified, save_atomically, stored_key
from distill_trainer.teacher.teacher import teacher_fingerprint

# the columns whose content decides the teacher's outputs (plus example ids when the dataset has them):
# the teacher's view; per-answer-token outputs also follow the answer tokens (`full` shares one tokenizer)
_TEACHER_VIEW_COLUMNS = ("teacher_input_ids", "teacher_answer_positions")
_ANSWER_TOKEN_COLUMNS = ("answer_ids",)
_EXAMPLE_ID_COLUMNS = ("idx", "example_index", "id")
# bump when the stored layout or the way outputs are computed changes: old caches then stop matching
# (2: label-word caches keyed on the teacher's view only, whatever the student's tokenizer)
CACHE_FORMAT = 2

logger = logging.getLogger(__name__)
_REPORTED: set = set()  # (cache path, problem) pairs already warned about in this process


def default_teacher_cache_dir() -> Path:
    """`teacher_outputs` under the library's cache home (see `cache_paths.cache_home`), shared by runs."""
    return cache_home() / "teacher_outputs"


def has_teacher_outputs(dataset) -> bool:
    names = getattr(dataset, "column_names", None) or []
    return any(name in names for name in TEACHER_OUTPUT_COLUMNS)


# ---- the key ----


def key_columns(distill_vocab: str) -> tuple[str, ...]:
    """The columns whose content decides the teacher's outputs of this kind (see the module docstring)."""
    answers = _ANSWER_TOKEN_COLUMNS if distill_vocab == "full" else ()
    return _TEACHER_VIEW_COLUMNS + answers + _EXAMPLE_ID_COLUMNS


def examples_fingerprint(dataset, distill_vocab: str = "full") -> str:
    """A digest of the teacher-view tokens (the answer tokens too for `full`) and example ids of every
    row, in order."""
    _check_dataset(dataset)
    columns = [c for c in key_columns(distill_vocab) if c in dataset.column_names]
    table = dataset.select_columns(columns).with_format("arrow")[:]
    digest = hashlib.sha256(f"{len(dataset)}:{','.join(columns)}".encode())
    for name in columns:
        array = table.column(name).combine_chunks()
        if hasattr(array, "offsets"):  # list column: the lengths, then the flat values
            offsets = np.asarray(array.offsets, dtype=np.int64)
            digest.update((offsets - offsets[0]).tobytes())
            array = array.flatten()
        digest.update(np.asarray(array.to_numpy(zero_copy_only=False)).astype(np.int64).tobytes())
    return digest.hexdigest()


def teacher_output_cache_key(
    teacher,
    dataset,
    *,
    distill_vocab: str,
    temperature: float,
    top_k: int | None,
    label_token_ids=None,
    extra: dict | None = None,
    teacher_id: str | None = None,
) -> tuple[str, dict]:
    """The key (a hex digest) and the components it hashes, which are saved next to the cache.

    `teacher_id` (e.g. `teacher_source_fingerprint`) identifies the teacher instead of its weights."""
    components = {
        "format": CACHE_FORMAT,
        "teacher": teacher_id or teacher_fingerprint(teacher),
        "examples": examples_fingerprint(dataset, distill_vocab),
        "distill_vocab": distill_vocab,
        "temperature": float(temperature),
        "top_k": int(top_k) if distill_vocab == "full" else None,
        "label_token_ids": [int(i) for i in label_token_ids] if distill_vocab == "label_words" else None,
        "extra": extra or {},
        # the code that computes the outputs (the teacher's forward, the prefix cache, top-k and tail) and the
        # numeric packages' versions: a change to either is a fresh pass
        "code": modules_digest("distill_trainer.teacher.output_cache"),
    }
    key = sha256_text(json.dumps(components, sort_keys=True))
    return key, components


# ---- computing the outputs ----


def _check_dataset(dataset) -> None:
    names = getattr(dataset, "column_names", None)
    if names is None or not hasattr(dataset, "save_to_disk"):
        raise UsageError(
            "the teacher output cache needs a datasets.Dataset of build_views rows, got "
            f"{type(dataset).__name__}; build it with datasets.Dataset.from_list([...build_views(...)...])"
        )
    missing = [c for c in _TEACHER_VIEW_COLUMNS if c not in names]
    if missing:
        raise UsageError(
            f"the dataset has no {', '.join(missing)} column(s); build its rows with build_views"
        )


def _check_options(distill_vocab, temperature, top_k, label_token_ids) -> None:
    if distill_vocab not in ("full", "label_words"):
        raise UsageError(f"distill_vocab={distill_vocab!r} is not valid; choose full or label_words")
    if not temperature > 0:
        raise UsageError(f"temperature must be > 0, got {temperature}")
    if distill_vocab == "full" and (top_k is None or top_k < 1):
        raise UsageError(f"teacher_cache_top_k must be >= 1 for distill_vocab='full', got {top_k}")
    if distill_vocab == "label_words" and (label_token_ids is None or len(label_token_ids) < 2):
        raise UsageError("distill_vocab='label_words' needs label_token_ids (one token id per label word)")


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def compute_teacher_outputs(
    logits_fn,
    dataset,
    collator,
    *,
    distill_vocab: str,
    temperature: float,
    top_k: int | None = None,
    label_token_ids=None,
    batch_size: int = 8,
    device=None,
    show_progress: bool = False,
    sort_by_length: bool = True,
    source: str = "the teacher",
) -> dict[str, list]:
    """One teacher pass over `dataset`; returns the new columns (lists, one entry per row).

    Args:
        logits_fn: batch -> teacher logits (batch, answer_len, vocab) at the answer positions, right-aligned
            as in `TwoViewCollator` (e.g. `ContextDistillationTrainer.teacher_answer_logits`).
        sort_by_length: batch rows of similar length together (longest first); False keeps the dataset's
            order (`benchmarks/teacher_pass.py` measures what the sorting saves).
        source: how an error names the teacher: the first batch with NaN or infinite logits stops the pass
            (a cache of them would train every later run on garbage).
    """
    _check_options(distill_vocab, temperature, top_k, label_token_ids)
    names = (
        PER_EXAMPLE_TEACHER_COLUMNS if distill_vocab == "label_words" else PER_ANSWER_TOKEN_TEACHER_COLUMNS
    )
    columns = {name: [None] * len(dataset) for name in names}
    # longest first: rows of similar length share a batch, so little of the teacher's work is padding
    lengths = [len(ids) for ids in dataset["teacher_input_ids"]]
    order = sorted(range(len(dataset)), key=lambda i: -lengths[i]) if sort_by_length else range(len(dataset))
    starts = range(0, len(dataset), batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="teacher output cache", unit="batch")
    for start in starts:
        indices = order[start : start + batch_size]
        features = [dataset[i] for i in indices]
        batch = collator(features)
        if device is not None:
            batch = _to_device(batch, device)
        logits = logits_fn(batch).float()
        # answers are right-aligned: a shorter answer's padding columns are not read, so not checked
        finite = [
            bool(torch.isfinite(logits[r, -len(f["answer_ids"]) :]).all()) for r, f in enumerate(features)
        ]
        bad = [index for index, ok in zip(indices, finite) if not ok]
        refuse_nonfinite(source, bad, len(indices), "rows of a batch", "nothing was cached")
        if distill_vocab == "label_words":
            # column 0 holds every row's first answer position (see TwoViewCollator), where the label is
            # decided
            ids = torch.as_tensor(label_token_ids, device=logits.device)
            label_logprobs = (
                F.log_softmax(logits[:, 0].index_select(-1, ids) / temperature, dim=-1).cpu().tolist()
            )
            for row, index in enumerate(indices):
                columns["teacher_label_logprobs"][index] = label_logprobs[row]
            continue
        top_logprobs, top_ids, tail = top_k_with_tail(F.log_softmax(logits / temperature, dim=-1), top_k)
        for row, (index, feature) in enumerate(zip(indices, features)):
            n = len(feature["answer_ids"])  # answers are right-aligned: the last n columns are this row's
            columns["teacher_topk_ids"][index] = top_ids[row, -n:].cpu().tolist()
            columns["teacher_topk_logprobs"][index] = top_logprobs[row, -n:].cpu().tolist()
            columns["teacher_tail_logprob"][index] = tail[row, -n:].cpu().tolist()
    return columns


def top_k_with_tail(logprobs: torch.Tensor, k: int):
    """(top-k log-probs, their ids, log of the remaining mass) over the last axis; no tail (-inf) when k
    covers the vocabulary. What the cache stores, and what a live teacher's top-k loss compares."""
    k = min(int(k), logprobs.shape[-1])
    top_logprobs, top_ids = logprobs.topk(k, dim=-1)
    if k < logprobs.shape[-1]:
        tail = logprobs.scatter(-1, top_ids, float("-inf")).logsumexp(-1)
    else:
        tail = torch.full(logprobs.shape[:-1], float("-inf"), device=logprobs.device)
    return top_logprobs, top_ids, tail


def _add_columns(dataset, columns: dict[str, list]):
    from datasets import List, Value

    types = {
        "teacher_topk_ids": List(List(Value("int32"))),
        "teacher_topk_logprobs": List(List(Value("float32"))),
        "teacher_tail_logprob": List(Value("float32")),
        "teacher_label_logprobs": List(Value("float32")),
    }
    for name, values in columns.items():
        dataset = dataset.add_column(name, values, feature=types[name])
    return dataset


def load_or_build_teacher_outputs(
    teacher,
    dataset,
    collator,
    *,
    distill_vocab: str = "full",
    temperature: float = 1.0,
    top_k: int | None = 64,
    label_token_ids=None,
    cache_dir=None,
    batch_size: int = 8,
    logits_fn=None,
    extra_key: dict | None = None,
    show_progress: bool = False,
    teacher_id: str | None = None,
):
    """`dataset` with the teacher's outputs as extra columns: loaded from `cache_dir` when a cache with the
    same key exists there, otherwise computed (one teacher pass) and saved.

    Args:
        teacher: the teacher model (hashed into the key unless `teacher_id` is given; run through
            `logits_fn`).
        teacher_id: identifies the teacher in the key instead of a digest of its weights (see
            `cached_teacher_outputs`, which needs no teacher at all).
        logits_fn: batch -> teacher answer logits; default: the teacher with the prefix KV cache when the
            batch's demonstrations are shared (`prefix_cache.TeacherAnswerLogits`).
        extra_key: anything else that should invalidate the cache (JSON-serialisable), e.g. a data version.
    Returns:
        (dataset with teacher columns, path of the cache directory, whether it was loaded from disk).
    """
    from datasets import load_from_disk

    _check_dataset(dataset)
    _check_options(distill_vocab, temperature, top_k, label_token_ids)
    dataset, key, components, path, loaded = _lookup(
        teacher,
        dataset,
        cache_dir,
        distill_vocab=distill_vocab,
        temperature=temperature,
        top_k=top_k,
        label_token_ids=label_token_ids,
        extra=extra_key,
        teacher_id=teacher_id,
    )
    if loaded is not None:
        return loaded, path, True
    if logits_fn is None:
        from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits

        runner, device = TeacherAnswerLogits(), next(teacher.parameters()).device

        def logits_fn(batch):
            return runner(teacher, _to_device(batch, device))

    name = getattr(teacher, "name_or_path", None)
    columns = compute_teacher_outputs(
        logits_fn,
        dataset,
        collator,
        distill_vocab=distill_vocab,
        temperature=temperature,
        top_k=top_k,
        label_token_ids=label_token_ids,
        batch_size=batch_size,
        show_progress=show_progress,
        source=f"the teacher {name}" if name else "the teacher",
    )
    with_outputs = _add_columns(dataset, columns)
    save_atomically(with_outputs, path, {"key": key, **components})
    # a fresh cache: should it be damaged again later, that is news worth a warning
    _REPORTED.difference_update({entry for entry in _REPORTED if entry[0] == str(path)})
    return load_from_disk(str(path)), path, False


def cached_teacher_outputs(
    dataset,
    *,
    teacher_id: str,
    distill_vocab: str = "full",
    temperature: float = 1.0,
    top_k: int | None = 64,
    label_token_ids=None,
    cache_dir=None,
    extra_key: dict | None = None,
):
    """(dataset with the teacher's outputs, cache path) when a cache keyed on `teacher_id` exists, else
    (None, path): lets a caller skip loading the teacher when nothing has to be computed."""
    _check_dataset(dataset)
    *_, path, loaded = _lookup(
        None,
        dataset,
        cache_dir,
        distill_vocab=distill_vocab,
        temperature=temperature,
        top_k=top_k,
        label_token_ids=label_token_ids,
        extra=extra_key,
        teacher_id=teacher_id,
    )
    return loaded, path


def _lookup(teacher, dataset, cache_dir, **key_options):
    """(dataset without earlier teachers' outputs, key, its components, cache path, the verified cached
    dataset or None): the one place a cache is keyed, found and checked."""
    stale = [c for c in TEACHER_OUTPUT_COLUMNS if c in dataset.column_names]
    if stale:  # outputs of some earlier teacher: never let them mix with the new ones
        dataset = dataset.remove_columns(stale)
    key, components = teacher_output_cache_key(teacher, dataset, **key_options)
    path = Path(cache_dir or default_teacher_cache_dir()) / f"teacher-outputs-{key[:20]}"
    if stored_key(path) != key:
        return dataset, key, components, path, None
    loaded, problem = load_verified(path)
    if problem is not None and (str(path), problem) not in _REPORTED:
        # a run looks twice (without the teacher, then with it to rebuild): one warning is enough
        _REPORTED.add((str(path), problem))
        logger.warning("teacher output cache %s is damaged (%s); rebuilding it", path, problem)
    if loaded is not None:
        loaded = with_teacher_columns(dataset, loaded)
    return dataset, key, components, path, loaded


def with_teacher_columns(dataset, cached):
    """`dataset` with the teacher output columns of `cached` (the same rows, in order: the key hashes them).
    The cache may have been built beside another student's view: only the teacher's columns are taken."""
    if len(cached) != len(dataset):
        raise UsageError(
            f"a teacher output cache holds {len(cached)} rows for a dataset of {len(dataset)} under the "
            "same key; delete that cache folder (it will be rebuilt)"
        )
    names = [c for c in TEACHER_OUTPUT_COLUMNS if c in cached.column_names]
    for name in names:
        dataset = dataset.add_column(name, cached[name], feature=cached.features[name])
    return dataset
