import copy

import pytest
import torch
from helpers import DEMOS, ROWS, make_args, make_dataset, make_trainer, poison

from distill_trainer import ContextDistillationTrainer, TwoViewCollator, build_views
from distill_trainer.errors import UsageError
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.loading import prepare_student


@pytest.mark.parametrize("multiple", [None, 16])
@pytest.mark.parametrize("side", ["left", "right"])
def test_answer_only_logits_equal_full_forward(tokenizer, student, side, multiple):
    feats = [build_views(tokenizer, q, a, DEMOS) for q, a in ROWS]
    batch = TwoViewCollator(tokenizer.pad_token_id, padding_side=side, pad_to_multiple_of=multiple)(feats)
    longest = max(len(f["teacher_input_ids"]) for f in feats)
    padded = -(-longest // multiple) * multiple if multiple else longest
    assert batch["teacher_input_ids"].shape[1] == padded
    student.eval()
    got = answer_logits(
        student,
        batch["teacher_input_ids"],
        batch["teacher_attention_mask"],
        batch["teacher_answer_positions"],
    )
    for row, f in enumerate(feats):  # reference: each example alone, unpadded, full logits
        full = student(torch.tensor([f["teacher_input_ids"]])).logits[0]
        n = len(f["answer_ids"])
        ref = full[f["teacher_answer_positions"]]
        assert (got[row, -n:] - ref).abs().max() <= 1e-5
    assert got.shape[:2] == batch["answer_ids"].shape


def test_batches_of_many_lengths_share_few_shapes_by_default(tokenizer):
    """Each new padded length costs a CPU run kernels and heap (views/text.py): the default rounds up."""
    feats = [build_views(tokenizer, q * repeat, a, DEMOS) for q, a in ROWS for repeat in range(1, 9)]
    collate = TwoViewCollator(tokenizer.pad_token_id)
    lengths = {len(f["input_ids"]) for f in feats}
    shapes = {collate([f])["input_ids"].shape[1] for f in feats}
    assert len(shapes) < len(lengths) and all(width % 16 == 0 for width in shapes)


@pytest.mark.integration
def test_four_steps_reduce_the_distillation_loss(tmp_path, tokenizer, student, teacher):
    # one batch seen four times, so the steps are comparable and the KD loss must fall at each one
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, learning_rate=3e-3),
        train_dataset=make_dataset(tokenizer, n=4),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.train()
    kd = [log["kd_loss"] for log in trainer.state.log_history if "kd_loss" in log]
    ce = [log["ce_loss"] for log in trainer.state.log_history if "ce_loss" in log]
    assert len(kd) == 4 and len(ce) == 4
    assert all(later < earlier for earlier, later in zip(kd, kd[1:])), kd
    assert kd[-1] < 0.5 * kd[0], kd


@pytest.mark.integration
def test_lora_student_changes_only_adapters(tmp_path, tokenizer, student, teacher):
    lora = prepare_student(student, "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    before = {k: v.clone() for k, v in lora.named_parameters()}
    make_trainer(tmp_path, lora, teacher, tokenizer, learning_rate=5e-2).train()
    after = dict(lora.named_parameters())
    adapters = [k for k in before if "lora_" in k]
    assert adapters
    assert all(torch.equal(before[k], after[k]) for k in before if "lora_" not in k)
    assert any(not torch.equal(before[k], after[k]) for k in adapters if "lora_B" in k)


def test_self_teacher_is_exactly_the_base_model(tmp_path, tokenizer, student):
    base = copy.deepcopy(student)
    lora = prepare_student(student, "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    with torch.no_grad():  # make the adapters matter, as they do after training
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    # the uncached teacher path, so the comparison can be exact (the prefix cache agrees to float rounding,
    # tested in teacher/test_output_cache.py)
    trainer = make_trainer(tmp_path, lora, "self", tokenizer, teacher_prefix_cache=False)
    batch = TwoViewCollator(tokenizer.pad_token_id)([build_views(tokenizer, q, a, DEMOS) for q, a in ROWS])
    lora.eval()
    got = trainer.teacher_answer_logits(batch)
    expected = answer_logits(
        base.eval(),
        batch["teacher_input_ids"],
        batch["teacher_attention_mask"],
        batch["teacher_answer_positions"],
    )
    assert torch.equal(got, expected)
    adapted = answer_logits(
        lora, batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_answer_positions"]
    )
    assert not torch.allclose(adapted, expected)


def _weights_after_one_step(tmp_path, tokenizer, student, teacher, batch, accumulation):
    trainer = make_trainer(
        tmp_path,
        student,
        teacher,
        tokenizer,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        optim="sgd",
        learning_rate=1.0,
        max_grad_norm=0.0,
        warmup_steps=0,
        lr_scheduler_type="constant",
        alpha=0.5,
    )
    trainer.train()
    return {k: v.detach().clone() for k, v in student.named_parameters()}


@pytest.mark.integration
def test_gradient_accumulation_4x2_equals_1x8(tmp_path, tokenizer, student, teacher):
    initial = {k: v.detach().clone() for k, v in student.named_parameters()}
    one = _weights_after_one_step(
        tmp_path, tokenizer, copy.deepcopy(student), teacher, batch=8, accumulation=1
    )
    four = _weights_after_one_step(
        tmp_path, tokenizer, copy.deepcopy(student), teacher, batch=2, accumulation=4
    )
    # with SGD and lr=1 the weight change is the gradient; answers of 1 and 3 tokens make the counts differ
    worst = max((one[k] - four[k]).abs().max().item() for k in one)
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1e-3
    assert worst <= 1e-5


@pytest.mark.integration
def test_label_words_distillation_trains(tmp_path, tokenizer, student, teacher):
    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" Yes", " No")]
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, distill_vocab="label_words"),
        train_dataset=make_dataset(tokenizer),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        label_token_ids=ids,
    )
    trainer.train()
    kd = [log["kd_loss"] for log in trainer.state.log_history if "kd_loss" in log]
    assert kd[-1] < kd[0]


