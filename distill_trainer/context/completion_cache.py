"""Completions the teacher writes, generated once and kept on disk: a rerun, a second student or a longer
prompt list regenerates only what is not there yet.

    replies = teacher_completions(teacher, tokenizer, rows, GenerationSettings(max_new_tokens=96),
                                  teacher_id=teacher_source_fingerprint("embedded:qwen2.5-coder-0.5b"))
    replies[0]["text"], replies[0]["ids"]      # the reply, and its token ids (end of turn included)

One file per (teacher, tokenizer's chat template and vocabulary size, context placement, decoding settings,
the code that builds prompts and decodes with the numeric packages' versions) holds an entry per
(context, prompt). The teacher is identified as in the teacher output cache (`output_cache.
teacher_source_fingerprint` for a model on disk, else `teacher_fingerprint` of its weights). The file
records the sha256 of its entries and is replaced atomically (written beside, then renamed), so a reader
sees the old file or the new one, never half of one; a file whose checksum fails is ignored with one
warning and its entries are generated again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from distill_trainer.cache_paths import cache_home
from distill_trainer.code_digest import modules_digest
from distill_trainer.errors import UsageError
from distill_trainer.integrity import sha256_text, write_text_atomically
from distill_trainer.teacher.generation import GenerationSettings, HFGenerator
from distill_trainer.views.chat import chat_prompt_ids, shared_prefix_length, stop_token_ids

logger = logging.getLogger(__name__)
# bump when the stored layout or the way replies are produced changes: old files then stop matching
CACHE_FORMAT = 1


def default_completion_cache_dir() -> Path:
    return cache_home() / "teacher_completions"


def _digest(value) -> str:
    return sha256_text(json.dumps(value, sort_keys=True, ensure_ascii=False))


def row_key(context: str, prompt: str) -> str:
    return _digest([context, prompt])


def completion_cache_path(
    tokenizer, settings: GenerationSettings, teacher_id: str, placement: str, cache_dir=None
) -> tuple[Path, dict]:
    """The file for these settings, and the components its name hashes (stored inside it too)."""
    components = {
        "format": CACHE_FORMAT,
        "teacher": teacher_id,
        "chat_template": _digest(getattr(tokenizer, "chat_template", None)),
        "vocabulary": len(tokenizer),
        "placement": placement,
        "decoding": settings.as_dict(),
        # the code that builds the prompts and decodes (and the numeric packages' versions)
        "code": modules_digest("distill_trainer.context.completion_cache"),
    }
    key = _digest(components)
    return Path(cache_dir or default_completion_cache_dir()) / f"completions-{key[:20]}.json", components


def read_entries(path: Path, components: dict) -> dict:
    """The stored entries, or {} when the file is missing, for other settings, or fails its checksum."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("completion cache %s is unreadable (%s); generating its entries again", path, error)
        return {}
    entries = stored.get("entries")
    if stored.get("components") != components or not isinstance(entries, dict):
        return {}
    if stored.get("sha256") != _digest(entries):
        logger.warning("completion cache %s fails its checksum; generating its entries again", path)
        return {}
    return entries


def write_entries(path: Path, components: dict, entries: dict) -> None:
    text = json.dumps({"components": components, "sha256": _digest(entries), "entries": entries})
    write_text_atomically(path, text)


def teacher_completions(
    teacher,
    tokenizer,
    rows: list[dict],
    settings: GenerationSettings,
    *,
    teacher_id: str,
    placement: str = "system",
    cache_dir=None,
    batch_size: int = 8,
    show_progress: bool = False,
) -> tuple[list[dict], dict]:
    """The teacher's reply to each row's prompt with its context: ({"text", "ids"} per row, info).

    Args:
        teacher: a causal LM, or a function returning one, called only when something must be generated
            (a "self" teacher is the student with its adapters off: pass a context manager's model).
        rows: dicts with "context" and "prompt".
        teacher_id: identifies the teacher in the key (see the module docstring).
    Returns info: {"path", "reused", "generated", "cut_off"} (rows found in the cache, rows generated
    now, replies that reached `settings.max_new_tokens` without a stop token).
    """
    if not teacher_id:
        raise UsageError(
            "teacher_completions needs a teacher_id (teacher_source_fingerprint or teacher_fingerprint)"
        )
    path, components = completion_cache_path(tokenizer, settings, teacher_id, placement, cache_dir)
    entries = read_entries(path, components)
    keys = [row_key(row["context"], row["prompt"]) for row in rows]
    missing = sorted({key: row for key, row in zip(keys, rows) if key not in entries}.items())
    if missing:
        model = teacher() if callable(teacher) and not hasattr(teacher, "parameters") else teacher
        stop = stop_token_ids(tokenizer)
        # one pass per context, so each shares its prefix KV cache (usually one context for all rows)
        by_context: dict[str, list] = {}
        for key, row in missing:
            by_context.setdefault(row["context"], []).append((key, row))
        for context, items in by_context.items():
            prompts = [chat_prompt_ids(tokenizer, row["prompt"], context, placement) for _, row in items]

            def store(indices, batch_replies, items=items):
                # stored after every batch: an interrupted run keeps what it generated
                for index, ids in zip(indices, batch_replies):
                    entries[items[index][0]] = {
                        "ids": ids,
                        "text": tokenizer.decode(ids, skip_special_tokens=True),
                    }
                write_entries(path, components, entries)

            generate = HFGenerator(
                model,
                stop,
                tokenizer.pad_token_id,
                batch_size=batch_size,
                progress="teacher completions" if show_progress else None,
            )
            # the context's part of the prompt (or, without one, the template's opening) runs once
            prefix = shared_prefix_length(tokenizer, context, placement)
            generate(prompts, settings, prefix_length=prefix, on_batch=store)
    replies = [entries[key] for key in keys]
    info = {
        "path": str(path),
        "reused": len(rows) - len(missing),
        "generated": len(missing),
        "cut_off": sum(cut_offs(tokenizer, replies)),  # an answer cut short may lack what was asked
    }
    return replies, info


def cut_offs(tokenizer, replies: list[dict]) -> list[bool]:
    """Per reply: it ends without a stop token, so generation hit max_new_tokens."""
    stop = set(stop_token_ids(tokenizer))
    return [not reply["ids"] or reply["ids"][-1] not in stop for reply in replies]
