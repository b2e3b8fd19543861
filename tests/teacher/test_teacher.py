"""The rules about teachers, written once in teacher/teacher.py: what `self` is, what it needs, and that
switching a LoRA student's adapters off for the teacher always switches them back on."""

import contextlib

import pytest
import torch
from helpers import DEMOS, ROWS

from distill_trainer.errors import UsageError
from distill_trainer.teacher.teacher import (
    SELF,
    Teacher,
    adapters_off,
    check_self_quantization,
    check_self_teacher,
    is_self,
)


class FakeLoraStudent(torch.nn.Module):
    """Records whether its adapters are on, like a PEFT model's `disable_adapter()` context."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 2)
        self.adapters_on = True

    @contextlib.contextmanager
    def disable_adapter(self):
        self.adapters_on = False
        try:
            yield
        finally:
            self.adapters_on = True


def test_only_the_name_self_is_self():
    assert is_self(SELF) and is_self("self")
    assert not any(is_self(x) for x in ("Self", "./self", "", None, torch.nn.Linear(1, 1)))


def test_a_self_teacher_needs_a_lora_student():
    with pytest.raises(UsageError, match="needs a LoRA student.*needs student_mode: lora"):
        check_self_teacher("self", student_is_lora=False)
    with pytest.raises(UsageError, match="needs a LoRA student; give a LoRA adapter folder as --model"):
        check_self_teacher("self", student_is_lora=False, fix="give a LoRA adapter folder as --model")
    check_self_teacher("self", student_is_lora=True)
    check_self_teacher("some/teacher", student_is_lora=False)
    check_self_teacher(None, student_is_lora=False)


def test_a_self_teacher_is_never_quantized():
    with pytest.raises(UsageError, match="teacher_quantization: 8bit cannot apply to teacher 'self'"):
        check_self_quantization("self", "8bit")
    check_self_quantization("self", "none")
    check_self_quantization("some/teacher", "4bit")


def test_adapters_off_runs_in_eval_mode_and_restores_adapters_and_mode():
    student = FakeLoraStudent().train()
    with adapters_off(student) as model:
        assert model is student and not student.adapters_on and not student.training
    assert student.adapters_on and student.training
    with pytest.raises(RuntimeError), adapters_off(student):
        raise RuntimeError("a failed teacher forward")
    assert student.adapters_on and student.training
    student.eval()
    with adapters_off(student):
        pass
    assert not student.training  # a student in eval mode stays in it


def test_teacher_self_uses_the_student_with_adapters_off():
    student = FakeLoraStudent().train()
    teacher = Teacher.for_model(student, "self", "not-a-folder")
    assert teacher.is_self and len(teacher.teacher_id) == 64
    with teacher.active() as model:
        assert model is student and not student.adapters_on and not student.training
    assert student.adapters_on and student.training
    with pytest.raises(UsageError, match="needs a LoRA student"):
        Teacher.for_model(torch.nn.Linear(2, 2), "self", "not-a-folder")


def test_a_loaded_teacher_runs_in_eval_mode_and_keeps_its_own_mode_after():
    model = torch.nn.Linear(2, 2).train()
    teacher = Teacher.for_model(model, "some/teacher", "not-a-folder")
    assert not teacher.is_self
    with teacher.active() as active:
        assert active is model and not model.training
    assert model.training


# ---- a teacher on disk: loaded when first used, identified by its files, released ----


def test_a_teacher_from_disk_loads_on_first_use_only(tiny_dirs, monkeypatch):
    from distill_trainer.teacher import teacher as teacher_module
    from distill_trainer.teacher.teacher import teacher_source_fingerprint

    loads = []
    real = teacher_module.load_causal_lm
    monkeypatch.setattr(teacher_module, "load_causal_lm", lambda *a, **k: loads.append(a[0]) or real(*a, **k))
    teacher = Teacher.from_source(str(tiny_dirs["teacher"]))
    assert teacher.teacher_id == teacher_source_fingerprint(str(tiny_dirs["teacher"]))
    assert not teacher.loaded and teacher.separate_model is None and loads == []  # known without loading
    with teacher.active() as model:
        assert not model.training
    assert teacher.loaded and loads == [str(tiny_dirs["teacher"])]
    with teacher.active():
        pass
    assert len(loads) == 1  # loaded once
    teacher.release()
    assert teacher.separate_model is None
    assert teacher.model is not None and len(loads) == 2  # used again after release: loaded again


def test_a_teacher_known_only_in_memory_is_identified_by_its_weights(tokenizer):
    from distill_trainer.teacher.teacher import teacher_fingerprint
    from distill_trainer.testing import build_model

    model = build_model(len(tokenizer), seed=1)
    teacher = Teacher.for_model(model, "teacher")
    assert teacher.source_id is None and teacher.teacher_id == teacher_fingerprint(model)
    assert Teacher.for_model(build_model(len(tokenizer), seed=2), "teacher").teacher_id != teacher.teacher_id
    with pytest.raises(UsageError, match="no weights of its own"):
        Teacher.from_source("self")


def test_answer_logits_reuse_one_prefix_cache_and_match_the_full_view(tokenizer):
    from distill_trainer.models.answer_logits import answer_logits
    from distill_trainer.testing import build_model
    from distill_trainer.views.text import TwoViewCollator, build_views

    model = build_model(len(tokenizer), seed=1)
    teacher = Teacher.for_model(model, "teacher")
    rows = [build_views(tokenizer, q, a, DEMOS) for q, a in ROWS]
    batch = TwoViewCollator(tokenizer.pad_token_id)(rows)
    got = teacher.answer_logits(batch)
    cache = teacher.runner.prefix_teacher
    assert cache is not None and teacher.answer_logits(batch) is not None
    assert teacher.runner.prefix_teacher is cache  # built once while the teacher lives
    full = answer_logits(
        model, batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_answer_positions"]
    )
    assert (got - full)[batch["answer_mask"]].abs().max() <= 1e-4
    hidden, head = teacher.answer_hidden(batch)
    assert (head(hidden) - got)[batch["answer_mask"]].abs().max() <= 1e-4
    teacher.release()  # drops the cached prefix, keeps how the teacher runs
    assert teacher.runner.prefix_teacher is None and teacher.runner.use_prefix_cache
    with pytest.raises(UsageError, match="was released"):
        teacher.answer_logits(batch)


def test_a_self_teachers_head_runs_with_the_adapters_off_even_when_lora_wraps_it(tokenizer):
    import copy

    from distill_trainer.models.answer_logits import answer_logits
    from distill_trainer.models.loading import prepare_student
    from distill_trainer.testing import build_model
    from distill_trainer.views.text import TwoViewCollator, build_views

    base = build_model(len(tokenizer), seed=0).eval()
    lora = prepare_student(copy.deepcopy(base), "lora", lora_r=4, lora_target_modules=["q_proj", "lm_head"])
    with torch.no_grad():  # adapters that change the outputs, the head's included
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_()
    batch = TwoViewCollator(tokenizer.pad_token_id)([build_views(tokenizer, q, a, DEMOS) for q, a in ROWS])
    hidden, head = Teacher.for_model(lora, "self").answer_hidden(batch)
    with torch.no_grad():
        expected = answer_logits(
            base,
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_answer_positions"],
        )
        got = head(hidden)
    mask = batch["answer_mask"]
    assert (got - expected)[mask].abs().max() <= 1e-4


def test_a_batch_is_moved_to_the_teachers_device():
    from distill_trainer.teacher.teacher import _on_device_of

    model = torch.nn.Linear(2, 2).to("meta")
    moved = _on_device_of(model, {"ids": torch.ones(2), "name": "x"})
    assert moved["ids"].device.type == "meta" and moved["name"] == "x"
    here = {"ids": torch.ones(2)}
    assert _on_device_of(torch.nn.Linear(2, 2), here)["ids"] is here["ids"]  # no copy when already there