def test_vocabulary_mismatch_is_rejected(tmp_path, tokenizer, student):
    from distill_trainer.testing import build_model

    other = build_model(len(tokenizer) + 10, seed=3)
    with pytest.raises(UsageError, match="vocabularies differ.*label_words"):
        make_trainer(tmp_path, student, other, tokenizer)


def test_missing_teacher_and_self_without_lora_are_rejected(tmp_path, tokenizer, student):
    with pytest.raises(UsageError, match="needs a teacher"):
        make_trainer(tmp_path, student, None, tokenizer)
    with pytest.raises(UsageError, match="needs a LoRA student"):
        make_trainer(tmp_path, student, "self", tokenizer)


def test_batch_without_answer_tokens_is_rejected(tmp_path, tokenizer, student, teacher):
    trainer = make_trainer(tmp_path, student, teacher, tokenizer)
    batch = TwoViewCollator(tokenizer.pad_token_id)([build_views(tokenizer, q, a, DEMOS) for q, a in ROWS])
    batch["answer_mask"][:] = False
    with pytest.raises(UsageError, match="no answer tokens"):
        trainer.compute_loss(trainer.model, batch)


@pytest.mark.integration
def test_teacher_by_path_loads(tmp_path, tokenizer, tiny_dirs, student):
    trainer = make_trainer(tmp_path, student, tiny_dirs["teacher"], tokenizer, max_steps=1)
    assert not trainer.teacher.model.training
    assert not any(p.requires_grad for p in trainer.teacher.model.parameters())
    trainer.train()


@pytest.mark.integration
def test_nonfinite_loss_stops_with_step_and_checkpoint(tmp_path, tokenizer, student, teacher):
    from distill_trainer.errors import NonFiniteLossError

    poison(student, from_call=3)
    trainer = make_trainer(tmp_path, student, teacher, tokenizer, save_strategy="steps", save_steps=1)
    with pytest.raises(NonFiniteLossError, match="at step 3.*checkpoint-2.*skip_nonfinite_loss"):
        trainer.train()


@pytest.mark.integration
def test_nonfinite_loss_can_skip_batches(tmp_path, tokenizer, student, teacher):
    poison(student, from_call=3)
    before = {k: v.clone() for k, v in student.named_parameters()}
    trainer = make_trainer(tmp_path, student, teacher, tokenizer, skip_nonfinite_loss=True, max_steps=3)
    trainer.train()
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert any(not torch.equal(before[k], v) for k, v in student.named_parameters())
    assert any("skipped_batches" in log for log in trainer.state.log_history)


def test_self_teacher_runs_without_dropout(tmp_path, tokenizer):
    from distill_trainer.testing import build_model

    model = build_model(len(tokenizer), seed=0)
    model.config.attention_dropout = 0.5  # dropout that would make a train-mode teacher random
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    lora = prepare_student(model, "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    trainer = make_trainer(tmp_path, lora, "self", tokenizer, teacher_prefix_cache=False)
    batch = TwoViewCollator(tokenizer.pad_token_id)([build_views(tokenizer, q, a, DEMOS) for q, a in ROWS])
    lora.train()
    first = trainer.teacher_answer_logits(batch)
    second = trainer.teacher_answer_logits(batch)
    assert torch.equal(first, second)
    assert lora.training  # the student's own mode is left as it was


def test_trainer_passes_teacher_pack_queries_to_its_runner(tmp_path, tokenizer, teacher, student):
    for value, pack in (("auto", None), ("always", True), ("never", False)):
        trainer = make_trainer(tmp_path, student, teacher, tokenizer, teacher_pack_queries=value)
        assert trainer.teacher.runner.pack is pack
    with pytest.raises(UsageError, match="teacher_pack_queries"):
        make_args(tmp_path, teacher_pack_queries="on")


@pytest.mark.integration
def test_a_teacher_object_is_used_as_given_with_the_runs_settings(tmp_path, tokenizer, student, teacher):
    from distill_trainer.teacher.teacher import Teacher

    given = Teacher.for_model(teacher.train(), "teacher")
    trainer = make_trainer(tmp_path, student, given, tokenizer, teacher_pack_queries="never", max_steps=1)
    assert trainer.teacher is given and given.runner.pack is False
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())  # placed
    trainer.train()
    assert any("kd_loss" in log for log in trainer.state.log_history)
