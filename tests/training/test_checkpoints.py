"""Checkpoints are complete or absent (a crash while saving leaves the previous one usable), resuming picks
the last complete one, and a skipped non-finite batch changes no weight."""

import pytest
import torch
from helpers import make_trainer, poison
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from distill_trainer.errors import UsageError
from distill_trainer.training.checkpoints import (
    STAGING_DIR,
    checkpoint_dirs,
    last_complete_checkpoint,
    parse_resume_setting,
    resolve_resume,
)


class CrashWhileSaving(Exception):
    pass


def crash_in_save_number(monkeypatch, number):
    """Make the `number`-th checkpoint save die half-way: after the weights and the optimizer are written,
    before the RNG states and the trainer state (as a killed process would)."""
    calls = {"n": 0}
    original = Trainer._save_rng_state

    def save_rng_state(self, output_dir):
        calls["n"] += 1
        if calls["n"] == number:
            raise CrashWhileSaving(output_dir)
        return original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)


def weights(output_dir):
    return load_file(str(output_dir / "model.safetensors"))


@pytest.mark.integration
def test_a_crash_while_saving_leaves_the_previous_checkpoint_usable(
    tmp_path, tokenizer, student, teacher, monkeypatch
):
    from distill_trainer.testing import build_model

    out = tmp_path / "out"
    settings = {"save_strategy": "steps", "save_steps": 1, "max_steps": 3}
    crash_in_save_number(monkeypatch, 2)
    with pytest.raises(CrashWhileSaving):
        make_trainer(tmp_path, student, teacher, tokenizer, **settings).train()
    # the half-written checkpoint-2 never appeared under its name; checkpoint-1 is the newest
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-1"]
    assert (out / STAGING_DIR / "checkpoint-2" / "model.safetensors").is_file()
    assert last_complete_checkpoint(out).name == "checkpoint-1"
    monkeypatch.undo()

    resumed = make_trainer(
        tmp_path,
        build_model(len(tokenizer), seed=0),
        teacher,
        tokenizer,
        resume_from_checkpoint="true",
        **settings,
    )
    resumed.train()
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert not (out / STAGING_DIR).exists()
    steps = [log["step"] for log in resumed.state.log_history if "loss" in log]
    assert steps == [1, 2, 3]  # step 1 comes from checkpoint-1's state, 2 and 3 were trained again

    # the same three steps without a crash give the same weights
    reference = make_trainer(
        tmp_path / "ref", build_model(len(tokenizer), seed=0), teacher, tokenizer, **settings
    )
    reference.train()
    got, expected = weights(out / "checkpoint-3"), weights(tmp_path / "ref" / "out" / "checkpoint-3")
    assert all(torch.equal(got[name], expected[name]) for name in expected)


@pytest.mark.integration
def test_rotation_keeps_the_newest_complete_checkpoints(tmp_path, tokenizer, student, teacher):
    trainer = make_trainer(
        tmp_path,
        student,
        teacher,
        tokenizer,
        save_strategy="steps",
        save_steps=1,
        max_steps=3,
        save_total_limit=2,
    )
    trainer.train()
    out = tmp_path / "out"
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-2", "checkpoint-3"]
    assert not (out / STAGING_DIR).exists()


@pytest.mark.integration
def test_the_best_checkpoint_is_named_by_its_final_path(tmp_path, tokenizer, student, teacher):
    from helpers import make_args, make_dataset

    from distill_trainer import ContextDistillationTrainer, TwoViewCollator

    args = make_args(
        tmp_path,
        save_strategy="steps",
        save_steps=1,
        max_steps=3,
        eval_strategy="steps",
        eval_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=False,
    )
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=args,
        train_dataset=make_dataset(tokenizer),
        eval_dataset=make_dataset(tokenizer, n=4),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best.startswith(str(tmp_path / "out" / "checkpoint-")) and STAGING_DIR not in best
    assert (tmp_path / "out" / best.rsplit("/", 1)[-1] / "trainer_state.json").is_file()


