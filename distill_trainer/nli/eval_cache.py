"""Evaluation results of a model on disk, stored once and reused: a rerun of in-context-learning evaluation
(the 1.5B teacher's costs minutes) with the same model files, prompt and rows reads them back.

    key = evaluation_key(model_id, task="mnli", pattern=..., rows=rows, demonstrations=..., max_length=None)
    found = load_evaluation(key)            # (metrics, predictions) or None
    store_evaluation(key, metrics, predictions)

`model_id` is `teacher.teacher_source_fingerprint` of the model's folder (its config and weight files),
so retrained or rewritten weights never match. The key also holds what the model was shown, not the name of
what made it: every row's rendered query and the label words (`rendered_prompts`), the demonstration blocks
as rendered text, and the digest of the scoring code (`SCORING_MODULES` and every library module they
import, with the numeric packages' versions): a template's new wording, or a change to how rows are
rendered, tokenized or scored, is evaluated afresh. Each entry records the sha256 of its payload and is
recomputed, with one warning naming the file, when that no longer matches.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from distill_trainer.cache_paths import cache_home
from distill_trainer.code_digest import modules_digest
from distill_trainer.finite import nonfinite_records
from distill_trainer.integrity import sha256_text, write_text_atomically

logger = logging.getLogger(__name__)
FORMAT = 1


# the modules that render, tokenize and score an evaluation row (their imports are followed)
SCORING_MODULES = ("distill_trainer.nli.task_evaluation",)


def rendered_prompts(pattern, rows) -> str:
    """A digest of every row's query as the pattern renders it, and of the label words."""
    return sha256_text(json.dumps([list(pattern.label_words), [pattern.query(row) for row in rows]]))


def evaluation_key(model_id: str, **settings) -> str:
    """A digest of the model's identity, every setting (JSON-serialisable) that decides the scores, and the
    scoring code."""
    code = modules_digest(*SCORING_MODULES)
    text = json.dumps(
        {"format": FORMAT, "model": model_id, "code": code, **settings}, sort_keys=True, default=str
    )
    return sha256_text(text)


def _path(key: str, cache_dir=None) -> Path:
    return Path(cache_dir or cache_home() / "evaluations") / f"evaluation-{key[:24]}.json"


def load_evaluation(key: str, cache_dir=None):
    """(metrics, predictions) stored under `key`, or None (absent, another key, or damaged)."""
    path = _path(key, cache_dir)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        logger.warning(
            "evaluation cache %s cannot be read (%s); evaluating again", path, type(error).__name__
        )
        return None
    payload = json.dumps(record.get("payload"), sort_keys=True)
    if record.get("key") != key or sha256_text(payload) != record.get("sha256"):
        logger.warning("evaluation cache %s does not match its checksum; evaluating again", path)
        return None
    predictions = record["payload"]["predictions"]
    bad = nonfinite_records(predictions)
    if bad:  # stored before such scores were refused: evaluating again names the model at fault
        logger.warning(
            "evaluation cache %s holds NaN or infinite scores in %d of its %d rows; evaluating again",
            path,
            len(bad),
            len(predictions),
        )
        return None
    return record["payload"]["metrics"], predictions


def store_evaluation(key: str, metrics: dict, predictions: list[dict], cache_dir=None) -> Path:
    """Write the entry under a temporary name, then rename it into place (never half-written)."""
    path = _path(key, cache_dir)
    payload = {"metrics": metrics, "predictions": predictions}
    # round-trip through JSON first, so the checksum covers exactly what a later load reads back
    payload = json.loads(json.dumps(payload, default=float))
    digest = sha256_text(json.dumps(payload, sort_keys=True))
    write_text_atomically(path, json.dumps({"key": key, "sha256": digest, "payload": payload}))
    return path
