"""Distilling a context away with chat views: a 2-step trainer run (live teacher and teacher output cache),
and the distill_context recipe end to end on tiny models: the teacher writes the completions, the student
learns them, the report holds rates and KL before and after."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from datasets import Dataset
from helpers import load_recipe, make_args, refuse_weight_loading, reply_recipe_argv

from distill_trainer import ContextDistillationTrainer, TwoViewCollator
from distill_trainer.context.steps import measure_student
from distill_trainer.errors import UsageError
from distill_trainer.teacher.generation import GenerationSettings
from distill_trainer.teacher.teacher import Teacher
from distill_trainer.testing import build_chat_tokenizer, build_model
from distill_trainer.views.chat import build_chat_views

CONTEXT = "Answer with one Python function."
PROMPTS = ["Write a cat.", "A dog runs in the park", "The doctor saw the lawyer", "Two dogs run"]


@pytest.fixture(scope="module")
def chat_tokenizer():
    return build_chat_tokenizer()


def chat_dataset(tok):
    rows = [build_chat_views(tok, p, "def cat(): pass", CONTEXT) for p in PROMPTS]
    return Dataset.from_list(rows)


@pytest.mark.integration
@pytest.mark.parametrize("output_cache", [False, True])
def test_two_trainer_steps_on_chat_views(tmp_path, chat_tokenizer, output_cache):
    student = build_model(len(chat_tokenizer), seed=0)
    teacher = build_model(len(chat_tokenizer), seed=1, hidden_size=48)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(
            tmp_path,
            max_steps=2,
            per_device_train_batch_size=2,
            teacher_output_cache=output_cache,
            teacher_cache_dir=str(tmp_path / "cache"),
        ),
        train_dataset=chat_dataset(chat_tokenizer),
        data_collator=TwoViewCollator(chat_tokenizer.pad_token_id),
        processing_class=chat_tokenizer,
    )
    result = trainer.train()
    assert result.global_step == 2 and torch.isfinite(torch.tensor(result.training_loss))
    assert result.training_loss > 0
    assert any(not torch.equal(before[n], p) for n, p in student.named_parameters())
    assert (trainer.teacher is None) == output_cache  # the cache frees the teacher
    if output_cache:
        assert "teacher_topk_ids" in trainer.train_dataset.column_names


def test_kl_is_zero_for_the_teacher_itself_and_positive_without_the_context(chat_tokenizer):
    model = build_model(len(chat_tokenizer), seed=0).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(30)  # peaked distributions: a random tiny model's are nearly uniform
    views = chat_dataset(chat_tokenizer)
    rows = [{"context": CONTEXT, "prompt": p} for p in PROMPTS]
    teacher = Teacher.for_model(model, "teacher")
    settings = GenerationSettings(max_new_tokens=4)
    result = measure_student(
        model, chat_tokenizer, rows, views, settings, checker="python_function", teacher=teacher
    )
    assert result["kl"]["kl_per_token"] > 1e-3 and result["kl"]["n"] == len(PROMPTS)
    assert result["rule"]["n"] == len(PROMPTS) and len(result["replies"]) == len(PROMPTS)
    # a view whose student side carries the context too: the model matches itself exactly
    same = Dataset.from_list(
        [
            dict(row, input_ids=row["teacher_input_ids"], answer_positions=row["teacher_answer_positions"])
            for row in views
        ]
    )
    assert measure_student(model, chat_tokenizer, rows, same, settings, checker=None, teacher=teacher)["kl"][
        "kl_per_token"
    ] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("chunk_size", [0, 1, 3, 1000])
def test_completion_kl_in_chunks_equals_the_kl_of_the_full_logits(chat_tokenizer, chunk_size):
    import torch.nn.functional as F

    from distill_trainer.context.generation_eval import completion_kl
    from distill_trainer.models.answer_logits import answer_logits
    from distill_trainer.training.losses import token_divergence

    student = build_model(len(chat_tokenizer), seed=0).eval()
    teacher = build_model(len(chat_tokenizer), seed=1, hidden_size=48).eval()
    views = chat_dataset(chat_tokenizer)
    collator = TwoViewCollator(chat_tokenizer.pad_token_id)
    got = completion_kl(
        student, Teacher.for_model(teacher, "teacher"), views, collator, batch_size=3, chunk_size=chunk_size
    )
    batch = collator(list(views))
    mask = batch["answer_mask"]
    with torch.no_grad():
        student_logits = answer_logits(
            student, batch["input_ids"], batch["attention_mask"], batch["answer_positions"]
        )
        teacher_logits = answer_logits(
            teacher,
            batch["teacher_input_ids"],
            batch["teacher_attention_mask"],
            batch["teacher_answer_positions"],
        )
    kl = token_divergence(F.log_softmax(student_logits, -1), F.log_softmax(teacher_logits, -1)) * mask
    assert got["tokens"] == int(mask.sum()) and got["n"] == len(PROMPTS)
    assert got["kl_per_token"] == pytest.approx(float(kl.sum() / mask.sum()), rel=1e-4)
    assert got["kl_per_token"] > 1e-3


def write_data(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    heldout = tmp_path / "heldout.jsonl"
    heldout.write_text("".join(json.dumps({"prompt": p + " again"}) + "\n" for p in PROMPTS[:3]))
    return str(train), str(heldout)


def recipe_config(tmp_path, chat_dirs, **overrides):
    train, heldout = write_data(tmp_path)
    values = {
        "data_file": train,
        "eval_data_file": heldout,
        "context": CONTEXT,
        "checker": "python_function",
        "max_new_tokens": 5,
        "generation_batch_size": 2,
    }
    return reply_recipe_argv(tmp_path, chat_dirs, values, overrides)


@pytest.mark.integration
def test_recipe_end_to_end_on_tiny_models(tmp_path, chat_dirs):
    recipe = load_recipe("distill_context")
    metrics = recipe.main(recipe_config(tmp_path, chat_dirs))
    out = tmp_path / "out"
    for name in (
        "metrics.json",
        "report.md",
        "predictions_replies.jsonl",
        "resolved_config.yaml",
        "adapter_config.json",
    ):
        assert (out / name).is_file(), name
    assert metrics["train"]["global_step"] == 2
    assert metrics["teacher_completions"] == {
        "path": metrics["teacher_completions"]["path"],
        "reused": 0,
        "generated": len(PROMPTS) + 3,
        "cut_off": len(PROMPTS) + 3,  # a random tiny teacher never writes its stop token
    }
    for key in ("teacher", "before", "after"):
        rule = metrics["eval"][key]["rule"]
        assert rule["n"] == 3 and 0 <= rule["rate"] <= 1
    assert metrics["eval"]["before"]["kl"]["kl_per_token"] > 0
    assert metrics["eval"]["after"]["kl"]["kl_per_token"] != metrics["eval"]["before"]["kl"]["kl_per_token"]
    report = (out / "report.md").read_text()
    assert "student before, without the context" in report and "±" in report
    records = [json.loads(line) for line in (out / "predictions_replies.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {"teacher", "before", "after", "after_check"} <= set(records[0])
    # the saved student, scored by the command line with the recipe's settings (context, checker)
    from distill_trainer.run.cli import main as cli

    heldout = recipe_config(tmp_path, chat_dirs)  # rewrites the same data files
    data = yaml.safe_load(open(heldout[1]))["eval_data_file"]
    assert (
        cli(
            [
                "evaluate-replies",
                "--model",
                str(out),
                "--data",
                data,
                "--teacher",
                "self",
                "--completion_cache_dir",
                str(tmp_path / "completions"),
                "--output_dir",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    scored = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert scored["checker"] == "python_function" and scored["decoding"]["max_new_tokens"] == 5
    assert scored["teacher"]["rule"] == metrics["eval"]["teacher"]["rule"]  # the same cached completions
    assert scored["model"]["rule"] == metrics["eval"]["after"]["rule"]
    assert scored["model"]["kl"]["kl_per_token"] == pytest.approx(
        metrics["eval"]["after"]["kl"]["kl_per_token"], rel=1e-4
    )
    assert len((tmp_path / "cli" / "replies.jsonl").read_text().splitlines()) == 3
    # a second run reads every completion from the cache
    again = recipe.main(recipe_config(tmp_path, chat_dirs, output_dir=str(tmp_path / "out2")))
    assert again["teacher_completions"]["generated"] == 0


@pytest.mark.integration
def test_recipe_with_a_separate_teacher_and_data_completions(tmp_path, chat_dirs):
    recipe = load_recipe("distill_context")
    train = tmp_path / "given.jsonl"
    train.write_text(
        "".join(
            json.dumps({"question": p, "answer": "def f(): pass", "system": CONTEXT}) + "\n" for p in PROMPTS
        )
    )
    argv = recipe_config(
        tmp_path,
        chat_dirs,
        student_mode="full",
        teacher_model_name_or_path=chat_dirs["teacher"],
        data_file=str(train),
        eval_data_file=None,
        prompt_column="question",
        completion_column="answer",
        context_column="system",
    )
    metrics = recipe.main(argv)
    assert metrics["teacher_completions"]["generated"] == 0  # the data brought every completion
    assert metrics["eval"] == {} and metrics["train"]["global_step"] == 2


def test_recipe_mistakes_are_one_line_and_leave_no_output(tmp_path, chat_dirs):
    recipe = load_recipe("distill_context")
    cases = [
        (dict(prompt_column="question"), "no column 'question'"),
        (dict(student_mode="full"), "needs student_mode: lora"),
        (dict(distill_vocab="label_words"), "distill_vocab: full"),
    ]
    for overrides, match in cases:
        with pytest.raises(UsageError, match=match) as error:
            recipe.main(recipe_config(tmp_path, chat_dirs, **overrides))
        assert "\n" not in str(error.value)
        assert not (tmp_path / "out").exists()


@pytest.mark.integration
@pytest.mark.parametrize("data_format", ["sdft", "messages"])
@pytest.mark.parametrize("lmbda", [0.0, 0.5, 1.0])
def test_trl_data_formats_work_in_every_mode(tmp_path, chat_dirs, data_format, lmbda):
    recipe = load_recipe("distill_context")

    def rows(prompts):
        if data_format == "sdft":
            return [{"prompt": p, "privileged_context": CONTEXT} for p in prompts]
        system = {"role": "system", "content": CONTEXT}
        return [{"messages": [system, {"role": "user", "content": p}]} for p in prompts]

    files = {}
    for name, prompts in (("train", PROMPTS), ("heldout", [p + " again" for p in PROMPTS[:3]])):
        files[name] = tmp_path / f"trl-{name}.jsonl"
        files[name].write_text("".join(json.dumps(row) + "\n" for row in rows(prompts)))
    argv = recipe_config(
        tmp_path,
        chat_dirs,
        data_file=str(files["train"]),
        eval_data_file=str(files["heldout"]),
        context=None,
        lmbda=lmbda,
        loss="reverse_kl",
        teacher_output_cache=False,
        rollout_max_new_tokens=4,
    )
    metrics = recipe.main(argv)
    on_policy_steps = {0.0: 0, 0.5: 1, 1.0: 2}[lmbda]
    assert metrics["rollouts"]["steps_on_policy"] == on_policy_steps and metrics["train"]["global_step"] == 2
    # fully on-policy, the teacher writes the held-out replies only
    assert metrics["teacher_completions"]["generated"] == (3 if lmbda == 1 else len(PROMPTS) + 3)
    assert metrics["eval"]["after"]["kl_own"]["kl_per_token"] >= 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert CONTEXT in card and metrics["replies"] in card
    assert "cut off at max_new_tokens" in (tmp_path / "out" / "report.md").read_text()


def test_on_policy_with_a_teacher_output_cache_is_refused_before_any_model_loads(
    tmp_path, chat_dirs, monkeypatch
):
    recipe = load_recipe("distill_context")
    monkeypatch.setattr(recipe, "load_student", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(UsageError, match="teacher_output_cache: false"):
        recipe.main(recipe_config(tmp_path, chat_dirs, lmbda=1.0))
    assert not (tmp_path / "out").exists()


# ---- checked before a model loads; an earlier run kept; a stopped run resumed ----


def no_model_loading(monkeypatch):
    refuse_weight_loading(monkeypatch, "validation loaded a model")


def test_validate_checks_a_reply_recipe_without_loading_a_model(tmp_path, chat_dirs, monkeypatch, capsys):
    from distill_trainer.models.loading import load_causal_lm
    from distill_trainer.run.cli import main as cli

    no_model_loading(monkeypatch)
    with pytest.raises(AssertionError, match="loaded a model"):  # the guard holds
        load_causal_lm(chat_dirs["student"])
    argv = recipe_config(tmp_path, chat_dirs, teacher_model_name_or_path=chat_dirs["teacher"])
    assert cli(["validate", *argv, "--recipe", "distill_context"]) == 0
    out = capsys.readouterr().out
    assert "ok: recipes/distill_context.py" in out
    assert "4 training prompts, 3 held-out prompts" in out and "reads the same tokens" in out
    assert not (tmp_path / "out").exists()  # nothing written
    # what the recipe would refuse, validate refuses, in one line
    bad = recipe_config(tmp_path, chat_dirs, student_mode="full")
    assert cli(["validate", *bad, "--recipe", "distill_context"]) == 2
    err = capsys.readouterr().err
    assert "needs a LoRA student" in err and err.count("\n") == 1


class StopAfterSaving:
    """Stands in for a crash right after the checkpoint of `step` is written."""

    def __init__(self, step):
        from transformers import TrainerCallback

        self.step = step
        self.__class__ = type("StopAfterSaving", (StopAfterSaving, TrainerCallback), {})

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise RuntimeError("stopped after saving")


def adapter_weights(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.integration
def test_a_stopped_run_resumes_to_the_same_weights_and_a_finished_one_is_kept(tmp_path, chat_dirs):
    from distill_trainer.training.parsing import parse_config

    recipe = load_recipe("distill_context")
    steps = dict(max_steps=3, save_strategy="steps", save_steps=1)
    whole = recipe.main(recipe_config(tmp_path, chat_dirs, output_dir=str(tmp_path / "whole"), **steps))
    argv = recipe_config(tmp_path, chat_dirs, **steps)
    with pytest.raises(RuntimeError, match="stopped after saving"):
        configs, given = parse_config(recipe.CONFIG_TYPES, argv)
        recipe.run_distill_context(*configs, callbacks=[StopAfterSaving(2)], given=given)
    with pytest.raises(UsageError, match="unfinished run.*resume_from_checkpoint: true"):
        recipe.main(argv)
    resumed = recipe.main([*argv, "--resume_from_checkpoint", "true"])
    assert resumed["train"]["global_step"] == 3
    assert resumed["teacher_completions"]["generated"] == 0  # the teacher's replies came from the cache
    expected, got = adapter_weights(tmp_path / "whole"), adapter_weights(tmp_path / "out")
    assert expected.keys() == got.keys()
    assert all(torch.allclose(expected[name], got[name], atol=1e-6) for name in expected)
    assert resumed["train"]["train_loss"] == pytest.approx(whole["train"]["train_loss"], rel=1e-5)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "Made by code `" in report  # the report names the code that made it

    # rerun into its own finished folder (as typed, or as the fault campaign's rerun adds the flag that a
    # folder with results asks for): read back, not trained again
    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    real_run, recipe.run_distill_context = recipe.run_distill_context, no_training
    try:
        assert recipe.main(argv) == resumed
        assert recipe.main([*argv, "--overwrite_output_dir", "true"]) == resumed
    finally:
        recipe.run_distill_context = real_run
    # other settings into the finished folder: refused, the finished run kept as it was
    with pytest.raises(UsageError, match="already holds a run's results.*overwrite_output_dir"):
        recipe.main([*argv, "--learning_rate", "0.5"])
    assert (tmp_path / "out" / "report.md").read_text() == report
