"""Helpers shared by several test files: tiny trainers and datasets, recipe configs on tiny models."""

import importlib
from pathlib import Path

import yaml
from datasets import Dataset

from distill_trainer import ContextDistillationTrainer, DistillationConfig, TwoViewCollator, build_views

DEMOS = "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes"
ROWS = [
    ("A man is playing a guitar question: Nobody plays music. Yes or No? answer:", " No"),
    ("The doctor saw the lawyer question: The lawyer saw the doctor. Yes or No? answer:", " Yes"),
    ("Two dogs run in the park question: Dogs run. Yes or No? answer:", " Yes"),
    ("The senator thanked the artist question: Nobody was thanked. Yes or No? answer:", " No question: Yes"),
]


def make_dataset(tokenizer, n=8):
    rows = [ROWS[i % len(ROWS)] for i in range(n)]
    return Dataset.from_list([build_views(tokenizer, q, a, DEMOS) for q, a in rows])


def make_args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    return DistillationConfig(**values)


def make_trainer(tmp_path, student, teacher, tokenizer, **overrides):
    return ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, **overrides),
        train_dataset=make_dataset(tokenizer),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )


def poison(model, from_call):
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] >= from_call:
            output.logits = output.logits * float("nan")
        return output

    model.register_forward_hook(hook)


ROOT = Path(__file__).resolve().parent.parent
DATA = str(Path(__file__).parent / "data")
CPU = "recipes/configs/accelerate/cpu.yaml"


def load_recipe(name):
    """The recipe module `recipes/<name>.py` (the project root is on pytest's path)."""
    return importlib.import_module(f"recipes.{name}")


OFFLINE_ARGS = {
    "data_source": "local",
    "data_dir": DATA,
    "use_cpu": True,
    "report_to": "none",
    "disable_tqdm": True,
}


# how every tiny test run trains: no checkpoints, a log per step, CPU, no progress bars or trackers
TINY_RUN = {
    "save_strategy": "no",
    "logging_steps": 1,
    "use_cpu": True,
    "disable_tqdm": True,
    "report_to": "none",
}


def reply_recipe_argv(tmp_path, chat_dirs, values: dict, overrides: dict) -> list[str]:
    """The command line of a reply recipe (distill_context, distill_document) on tiny chat models: a self
    teacher under a LoRA student, both caches and the output under `tmp_path`, 2 steps; then the recipe's
    own `values`, then `overrides`."""
    settings = {
        "model_name_or_path": chat_dirs["student"],
        "student_mode": "lora",
        "teacher_model_name_or_path": "self",
        "completion_cache_dir": str(tmp_path / "completions"),
        "teacher_output_cache": True,
        "teacher_cache_dir": str(tmp_path / "outputs"),
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 2,
        "max_steps": 2,
        "learning_rate": 1e-2,
        **TINY_RUN,
        **values,
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(settings))
    return ["--config", str(path)]


def cli_args(**values) -> list[str]:
    """A recipe's command line on the fixture data, offline: `OFFLINE_ARGS`, then `values` (a list gives
    several values, a boolean true / false)."""
    argv = []
    for name, value in {**OFFLINE_ARGS, **values}.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        argv += [f"--{name}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in items)]
    return argv


def tiny_comparison(tmp_path, tiny_dirs, **values) -> dict:
    """The settings of a comparison (recipes/compare.py) of the tiny models on the fixture data, results
    under `tmp_path`; then `values`."""
    return {
        "teacher_model_name_or_path": tiny_dirs["teacher"],
        "task": "mnli",
        "eval_tasks": ["mnli", "hans"],
        "data_source": "local",
        "data_dir": DATA,
        "pattern": "gpt3",
        "k": 2,
        "demonstration_ids": [21, 57],
        "num_train_examples": 8,
        "hans_per_subcase": 1,
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "results_dir": str(tmp_path / "results"),
        **values,
    }


def write_recipe(tmp_path, tiny_dirs, name="recipe", **overrides):
    values = {
        "model_name_or_path": tiny_dirs["student"],
        "task": "mnli",
        "eval_tasks": ["mnli", "hans"],
        "data_source": "local",
        "data_dir": DATA,
        "k": 2,
        "num_train_examples": 8,
        "hans_per_subcase": 1,
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "max_steps": 2,
        "learning_rate": 1e-3,
        **TINY_RUN,
    }
    values.update(overrides)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def refuse_weight_loading(monkeypatch, message: str = "validation loaded a model") -> None:
    """Any load of a model's weights fails with `message`: transformers' `from_pretrained` and the
    library's streamed reads of a checkpoint (models/streaming.py) alike."""
    from transformers import PreTrainedModel

    from distill_trainer.models.streaming import SafetensorsReader

    def refuse(*args, **kwargs):
        raise AssertionError(message)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(refuse))
    monkeypatch.setattr(SafetensorsReader, "read_rows", refuse)
