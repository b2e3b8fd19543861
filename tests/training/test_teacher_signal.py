"""The trainer chooses where the teacher's signal comes from when it is built, and one loss function
serves training and evaluation (training/teacher_signal.py)."""

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import DEMOS, ROWS, make_args, make_dataset, make_trainer

import distill_trainer
from distill_trainer import ContextDistillationTrainer, TwoViewCollator, build_views
from distill_trainer.errors import UsageError
from distill_trainer.training.losses import check_cached_token_ids, sparse_distillation_loss
from distill_trainer.training.teacher_signal import (
    CachedTeacherOutputs,
    GoldLabelsOnly,
    LiveFullVocabularyTeacher,
    LiveLabelWordTeacher,
)


def _label_ids(tokenizer):
    return [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" Yes", " No")]


def _batch(tokenizer):
    return TwoViewCollator(tokenizer.pad_token_id)([build_views(tokenizer, q, a, DEMOS) for q, a in ROWS])


def _train_and_eval_loss(trainer, batch):
    model = trainer.model
    model.train()
    train = trainer.compute_loss(model, batch).detach()
    model.eval()
    with torch.no_grad():
        evaluated, outputs = trainer.compute_loss(model, batch, return_outputs=True)
    return train, evaluated, outputs


@pytest.mark.parametrize("loss_top_k", [0, 3])
def test_eval_loss_equals_train_loss_over_the_full_vocabulary(
    tmp_path, tokenizer, student, teacher, loss_top_k
):
    trainer = make_trainer(tmp_path, student, teacher, tokenizer, loss_top_k=loss_top_k, alpha=0.7)
    train, evaluated, outputs = _train_and_eval_loss(trainer, _batch(tokenizer))
    assert torch.equal(train, evaluated), (train, evaluated)
    assert outputs == {}  # no (batch, length, vocabulary) logits are built for evaluation either


def test_eval_honours_loss_top_k(tmp_path, tokenizer, student, teacher):
    batch = _batch(tokenizer)
    whole = make_trainer(tmp_path, student, teacher, tokenizer)
    top = make_trainer(tmp_path, student, teacher, tokenizer, loss_top_k=2)
    _, whole_eval, _ = _train_and_eval_loss(whole, batch)
    _, top_eval, _ = _train_and_eval_loss(top, batch)
    # the top-2 + tail comparison coarsens the distributions: a smaller KL, as in training
    assert top_eval < whole_eval


def test_eval_loss_equals_train_loss_over_the_label_words(tmp_path, tokenizer, student, teacher):
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, distill_vocab="label_words", alpha=0.5),
        train_dataset=make_dataset(tokenizer),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        label_token_ids=_label_ids(tokenizer),
    )
    train, evaluated, outputs = _train_and_eval_loss(trainer, _batch(tokenizer))
    assert torch.equal(train, evaluated)
    assert outputs["logits"].shape[:2] == _batch(tokenizer)["answer_ids"].shape


def test_the_source_is_chosen_when_the_trainer_is_built(tmp_path, tokenizer, student, teacher):
    assert isinstance(
        make_trainer(tmp_path, student, teacher, tokenizer).teacher_signal, LiveFullVocabularyTeacher
    )
    gold = make_trainer(tmp_path, student, None, tokenizer, alpha=0.0)
    assert isinstance(gold.teacher_signal, GoldLabelsOnly) and gold.teacher is None
    label_words = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, distill_vocab="label_words"),
        train_dataset=make_dataset(tokenizer),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        label_token_ids=_label_ids(tokenizer),
    )
    assert isinstance(label_words.teacher_signal, LiveLabelWordTeacher)
    # a live teacher reads the teacher view: a batch without it fails once, naming what is missing
    batch = _batch(tokenizer)
    for key in [k for k in batch if k.startswith("teacher_")]:
        del batch[key]
    with pytest.raises(UsageError, match="a batch lacks teacher_input_ids.*live teacher, full vocabulary"):
        make_trainer(tmp_path, student, teacher, tokenizer).compute_loss(student, batch)


def test_a_dataset_with_cached_outputs_chooses_them_and_a_batch_without_them_fails(
    tmp_path, tokenizer, student
):
    rows = [{**build_views(tokenizer, q, a, DEMOS), "teacher_label_logprobs": [-0.1, -2.4]} for q, a in ROWS]
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=None,
        args=make_args(tmp_path, distill_vocab="label_words"),
        train_dataset=Dataset.from_list(rows),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        label_token_ids=_label_ids(tokenizer),
    )
    assert isinstance(trainer.teacher_signal, CachedTeacherOutputs) and trainer.teacher_from_cache
    with pytest.raises(
        UsageError, match="lacks teacher_label_logprobs.*cached teacher outputs.*teacher_output_cache"
    ):
        trainer.compute_loss(student, _batch(tokenizer))


def test_a_cache_for_another_vocabulary_fails_in_one_check(tmp_path):
    ids = torch.tensor([[[3, 11]]])
    with pytest.raises(UsageError, match="go up to 11 but the student has 10 logits.*another vocabulary"):
        check_cached_token_ids(ids, 10)
    with pytest.raises(UsageError, match="another vocabulary"):
        sparse_distillation_loss(
            torch.zeros(1, 1, 10), torch.tensor([[[-0.1, -2.3]]]), ids, torch.tensor([[-3.0]])
        )
    # the check and its message exist once in the library, as do the empty-batch and missing-cache ones
    source = "".join(p.read_text() for p in Path(distill_trainer.__file__).parent.rglob("*.py"))
    assert source.count("built for another vocabulary") == 1
    assert source.count("no answer tokens") == 1
    assert source.count("carries no cached teacher outputs") == 0
