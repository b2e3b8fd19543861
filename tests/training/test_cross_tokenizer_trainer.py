"""A teacher with another tokenizer teaches replies: the trainer takes the cross-tokenizer loss, trains the
student only (off-policy and on its own rollouts), and refuses the teacher output cache with the fix; a
teacher with the student's tokenizer keeps the same-tokenizer loss, bit for bit."""

from __future__ import annotations

import logging

import pytest
import torch
from datasets import Dataset
from helpers import make_args

from distill_trainer import ContextDistillationTrainer, TwoViewCollator
from distill_trainer.errors import UsageError
from distill_trainer.testing import build_chat_tokenizer, build_metaspace_tokenizer, build_model
from distill_trainer.training.teacher_signal import LiveCrossTokenizerTeacher, LiveFullVocabularyTeacher
from distill_trainer.views.cross_tokenizer import CrossTokenizerReplies, build_cross_tokenizer_chat_views

CONTEXT = "Answer in one short sentence."
PROMPTS = ["Does the cat sit on the mat?", "Who saw the lawyer?", "Do two dogs run?", "Is the man playing?"]
REPLIES = ["Yes the cat is sitting.", "The doctor saw the lawyer.", "Yes, dogs run in the park.", "No."]


@pytest.fixture(scope="module")
def tokenizers():
    return build_chat_tokenizer(), build_chat_tokenizer(tokenizer=build_metaspace_tokenizer())


def _trainer(tmp_path, tokenizers, **overrides):
    student_tokenizer, teacher_tokenizer = tokenizers
    replies = CrossTokenizerReplies(student_tokenizer, teacher_tokenizer)
    rows = [build_cross_tokenizer_chat_views(replies, p, r, CONTEXT) for p, r in zip(PROMPTS, REPLIES)]
    options = dict(max_steps=2, per_device_train_batch_size=2, learning_rate=1e-2, rollout_max_new_tokens=4)
    options.update(overrides)
    student = build_model(len(student_tokenizer), seed=0)
    teacher = build_model(len(teacher_tokenizer), seed=1, hidden_size=48)
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, **options),
        train_dataset=Dataset.from_list(rows),
        data_collator=TwoViewCollator(student_tokenizer.pad_token_id),
        processing_class=student_tokenizer,
        teacher_tokenizer=teacher_tokenizer,
    )
    return trainer, student, teacher


@pytest.mark.parametrize("lmbda", [0.0, 1.0])
def test_a_teacher_with_another_tokenizer_trains_the_student_only(
    tmp_path, tokenizers, lmbda, caplog, monkeypatch
):
    from distill_trainer.training import teacher_signal

    learned_from = []  # per loss call: whether the unmatched tokens learn the reply's tokens

    def recording(*args, **kwargs):
        learned_from.append(kwargs["reply_is_teachers"])
        return chunked(*args, **kwargs)

    chunked = teacher_signal.chunked_cross_tokenizer_loss
    monkeypatch.setattr(teacher_signal, "chunked_cross_tokenizer_loss", recording)
    with caplog.at_level(logging.INFO, logger="distill_trainer.training.trainer"):
        trainer, student, teacher = _trainer(tmp_path, tokenizers, lmbda=lmbda)
    assert "cross-tokenizer loss is used" in caplog.text
    assert isinstance(trainer.teacher_signal, LiveCrossTokenizerTeacher)
    before_student = {k: v.clone() for k, v in student.state_dict().items()}
    before_teacher = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "kd_loss" in log]
    assert logs and all(torch.isfinite(torch.tensor([log["loss"], log["kd_loss"]])).all() for log in logs)
    assert all(log["kd_loss"] > 0 for log in logs)
    assert any(not torch.equal(before_student[k], v) for k, v in student.state_dict().items())
    assert all(torch.equal(before_teacher[k], v) for k, v in teacher.state_dict().items())
    if lmbda:
        assert [source for _, source in trainer.rollout_steps] == ["student", "student"]
    # the teacher's replies teach their tokens where the tokenizers split differently; the student's own
    # rollouts do not (they would teach the student what it already wrote)
    assert learned_from and set(learned_from) == {not lmbda}


def test_the_teacher_output_cache_and_top_k_are_refused_with_the_fix(tmp_path, tokenizers):
    with pytest.raises(UsageError, match="teacher_output_cache: false"):
        _trainer(tmp_path, tokenizers, teacher_output_cache=True, teacher_cache_dir=str(tmp_path / "c"))
    with pytest.raises(UsageError, match="loss_top_k: 0"):
        _trainer(tmp_path, tokenizers, loss_top_k=5)


def test_rows_without_the_alignment_are_refused_with_the_fix(tmp_path, tokenizers):
    from distill_trainer.views.chat import build_chat_views

    trainer, _, _ = _trainer(tmp_path, tokenizers)
    student_tokenizer = tokenizers[0]
    batch = TwoViewCollator(student_tokenizer.pad_token_id)(
        [build_chat_views(student_tokenizer, PROMPTS[0], REPLIES[0], CONTEXT)]
    )
    with pytest.raises(UsageError, match="views.cross_tokenizer"):
        trainer.compute_loss(trainer.model, batch)


def test_a_teacher_with_the_students_tokenizer_trains_exactly_as_without_the_cross_tokenizer_path(tmp_path):
    from distill_trainer.views.chat import build_chat_views

    tokenizer = build_chat_tokenizer()
    same_vocabulary = build_chat_tokenizer()  # another object, the same tokens: not a cross-tokenizer pair
    rows = [build_chat_views(tokenizer, p, r, CONTEXT) for p, r in zip(PROMPTS, REPLIES)]
    batch = TwoViewCollator(tokenizer.pad_token_id)(rows[:2])
    assert not {"teacher_answer_mask", "teacher_pair_index", "exact_match"} & batch.keys()
    weights = []
    for name, teacher_tokenizer in (("none", None), ("same", same_vocabulary)):
        torch.manual_seed(0)
        student = build_model(len(tokenizer), seed=0)
        trainer = ContextDistillationTrainer(
            model=student,
            teacher=build_model(len(tokenizer), seed=1, hidden_size=48),
            args=make_args(tmp_path / name, max_steps=2, per_device_train_batch_size=2, loss_chunk_size=3),
            train_dataset=Dataset.from_list(rows),
            data_collator=TwoViewCollator(tokenizer.pad_token_id),
            processing_class=tokenizer,
            teacher_tokenizer=teacher_tokenizer,
        )
        assert trainer.cross_tokenizer is None
        assert type(trainer.teacher_signal) is LiveFullVocabularyTeacher
        trainer.train()
        weights.append(student.state_dict())
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