def test_resume_settings(tmp_path):
    assert parse_resume_setting("True") is True and parse_resume_setting("false") is None
    assert (
        parse_resume_setting(None) is None
        and parse_resume_setting("runs/x/checkpoint-4") == "runs/x/checkpoint-4"
    )
    with pytest.raises(UsageError, match="holds no complete checkpoint"):
        resolve_resume("true", tmp_path)
    (tmp_path / "checkpoint-7").mkdir()  # e.g. written in place by another tool, then killed
    (tmp_path / "checkpoint-7" / "trainer_state.json").write_text('{"global_st')
    with pytest.raises(UsageError, match="is not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoint-7"), tmp_path)
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "trainer_state.json").write_text("{}")
    with pytest.raises(UsageError, match=r"checkpoint-7: it has no readable trainer_state\.json"):
        resolve_resume("true", tmp_path)  # a checkpoint without a manifest needs its weights too
    (tmp_path / "checkpoint-5" / "model.safetensors").write_bytes(b"weights")
    assert resolve_resume("true", tmp_path) == str(tmp_path / "checkpoint-5")


@pytest.mark.integration
def test_a_skipped_nonfinite_batch_changes_no_weight(tmp_path, tokenizer, student, teacher):
    """Adam keeps momentum: a zero gradient would still move the weights. A skipped batch leaves every
    gradient None, so the optimizer leaves every weight (and its state) alone."""
    poison(student, from_call=3)  # the student's 3rd forward (step 3) onwards gives NaN logits
    snapshots = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            snapshots[state.global_step] = {k: v.detach().clone() for k, v in model.named_parameters()}

    trainer = make_trainer(tmp_path, student, teacher, tokenizer, skip_nonfinite_loss=True, max_steps=4)
    trainer.add_callback(Snapshot())
    trainer.train()
    assert any(not torch.equal(snapshots[2][k], snapshots[1][k]) for k in snapshots[1])  # finite steps train
    for step in (3, 4):
        assert all(torch.equal(snapshots[step][k], snapshots[2][k]) for k in snapshots[2]), step
    assert [log.get("skipped_batches") for log in trainer.state.log_history if "loss" in log] == [
        None,
        None,
        1.0,
        1.0,
    ]


@pytest.mark.integration
def test_overwrite_output_dir_removes_an_earlier_runs_checkpoints(tmp_path, tokenizer, student, teacher):
    stale = tmp_path / "out" / "checkpoint-9"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text("{}")
    make_trainer(tmp_path, student, teacher, tokenizer, max_steps=1, overwrite_output_dir=True).train()
    assert not stale.exists()  # a later resume_from_checkpoint: true must not pick the earlier run's step 9


@pytest.mark.integration
def test_resuming_from_an_earlier_checkpoint_replaces_the_later_ones(tmp_path, tokenizer, teacher):
    from distill_trainer.testing import build_model

    out, settings = tmp_path / "out", {"save_strategy": "steps", "save_steps": 1, "max_steps": 2}
    make_trainer(tmp_path, build_model(len(tokenizer), seed=0), teacher, tokenizer, **settings).train()
    first = weights(out / "checkpoint-2")
    make_trainer(
        tmp_path,
        build_model(len(tokenizer), seed=0),
        teacher,
        tokenizer,
        resume_from_checkpoint=str(out / "checkpoint-1"),
        **settings,
    ).train()
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-1", "checkpoint-2"]
    assert not (out / STAGING_DIR).exists()
    again = weights(out / "checkpoint-2")  # written anew, over the old one, with the same numbers
    assert all(torch.equal(again[name], first[name]) for name in first)


@pytest.mark.integration
def test_resuming_from_the_last_checkpoint_trains_no_step_more(tmp_path, tokenizer, teacher):
    # found by checks/faults.py: killed after training (in its evaluation), a run with max_steps inside
    # an epoch (3 steps, 2 per epoch) resumed from checkpoint-3 and trained a step 4
    from distill_trainer.testing import build_model

    settings = dict(save_strategy="steps", save_steps=1, max_steps=3)
    first = make_trainer(tmp_path, build_model(len(tokenizer), seed=0), teacher, tokenizer, **settings)
    whole = first.train()
    weights = load_file(tmp_path / "out" / "checkpoint-3" / "model.safetensors")
    again = make_trainer(
        tmp_path,
        build_model(len(tokenizer), seed=5),
        teacher,
        tokenizer,
        resume_from_checkpoint="true",
        **settings,
    )
    resumed = again.train()
    assert resumed.global_step == 3 and not (tmp_path / "out" / "checkpoint-4").exists()
    assert resumed.training_loss == whole.training_loss
    assert all(torch.equal(p, weights[n]) for n, p in again.model.state_dict().items() if n in weights)
