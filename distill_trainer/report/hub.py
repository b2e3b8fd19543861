"""Ship a trained student: a model card, one self-contained folder, and an optional Hub push.

    from distill_trainer.report.hub import save_student, ship_student
    from distill_trainer.report.model_card import card_for_recipe

    trainer.train()
    save_student(trainer, config.output_dir)  # the weights are safe on disk before evaluating
    metrics = {"mnli": {...}, "hans": {...}}  # {task: metrics} as nli.evaluation computes them
    card = card_for_recipe(student_args, config, metrics, "mnli", data_reports=data.reports)
    recipe = resolved_config(configs, given)  # run/runner.py
    ship_student(trainer, config.output_dir, card=card, recipe=recipe, write_weights=False)

Every Hub matter of the project is here: the folder, the push (`push_student`, which refuses a folder
nobody could load), and their checks. The card itself (`StudentCard`, `card_for_recipe`,
`build_model_card`) is built in `model_card.py`. The trainer never uploads by itself: it switches the
stock Trainer's repository creation and checkpoint uploads off (`training/trainer_internals.py`).

`ship_student` = `save_student` (every process calls it; only the main process writes) followed, when
`config.push_to_hub` is set, by `push_student(folder, config.hub_model_id, ...)`. The folder holds the
weights (a full model, or for LoRA students the adapter, or with `merge_lora=True` the merged model),
the tokenizer, `README.md` (the card) and `recipe.yaml`, and loads back with `AutoModelForCausalLM` or
`peft.AutoPeftModelForCausalLM` anywhere: an adapter on an embedded alias records the alias's upstream
Hub id as its base, and one on a local folder is refused by `push_student` (nobody else could load it;
`merge_lora=True` is the fix). A push that cannot happen (offline, no token, Hub unreachable) raises
one `UsageError` after the folder is complete, and leaves it as it was: push it later with
`hf upload <repo id> <folder>`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

from distill_trainer.errors import UsageError
from distill_trainer.integrity import disk_space_checked
from distill_trainer.integrity import write_text_atomically as _write_atomically
from distill_trainer.report.card_text import RECIPE_FILE, recipe_yaml
from distill_trainer.report.model_card import StudentCard, build_model_card

CARD_FILE = "README.md"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
)

# ---- the folder ----


def save_student(
    student,
    output_dir,
    *,
    card: StudentCard | None = None,
    recipe=None,
    tokenizer=None,
    merge_lora: bool = False,
    write_weights: bool = True,
) -> Path:
    """Save a trained student, its tokenizer, model card and recipe into `output_dir`; returns the folder.

    `student` is the trainer (preferred: it gathers sharded weights under ZeRO-3/FSDP and writes from the
    main process only; call this on every process) or a model. LoRA students are saved as the adapter, or
    with `merge_lora=True` as a plain model with the adapters merged into the weights (the in-memory
    student is left untouched; merging holds a second copy of the student for a moment).
    `write_weights=False` only (re)writes the tokenizer, card and recipe next to weights saved earlier
    (a recipe saves the weights right after training, and the card once the evaluation is done).
    """
    trainer = student if hasattr(student, "save_model") and hasattr(student, "accelerator") else None
    model = trainer.accelerator.unwrap_model(trainer.model) if trainer is not None else student
    tokenizer = tokenizer if tokenizer is not None else getattr(trainer, "processing_class", None)
    is_writer = trainer is None or trainer.args.should_save
    folder = Path(output_dir)
    is_adapter = hasattr(model, "peft_config") and not merge_lora
    if merge_lora and not hasattr(model, "merge_and_unload"):
        raise UsageError("merge_lora=True needs a LoRA student; a full or BitFit student is saved as it is")
    if merge_lora and trainer is not None and _weights_are_sharded(trainer):
        raise UsageError(
            "merge_lora=True cannot merge weights sharded by ZeRO-3/FSDP; save the adapter "
            "(merge_lora=False), then merge it on one process with "
            "AutoPeftModelForCausalLM.from_pretrained(folder).merge_and_unload()"
        )

    if is_adapter:
        # a base in the local embedded cache is recorded by its upstream Hub id: the adapter must load
        # on machines without that cache (the card says which GGUF the trained-on weights came from)
        _record_hub_base(model)
    # a full disk: one line, and the files this save created removed (a checkpoint keeps the weights)
    before = set(folder.iterdir()) if folder.is_dir() else set()
    with disk_space_checked(folder, _weight_bytes(model), cleanup=lambda: _remove_new_files(folder, before)):
        if write_weights:
            _save_weights(trainer, model, folder, merge_lora, is_writer)
        if is_writer and tokenizer is not None:
            tokenizer.save_pretrained(folder)
    if is_writer:
        hub_model_id = getattr(getattr(trainer, "args", None), "hub_model_id", None)
        card = card or StudentCard(
            model_name=hub_model_id or folder.name, base_model=_base_model_name(model), repo_id=hub_model_id
        )
        text = recipe_yaml(recipe)
        if text:
            _write_atomically(folder / RECIPE_FILE, text)
        _write_atomically(folder / CARD_FILE, str(build_model_card(card, text or None, adapter=is_adapter)))
    if trainer is not None:
        trainer.accelerator.wait_for_everyone()
    return folder


def _save_weights(trainer, model, folder: Path, merge_lora: bool, is_writer: bool) -> None:
    if merge_lora:
        if is_writer:
            copy.deepcopy(model).merge_and_unload().save_pretrained(folder)
    elif trainer is not None:
        # every process takes part (ZeRO-3 gathers the shards); the Trainer writes from the main one only.
        # _internal_call: the Trainer would otherwise push to the Hub here, before the card exists
        trainer.save_model(str(folder), _internal_call=True)
    else:
        model.save_pretrained(folder)


def _weight_bytes(model) -> int:
    """About what the saved weights take: every parameter (the trainable ones for an adapter)."""
    adapter = hasattr(model, "peft_config")
    return sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not adapter)


def _remove_new_files(folder: Path, before: set) -> None:
    for path in set(folder.iterdir()) - before if folder.is_dir() else ():
        if path.is_file():
            path.unlink(missing_ok=True)


def _weights_are_sharded(trainer) -> bool:
    from accelerate.utils import DistributedType

    if trainer.accelerator.distributed_type == DistributedType.FSDP:
        return True
    plugin = getattr(trainer.accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def _record_hub_base(model) -> None:
    from distill_trainer.models.provenance import describe_base

    for config in model.peft_config.values():
        base = describe_base(config.base_model_name_or_path)
        if base.hub_id and base.hub_id != config.base_model_name_or_path:
            config.base_model_name_or_path = base.hub_id


def _base_model_name(model) -> str:
    config = getattr(model, "peft_config", {}).get("default") if hasattr(model, "peft_config") else None
    if config is not None and config.base_model_name_or_path:
        return config.base_model_name_or_path
    return getattr(model, "name_or_path", "") or "unknown"


def ship_student(
    trainer,
    output_dir,
    *,
    card: StudentCard | None = None,
    recipe=None,
    merge_lora: bool = False,
    write_weights: bool = True,
) -> Path:
    """`save_student`, then `push_student` when the trainer's arguments say `push_to_hub: true`."""
    folder = save_student(
        trainer, output_dir, card=card, recipe=recipe, merge_lora=merge_lora, write_weights=write_weights
    )
    args = trainer.args
    if args.push_to_hub and trainer.is_world_process_zero():
        push_student(
            folder,
            args.hub_model_id or Path(args.output_dir).name,
            token=args.hub_token,
            private=args.hub_private_repo,
            revision=args.hub_revision,
        )
    return folder


# ---- the push ----


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
