"""Checkpoints that are complete or absent, and resuming from the last complete one.

    trainer = ContextDistillationTrainer(..., args=DistillationConfig(..., resume_from_checkpoint="true"))
    trainer.train()          # continues from the last complete checkpoint-N in output_dir

The stock `Trainer` writes `checkpoint-N` file by file (weights, optimizer, scheduler, RNG states, and
`trainer_state.json` last). A process killed in between leaves a `checkpoint-N` that looks like the newest
one but cannot be loaded, and `resume_from_checkpoint=True` would pick it. Here every checkpoint is
written under `output_dir/.checkpoint-staging/` and renamed into place once all of its files (those of
every process) are on disk; a rename within one filesystem is atomic, so a crash while saving leaves the
previous checkpoint as the newest one. Older checkpoints are rotated out (`save_total_limit`) only after
the new one is in place.

Each published checkpoint holds `checkpoint_manifest.json`: the size and sha256 of every file in it.
A checkpoint counts as complete only when every listed file is there unchanged (one without a manifest,
from the stock Trainer, needs a readable trainer state and its weights); resuming with `true` passes
over a damaged checkpoint with one warning and takes the previous complete one.

`resume_from_checkpoint` is read from the arguments when `train()` is not given one, so a recipe file
can say `resume_from_checkpoint: true` (the last complete checkpoint) or give a checkpoint's path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from distill_trainer.errors import UsageError
from distill_trainer.integrity import disk_space_checked, file_records, files_problem
from distill_trainer.training.trainer_internals import TrainerInternalsMixin, checkpoint_folder_name

logger = logging.getLogger(__name__)

STAGING_DIR = ".checkpoint-staging"  # inside output_dir; never matches the checkpoint-N pattern
TRAINER_STATE = "trainer_state.json"  # written last by the Trainer: a checkpoint without it is incomplete
MANIFEST = "checkpoint_manifest.json"  # written by us once every file is on disk: sizes and checksums
WEIGHT_FILES = (
    "model.safetensors",
    "adapter_model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0", "none", "")
_WARNED: set = set()


def parse_resume_setting(value) -> bool | str | None:
    """`resume_from_checkpoint` as written in a recipe (YAML `true` arrives as the string "True"):
    True for the last checkpoint, a path for that checkpoint, None for a fresh start."""
    if value is None or value is False:
        return None
    if value is True:
        return True
    text = str(value).strip()
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return None
    return text


def write_manifest(path) -> None:
    """Record the size and sha256 of every file of a fully written checkpoint directory."""
    path = Path(path)
    files = file_records(path, skip=(MANIFEST,))
    (path / MANIFEST).write_text(json.dumps({"files": files}, indent=1), encoding="utf-8")


def checkpoint_problem(path) -> str | None:
    """What makes a checkpoint directory unusable (None: complete): a file its manifest lists that is
    missing, of another size or with another checksum; without a manifest, no readable trainer state or
    no weights."""
    path = Path(path)
    try:
        json.loads((path / TRAINER_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"it has no readable {TRAINER_STATE} (its save was interrupted)"
    try:
        files = json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"]
    except FileNotFoundError:  # written by a tool that keeps no manifest
        if not any((path / name).is_file() for name in WEIGHT_FILES):
            return "it holds no model weights"
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return f"its {MANIFEST} is unreadable"
    return files_problem(path, files)


def is_complete_checkpoint(path) -> bool:
    return checkpoint_problem(path) is None


def checkpoint_dirs(output_dir) -> list[Path]:
    """The `checkpoint-N` directories of a run, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [
        (int(m.group(1)), p) for p in output_dir.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))
    ]
    return [p for _, p in sorted(found)]


# files whose presence means output_dir holds (part of) a run's results
RESULT_FILES = ("metrics.json", "model.safetensors", "adapter_model.safetensors", "pytorch_model.bin")


def run_results(output_dir) -> list[str]:
    """Names of a run's results in output_dir: metrics, weights, predictions, checkpoints."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return []
    found = [name for name in RESULT_FILES if (directory / name).exists()]
    found += sorted(p.name for p in directory.glob("predictions_*.jsonl"))
    return found + [p.name for p in checkpoint_dirs(directory)]


def last_complete_checkpoint(output_dir) -> Path | None:
    """The newest checkpoint that can be resumed from; incomplete ones (written by a tool that saves in
    place, then killed) are passed over with a warning."""
    for path in reversed(checkpoint_dirs(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        if (str(path), problem) not in _WARNED:  # validation and training both look: say it once
            _WARNED.add((str(path), problem))
            logger.warning("skipping checkpoint %s: %s; using the previous complete one", path, problem)
    return None


def resolve_resume(value, output_dir) -> str | None:
    """The checkpoint directory to resume from, or None; a setting that cannot be honoured is an error."""
    setting = parse_resume_setting(value)
    if setting is None:
        return None
    if setting is True:
        last = last_complete_checkpoint(output_dir)
        if last is None:
            damaged = checkpoint_dirs(output_dir)
            found = f" ({damaged[-1].name}: {checkpoint_problem(damaged[-1])})" if damaged else ""
            raise UsageError(
                f"resume_from_checkpoint: true, but output_dir {output_dir} holds no complete "
                f"checkpoint-N{found}; remove resume_from_checkpoint to start afresh, or point output_dir at "
                "the run to continue"
            )
        return str(last)
    if not Path(setting).is_dir():
        raise UsageError(
            f"resume_from_checkpoint {setting} is not a complete checkpoint (a checkpoint-N directory with "
            f"{TRAINER_STATE}); give one, or true for the last one in output_dir"
        )
    problem = checkpoint_problem(setting)
    if problem is not None:
        raise UsageError(
            f"resume_from_checkpoint {setting} is not a complete checkpoint: {problem}; give an earlier "
            "checkpoint, or true for the last complete one in output_dir"
        )
    return setting


def remove_stale_checkpoints(output_dir) -> None:
    """Checkpoints of an earlier run in the same output_dir: starting over (overwrite_output_dir) must not
    leave them to be resumed later as if they were this run's."""
    for path in checkpoint_dirs(output_dir):
        logger.warning("overwrite_output_dir: removing %s of an earlier run", path)
        shutil.rmtree(path)
    shutil.rmtree(Path(output_dir) / STAGING_DIR, ignore_errors=True)


