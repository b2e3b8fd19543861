"""Publish a saved student folder to the Hugging Face Hub (`push_student`), refusing folders that nobody
could load. It sits with the models, below the trainer, because `Trainer.push_to_hub` uploads through it;
writing the folder and its card is `report/hub.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

from distill_trainer.errors import UsageError

CARD_FILE = "README.md"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def check_student_folder(folder) -> Path:
    """Raise a UsageError unless `folder` holds a complete saved student (weights, config, card)."""
    folder = Path(folder)
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    missing = []
    if not names & set(WEIGHT_FILES) and not any(
        n.startswith("model-") and n.endswith(".safetensors") for n in names
    ):
        missing.append("weights")
    if not names & {"config.json", "adapter_config.json"}:
        missing.append("config.json or adapter_config.json")
    if CARD_FILE not in names:
        missing.append(f"{CARD_FILE} (the model card)")
    if missing:
        raise UsageError(
            f"{folder} is not a complete saved student (missing: {', '.join(missing)}); save it first with "
            "distill_trainer.report.hub.save_student(trainer, folder, card=...)"
        )
    return folder


def _hub_is_offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return constants.is_offline_mode() or any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def push_student(
    folder,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    endpoint: str | None = None,
) -> str:
    """Upload a saved student folder to the Hub repository `repo_id` (created if needed); returns the
    commit URL.

    The folder is only read: whatever goes wrong here, it stays complete on disk.
    """
    from huggingface_hub import HfApi, get_token

    folder = check_student_folder(folder)
    kept = f"The student is saved and intact in {folder}; push it later with `hf upload {repo_id} {folder}`"
    _check_adapter_base(folder, repo_id)
    if not repo_id:
        raise UsageError(f"push_to_hub needs a repository: set hub_model_id (e.g. your-name/student). {kept}")
    if _hub_is_offline():
        raise UsageError(
            f"cannot push to the Hub repository {repo_id}: offline mode is on (HF_HUB_OFFLINE). {kept}"
        )
    token = token or get_token()
    if not token:
        raise UsageError(
            f"cannot push to the Hub repository {repo_id}: no Hugging Face token (run `hf auth login` "
            f"or set HF_TOKEN, or set hub_token). {kept}"
        )
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            revision=revision,
            commit_message=commit_message or "Upload student trained with distill-trainer",
            ignore_patterns=["*.partial", "checkpoint-*"],
        )
    except _network_errors() as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UsageError(f"could not push to the Hub repository {repo_id} ({first_line}). {kept}") from None
    return commit.commit_url


def _check_adapter_base(folder: Path, repo_id: str) -> None:
    """An adapter loads only where its base model does: refuse to publish one whose base is a local folder."""
    import json

    from distill_trainer.models.provenance import describe_base

    path = folder / "adapter_config.json"
    if not path.is_file():
        return
    try:
        base = json.loads(path.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except ValueError:
        raise UsageError(f"{path} is not valid JSON; save the student again before pushing it") from None
    if describe_base(base).hub_id is None:
        raise UsageError(
            f"not pushing {folder} to {repo_id}: its LoRA adapter's base model {base!r} is a local folder "
            "with no Hub id, so nobody who downloads the adapter could load it; save the student with "
            "merge_lora=True (distill_trainer.report.hub: save_student or ship_student) to push a plain "
            "model, or train on a Hub model id"
        )


def _network_errors() -> tuple[type[BaseException], ...]:
    """What a failed upload raises: the Hub's HTTP errors and its HTTP client's transport errors, whichever
    client this huggingface_hub version uses (httpx in 1.x, httpx2 in 2.x)."""
    import importlib

    from huggingface_hub.errors import HfHubHTTPError

    errors = [HfHubHTTPError, OSError]
    for client in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(client).HTTPError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)