def _publish(staged: Path, final: Path, staging_root: Path) -> None:
    """Move a fully written checkpoint to its final name (atomic when nothing is there yet)."""
    replaced = None
    if final.exists():  # the same step saved again (a run resumed from an earlier checkpoint)
        replaced = staging_root / f"replaced-{final.name}"
        shutil.rmtree(replaced, ignore_errors=True)
        os.replace(final, replaced)
    os.replace(staged, final)
    if replaced is not None:
        shutil.rmtree(replaced, ignore_errors=True)
    try:
        staging_root.rmdir()  # only when empty: keeps output_dir tidy
    except OSError:
        pass


def _checkpoint_bytes(run_dir) -> int | None:
    """The size of the newest checkpoint in `run_dir`: about what the next one needs (None: no checkpoint)."""
    found = checkpoint_dirs(run_dir)
    return sum(p.stat().st_size for p in found[-1].rglob("*") if p.is_file()) if found else None


class AtomicCheckpointMixin(TrainerInternalsMixin):
    """`Trainer` mixin: checkpoints appear only when complete, and `args.resume_from_checkpoint` is honoured.

    Every process writes its part of a checkpoint (its RNG state, its shard under DeepSpeed/FSDP) into the
    staging directory; after a barrier, the process that saves moves it into place and rotates old
    checkpoints out. The stock save code is redirected through `trainer_internals`.
    """

    def write_checkpoint(self, run_dir: Path, write_files) -> None:
        name = checkpoint_folder_name(self.state.global_step)
        staging_root = run_dir / STAGING_DIR
        staged, final = staging_root / name, run_dir / name
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # what a crash in an earlier save left behind
        self.accelerator.wait_for_everyone()
        # a full disk: one line, the staged files removed, the checkpoints before this one kept
        needed = _checkpoint_bytes(run_dir)

        def remove_staged():
            shutil.rmtree(staged, ignore_errors=True)
            with contextlib.suppress(OSError):
                staging_root.rmdir()  # only when empty

        def space():
            return disk_space_checked(final, needed, cleanup=remove_staged)

        with space():
            write_files(staging_root)
            if self.args.should_save:
                self.add_checkpoint_files(staged)
        self.accelerator.wait_for_everyone()  # every process has written its files
        if self.args.should_save:
            self._point_best_checkpoint_at(run_dir, staged)
            with space():
                write_manifest(staged)
            _publish(staged, final, staging_root)
            rotate_checkpoints(
                output_dir=str(run_dir),
                save_total_limit=self.args.save_total_limit,
                best_model_checkpoint=self.state.best_model_checkpoint,
                use_mtime=True,
            )
        self.accelerator.wait_for_everyone()

    def _point_best_checkpoint_at(self, run_dir: Path, staged: Path) -> None:
        """The Trainer looked for the best checkpoint in the staging area; name its final place instead."""
        best_step = getattr(self.state, "best_global_step", None)
        if not best_step:
            return
        best = run_dir / f"{PREFIX_CHECKPOINT_DIR}-{best_step}"
        if best_step == self.state.global_step or best.is_dir():
            self.state.best_model_checkpoint = str(best)
            self.state.save_to_json(str(staged / TRAINER_STATE))

    def train(self, resume_from_checkpoint=None, trial=None, **kwargs):
        """As `Trainer.train`; without `resume_from_checkpoint`, `args.resume_from_checkpoint` decides."""
        if resume_from_checkpoint is None:
            resume_from_checkpoint = resolve_resume(self.args.resume_from_checkpoint, self.args.output_dir)
        elif resume_from_checkpoint is not False:
            resume_from_checkpoint = resolve_resume(resume_from_checkpoint, self.args.output_dir)
        if self.args.should_save:
            if resume_from_checkpoint is None and getattr(self.args, "overwrite_output_dir", False):
                remove_stale_checkpoints(self.args.output_dir)
            shutil.rmtree(Path(self.args.output_dir) / STAGING_DIR, ignore_errors=True)
        if resume_from_checkpoint:
            logger.info("resuming from %s", resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, **kwargs)
