"""Saving, describing and pushing a trained student: the folder loads back and predicts the same, the card
says what was trained and how well, and a push that cannot happen fails clearly without harming the folder."""

import hashlib
from pathlib import Path

import pytest
import torch
import yaml
from datasets import Dataset
from helpers import DATA
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from distill_trainer import (
    ContextDistillationTrainer,
    DistillationConfig,
    StudentArguments,
    TwoViewCollator,
    build_views,
)
from distill_trainer.errors import UsageError
from distill_trainer.models.loading import load_causal_lm, prepare_student
from distill_trainer.report.hub import push_student, save_student, ship_student
from distill_trainer.report.model_card import EvalSummary, StudentCard, build_model_card

DEMOS = "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes"
ROWS = [
    ("A man is playing a guitar question: Nobody plays music. Yes or No? answer:", " No"),
    ("The doctor saw the lawyer question: The lawyer saw the doctor. Yes or No? answer:", " Yes"),
    ("Two dogs run in the park question: Dogs run. Yes or No? answer:", " Yes"),
    ("The senator thanked the artist question: Nobody was thanked. Yes or No? answer:", " No"),
]
RECIPE = {
    "model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "student_mode": "lora",
    "alpha": 1.0,
    "temperature": 2.0,
    "learning_rate": 3e-4,
    "hub_token": "hf_secret_do_not_publish",
}
HANS = {
    "lexical_overlap": {"entailment": 0.98, "non-entailment": 0.02},
    "subsequence": {"entailment": 0.97, "non-entailment": 0.05},
    "constituent": {"entailment": 0.99, "non-entailment": 0.01},
}


def train_briefly(tmp_path, student, teacher, tokenizer, **overrides):
    values = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=5e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    values.update(overrides)
    dataset = Dataset.from_list([build_views(tokenizer, q, a, DEMOS) for q, a in ROWS * 2])
    trainer = ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=DistillationConfig(**values),
        train_dataset=dataset,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.train()
    return trainer


def predictions(model, tokenizer):
    """Logits of every query's next token: what a classifier built on the student reads."""
    batch = TwoViewCollator(tokenizer.pad_token_id)([build_views(tokenizer, q, a) for q, a in ROWS])
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[torch.arange(len(ROWS)), batch["answer_positions"][:, -1]]


def fingerprint(folder):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


def a_card(model_name="me/tiny-student", base_model="HuggingFaceTB/SmolLM2-135M-Instruct"):
    return StudentCard(
        model_name=model_name,
        base_model=base_model,
        teacher="HuggingFaceTB/SmolLM2-360M-Instruct",
        student_mode="lora",
        datasets=["nyu-mll/multi_nli", "jhu-cogsci/hans"],
        settings={"alpha": 1.0, "temperature": 2.0, "lora_r": 16},
        results=[
            EvalSummary(
                "MNLI",
                "validation_matched",
                {"accuracy": 0.6133, "auc": 0.661},
                num_examples=300,
                dataset_id="nyu-mll/multi_nli",
            ),
            EvalSummary(
                "HANS",
                "validation",
                {"accuracy": 0.5033, "auc": 0.512},
                domain="out-of-domain",
                num_examples=600,
                dataset_id="jhu-cogsci/hans",
                breakdown=HANS,
            ),
        ],
        memory=[
            {"phase": "train", "peak MiB": 812.5, "teacher": "8bit"},
            {"phase": "eval", "peak MiB": 301.0},
        ],
    )


@pytest.mark.integration
def test_full_student_folder_loads_back_and_predicts_the_same(tmp_path, tokenizer, student, teacher):
    trainer = train_briefly(tmp_path, student, teacher, tokenizer)
    before = predictions(trainer.model, tokenizer)
    folder = save_student(trainer, tmp_path / "student", card=a_card(), recipe=RECIPE)

    names = set(fingerprint(folder))
    assert {"model.safetensors", "config.json", "tokenizer.json", "README.md", "recipe.yaml"} <= names
    assert not any(n.endswith(".partial") for n in names)
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.equal(predictions(loaded, tokenizer), before)
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert recipe["temperature"] == 2.0 and "hub_token" not in recipe  # a token is never published


@pytest.mark.integration
def test_lora_adapter_loads_back_with_peft_and_predicts_the_same(tmp_path, tokenizer, tiny_dirs, teacher):
    from peft import AutoPeftModelForCausalLM

    lora = prepare_student(
        load_causal_lm(tiny_dirs["student"]), "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"]
    )
    trainer = train_briefly(tmp_path, lora, teacher, tokenizer)
    before = predictions(trainer.model, tokenizer)
    folder = save_student(trainer, tmp_path / "adapter", card=a_card(), recipe=RECIPE)

    names = set(fingerprint(folder))
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "recipe.yaml"} <= names
    assert "model.safetensors" not in names  # only the adapter travels
    loaded = AutoPeftModelForCausalLM.from_pretrained(folder)
    assert torch.allclose(predictions(loaded, tokenizer), before, atol=1e-6)
    base = load_causal_lm(tiny_dirs["student"])
    assert not torch.allclose(predictions(base, tokenizer), before, atol=1e-4)  # the adapter matters
    assert ModelCard.load(folder / "README.md").data.library_name == "peft"


@pytest.mark.integration
def test_merged_lora_student_loads_as_a_plain_model(tmp_path, tokenizer, tiny_dirs, teacher):
    lora = prepare_student(
        load_causal_lm(tiny_dirs["student"]), "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"]
    )
    trainer = train_briefly(tmp_path, lora, teacher, tokenizer)
    before = predictions(trainer.model, tokenizer)
    folder = save_student(trainer, tmp_path / "merged", card=a_card(), merge_lora=True)

    names = set(fingerprint(folder))
    assert "model.safetensors" in names and "adapter_config.json" not in names
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    assert torch.allclose(predictions(loaded, tokenizer), before, atol=1e-5)
    assert hasattr(trainer.model, "peft_config")  # the in-memory student still has its adapters
    assert torch.equal(predictions(trainer.model, tokenizer), before)


def test_merge_lora_on_a_full_student_is_rejected(tmp_path, student):
    with pytest.raises(UsageError, match="merge_lora=True needs a LoRA student"):
        save_student(student, tmp_path / "x", merge_lora=True)


def test_model_card_holds_metadata_results_memory_recipe_and_citations():
    card = build_model_card(a_card(), recipe=yaml.safe_dump({"alpha": 1.0, "temperature": 2.0}), adapter=True)
    data = card.data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["datasets"] == ["nyu-mll/multi_nli", "jhu-cogsci/hans"]
    assert data["license"] == "apache-2.0" and data["library_name"] == "peft"
    assert {"distill-trainer", "context-distillation", "lora"} <= set(data["tags"])
    index = data["model-index"][0]
    assert index["name"] == "me/tiny-student"
    values = {(r["dataset"]["name"], m["type"]): m["value"] for r in index["results"] for m in r["metrics"]}
    # each result names the rows evaluated: most often a subset of the split
    assert values[("MNLI, 300 rows", "accuracy")] == 0.6133 and values[("HANS, 600 rows", "auc")] == 0.512
    assert data["base_model_relation"] == "adapter"

    text = card.text
    assert "| in-domain | MNLI | validation_matched | 300 | 0.6133 | 0.661 |" in text
    assert "| out-of-domain | HANS | validation | 600 | 0.5033 | 0.512 |" in text
    assert "| subsequence | 0.97 | 0.05 |" in text  # per-heuristic table
    assert "| train | 812.5 | 8bit |" in text and "| eval | 301 | - |" in text  # memory table
    assert "```yaml\nalpha: 1.0\ntemperature: 2.0\n```" in text
    assert "arXiv:2412.13243" in text and "@software{distill_trainer" in text
    assert "AutoPeftModelForCausalLM" in text
    # the card round-trips through the Hub's own parser
    assert ModelCard(str(card)).data.to_dict()["model-index"] == data["model-index"]


def test_card_from_run_describes_the_method(tmp_path):
    student_args = StudentArguments(
        model_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct", student_mode="lora", lora_r=8
    )
    config = DistillationConfig(
        output_dir=str(tmp_path / "cd-lora"),
        teacher_model_name_or_path="self",
        temperature=2.0,
        loss="jsd",
        beta=0.3,
        report_to="none",
        use_cpu=True,
    )
    card = StudentCard.from_run(student_args, config, datasets=["nyu-mll/multi_nli"])
    assert card.model_name == "cd-lora" and card.teacher == "self" and card.method == "context distillation"
    assert card.settings["beta"] == 0.3 and card.settings["lora_r"] == 8
    assert "self context distillation" in build_model_card(card).text

    baseline = DistillationConfig(
        output_dir=str(tmp_path / "pft"), alpha=0.0, hub_model_id="me/pft", report_to="none", use_cpu=True
    )
    card = StudentCard.from_run(StudentArguments(model_name_or_path="local/dir"), baseline)
    assert (card.model_name, card.method, card.teacher) == ("me/pft", "pattern-based fine-tuning", None)
    assert "temperature" not in card.settings


def test_local_path_is_not_published_as_base_model(tmp_path):
    card = build_model_card(a_card(base_model=str(tmp_path / "my-model")))
    assert "base_model" not in card.data.to_dict()
    assert str(tmp_path / "my-model") in card.text  # still named in the body


@pytest.fixture
def saved_student(tmp_path, tokenizer, student):
    folder = save_student(student, tmp_path / "student", tokenizer=tokenizer, card=a_card(), recipe=RECIPE)
    return folder, fingerprint(folder), predictions(student, tokenizer)


def _still_intact(folder, files, before, tokenizer):
    assert fingerprint(folder) == files
    assert torch.equal(predictions(AutoModelForCausalLM.from_pretrained(folder), tokenizer), before)


def test_push_offline_fails_clearly_and_leaves_the_folder_intact(saved_student, tokenizer, monkeypatch):
    folder, files, before = saved_student
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match=f"offline mode is on.*saved and intact in {folder}"):
        push_student(folder, "me/tiny-student", token="hf_x")
    _still_intact(folder, files, before, tokenizer)


def _online_without_token(monkeypatch, tmp_path):
    from huggingface_hub import constants

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-tokens"))


def test_push_without_token_fails_clearly(saved_student, tokenizer, tmp_path, monkeypatch):
    folder, files, before = saved_student
    _online_without_token(monkeypatch, tmp_path)
    with pytest.raises(UsageError, match="no Hugging Face token.*hf auth login.*saved and intact"):
        push_student(folder, "me/tiny-student")
    _still_intact(folder, files, before, tokenizer)


def test_push_to_an_unreachable_hub_fails_clearly(saved_student, tokenizer, tmp_path, monkeypatch):
    folder, files, before = saved_student
    _online_without_token(monkeypatch, tmp_path)
    # a closed port on this machine: the connection is refused at once
    with pytest.raises(
        UsageError, match="could not push to the Hub repository me/tiny-student.*saved and intact"
    ):
        push_student(folder, "me/tiny-student", token="hf_not_a_real_token", endpoint="http://127.0.0.1:9")
    _still_intact(folder, files, before, tokenizer)


def test_push_refuses_an_incomplete_folder(tmp_path, student):
    student.save_pretrained(tmp_path / "weights-only")
    with pytest.raises(UsageError, match=r"not a complete saved student \(missing: README.md"):
        push_student(tmp_path / "weights-only", "me/x", token="hf_x")


@pytest.mark.integration
def test_push_to_hub_run_trains_offline_then_fails_once_after_saving(
    tmp_path, tokenizer, student, teacher, monkeypatch
):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # the stock Trainer would create the Hub repository here, before training, and fail offline
    trainer = train_briefly(tmp_path, student, teacher, tokenizer, push_to_hub=True, hub_model_id="me/tiny")
    before = predictions(trainer.model, tokenizer)
    folder = tmp_path / "shipped"
    with pytest.raises(UsageError, match="offline mode is on"):
        ship_student(trainer, folder, card=a_card(), recipe=RECIPE)
    assert {"model.safetensors", "README.md", "recipe.yaml"} <= set(fingerprint(folder))
    assert torch.equal(predictions(AutoModelForCausalLM.from_pretrained(folder), tokenizer), before)


def test_card_for_recipe_reads_the_recipes_metrics(tmp_path):
    from distill_trainer.nli.evaluation import LabelWordScores, task_metrics
    from distill_trainer.nli.tasks import get_task, load_split
    from distill_trainer.report.model_card import card_for_recipe

    def scores(logprobs):
        return LabelWordScores(torch.tensor(logprobs), torch.tensor([7] * len(logprobs)), [7, 9])

    mnli = task_metrics(
        scores([[-0.1, -2.0], [-2.0, -0.1], [-0.2, -1.0], [-0.3, -0.9]]), [0, 1, 1, 0], get_task("mnli")
    )
    # a yes-biased model on HANS: always "entailment", right on every entailed row, wrong on every other
    hans = task_metrics(
        scores([[-0.1, -2.0]] * 4),
        [0, 1, 0, 1],
        get_task("hans"),
        groups=["lexical_overlap", "lexical_overlap", "subsequence", "subsequence"],
        group_name="heuristic",
    )
    config = DistillationConfig(
        output_dir=str(tmp_path / "cd-full"),
        teacher_model_name_or_path="my/teacher",
        report_to="none",
        use_cpu=True,
    )
    reports = []  # what a recipe's data loading records: the test copies of the offline files
    for task, split in (("mnli", "validation_matched"), ("hans", "validation"), ("mnli", "train")):
        load_split(get_task(task), split, "local", DATA, reports=reports)
    card = card_for_recipe(
        StudentArguments(model_name_or_path="my/student"),
        config,
        {"mnli": mnli, "hans": hans},
        train_task="mnli",
        memory={"train": 512.0},
        data_reports=reports,
    )
    # the training rows are rows of GLUE's MNLI (its validation_matched split: see tests/data/README.md)
    assert card.datasets == ["nyu-mll/glue"]
    assert card.training_data == [
        "MNLI validation_matched (local copy, rows apart from the evaluation file), 24 rows"
    ]
    in_domain, out_of_domain = card.results
    assert (in_domain.domain, in_domain.dataset, in_domain.split, in_domain.num_examples) == (
        "in-domain",
        "MNLI validation_matched (local copy)",
        "validation_matched",
        4,
    )
    assert in_domain.metrics["accuracy"] == 0.75 and in_domain.dataset_config == "mnli"
    assert (in_domain.dataset_id, in_domain.source_rows) == ("nyu-mll/glue", 16)
    assert out_of_domain.domain == "out-of-domain" and out_of_domain.metrics["accuracy"] == 0.5
    assert out_of_domain.dataset == "HANS, regenerated from the official templates"
    assert out_of_domain.dataset_id is None  # not the Hub's HANS sample
    assert out_of_domain.breakdown["subsequence"]["accuracy on entailment"] == 1.0
    assert out_of_domain.breakdown["subsequence"]["accuracy on non_entailment"] == 0.0
    built = build_model_card(card)
    text = built.text
    assert "| out-of-domain | HANS, regenerated from the official templates | validation | 4 | 0.5 |" in text
    assert "| lexical_overlap | 0.5 |" in text and "| train | 512 |" in text
    assert "4 rows evaluated, drawn from the 60 usable rows read; not a Hub dataset's split" in text
    assert {r.dataset_name for r in built.data.eval_results} == {
        "MNLI validation_matched (local copy), 4 rows"
    }

    # without the data reports, nothing is claimed about where the rows came from
    unnamed = card_for_recipe(
        StudentArguments(model_name_or_path="my/student"), config, {"mnli": mnli}, train_task="mnli"
    )
    assert unnamed.datasets == [] and unnamed.results[0].dataset == "MNLI (data source not recorded)"
    assert build_model_card(unnamed).data.eval_results is None


def _context_distill_recipe(tmp_path, tiny_dirs, **overrides):
    from pathlib import Path

    from recipes import context_distill as module

    values = {
        "model_name_or_path": tiny_dirs["student"],
        "teacher_model_name_or_path": tiny_dirs["teacher"],
        "task": "mnli",
        "eval_tasks": ["mnli", "hans"],
        "data_source": "local",
        "data_dir": str(Path(__file__).parents[1] / "data"),
        "k": 2,
        "num_train_examples": 8,
        "hans_per_subcase": 1,
        "output_dir": str(tmp_path / "out"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 16,
        "max_steps": 2,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "report_to": "none",
        **overrides,
    }
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return module, str(path)


@pytest.mark.integration
def test_recipe_with_push_to_hub_saves_a_complete_student_then_fails_once_offline(
    tmp_path, tiny_dirs, capsys, monkeypatch
):
    from distill_trainer.run.runner import run_recipe

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe, path = _context_distill_recipe(
        tmp_path, tiny_dirs, push_to_hub=True, hub_model_id="me/tiny-cd", hub_token="hf_secret_do_not_publish"
    )
    with pytest.raises(SystemExit) as exit_:
        run_recipe(recipe.main, ["--config", path])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "offline mode is on" in errors[0] and "saved and intact" in errors[0]

    folder = tmp_path / "out"
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "recipe.yaml",
        "metrics.json",
    } <= set(fingerprint(folder))
    card = ModelCard.load(folder / "README.md")
    assert card.data.model_name == "me/tiny-cd"
    # the fixture data: a local copy of MNLI rows (in the model-index), a regenerated HANS (named, not in it)
    assert {r.dataset_name for r in card.data.eval_results} == {
        "MNLI validation_matched (local copy), 16 rows"
    }
    assert {(r.dataset_type, r.dataset_split) for r in card.data.eval_results} == {
        ("nyu-mll/glue", "validation_matched")
    }
    assert card.data.datasets == ["nyu-mll/glue"]
    assert "### HANS, regenerated from the official templates by heuristic" in card.text
    assert "context distillation" in card.text
    recipe_text = (folder / "recipe.yaml").read_text()
    assert "hf_secret_do_not_publish" not in recipe_text and "hf_secret_do_not_publish" not in card.text
    recipe = yaml.safe_load(recipe_text)
    assert recipe["teacher_model_name_or_path"] == tiny_dirs["teacher"]
    # the usage snippet prompts the student the way it was trained
    from distill_trainer.nli.patterns import PATTERNS

    assert f"# the template {PATTERNS[recipe['pattern']][2].template!r}" in card.text
    AutoModelForCausalLM.from_pretrained(folder)


# ---- what a downloaded student needs: a base anyone can load, a card that names its data ----

STAND_IN = "stand-in/tiny-base"  # the Hub id the fake alias's upstream checkpoint goes by in these tests
RUN_ELSEWHERE = """
import json, sys, torch
from peft import AutoPeftModelForCausalLM
model = AutoPeftModelForCausalLM.from_pretrained(sys.argv[1])
with torch.no_grad():
    logits = model(input_ids=torch.tensor([json.loads(sys.argv[2])])).logits[0, -1]
print(json.dumps({"base": model.base_model.model.name_or_path, "logits": logits.tolist()}))
"""


def _hub_cache_holding(root, repo_id, weights_dir):
    """A Hugging Face Hub cache in which `repo_id` is a downloaded snapshot of `weights_dir`'s files: what
    a machine that once downloaded the base holds, and loads offline."""
    import shutil

    commit = "0" * 40
    repo = root / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(weights_dir, repo / "snapshots" / commit, ignore=shutil.ignore_patterns("embedded_*"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return root


@pytest.mark.integration
def test_lora_student_of_an_embedded_alias_loads_where_the_trainers_cache_does_not_exist(
    fake_alias, tmp_path, tokenizer, monkeypatch
):
    import dataclasses
    import json
    import os
    import shutil
    import subprocess
    import sys

    from distill_trainer.models import embedded
    from distill_trainer.models.embedded import materialize_embedded_model
    from distill_trainer.run.evaluate_command import load_model_and_tokenizer

    spec = dataclasses.replace(embedded.EMBEDDED_MODELS["fake"], hub_id=STAND_IN)
    monkeypatch.setitem(embedded.EMBEDDED_MODELS, "fake", spec)
    lora = prepare_student(
        load_causal_lm("embedded:fake"), "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"]
    )
    with torch.no_grad():  # a trained adapter: B starts at zero, which would leave the base unchanged
        for name, parameter in lora.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=torch.Generator().manual_seed(0)))
    ids = tokenizer(ROWS[0][0]).input_ids
    with torch.no_grad():
        expected = lora(input_ids=torch.tensor([ids])).logits[0, -1]
    folder = save_student(
        lora, tmp_path / "adapter", tokenizer=tokenizer, recipe={"model_name_or_path": "embedded:fake"}
    )
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == STAND_IN
    # here, `evaluate` puts it back on the exact weights it was trained on: the alias, no download
    here, _ = load_model_and_tokenizer(str(folder))
    with torch.no_grad():
        assert torch.allclose(here(input_ids=torch.tensor([ids])).logits[0, -1], expected, atol=1e-6)

    # elsewhere: no trainer cache at all, only a Hub cache that holds the base under its Hub id
    hub = _hub_cache_holding(tmp_path / "hub", STAND_IN, materialize_embedded_model("embedded:fake"))
    shutil.rmtree(fake_alias["cache"])
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "empty-home"),
        "DISTILL_TRAINER_CACHE": str(tmp_path / "empty-cache"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }

    def load_elsewhere(hub_cache):
        return subprocess.run(
            [sys.executable, "-c", RUN_ELSEWHERE, str(folder), json.dumps(ids)],
            env={**env, "HF_HUB_CACHE": str(hub_cache)},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    done = load_elsewhere(hub)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["base"] == STAND_IN and not (tmp_path / "empty-cache").exists()
    # the weights came from the Hub cache (the trainer's cache is gone): the student predicts as trained
    assert torch.allclose(torch.tensor(loaded["logits"]), expected, atol=1e-5)
    # and without that Hub cache there is nothing else it could have loaded
    assert load_elsewhere(tmp_path / "empty-hub").returncode != 0


def test_card_metadata_parses_with_the_hubs_own_parser(tmp_path, monkeypatch):
    """base_model is the embedded alias's upstream checkpoint, datasets and model-index name only what the
    rows are; the body says the weights were a dequantized GGUF and which data each result is on."""
    from distill_trainer.models.embedded import EMBEDDED_MODELS
    from distill_trainer.models.provenance import data_lines
    from distill_trainer.nli.tasks import get_task, load_split
    from distill_trainer.report.model_card import card_for_recipe

    reports = []
    for task, split in (("mnli", "validation_matched"), ("hans", "validation"), ("mnli", "train")):
        load_split(get_task(task), split, "local", DATA, reports=reports)
    metrics = {
        "mnli": {"accuracy": 0.6, "auc": 0.65, "n": 16},
        "hans": {"accuracy": 0.5, "n": 60},
    }
    config = DistillationConfig(
        output_dir=str(tmp_path / "cd-lora"),
        teacher_model_name_or_path="self",
        hub_model_id="me/tiny-student",
        report_to="none",
        use_cpu=True,
    )
    student = StudentArguments(model_name_or_path="embedded:smollm2-135m", student_mode="lora")
    card = card_for_recipe(student, config, metrics, "mnli", data_reports=reports)
    (tmp_path / "README.md").write_text(str(build_model_card(card, adapter=True)))

    parsed = ModelCard.load(tmp_path / "README.md")
    assert parsed.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert parsed.data.base_model_relation == "adapter"
    assert parsed.data.datasets == ["nyu-mll/glue"]
    results = parsed.data.eval_results
    assert {(r.dataset_type, r.dataset_config, r.dataset_split) for r in results} == {
        ("nyu-mll/glue", "mnli", "validation_matched")
    }
    assert {r.dataset_name for r in results} == {"MNLI validation_matched (local copy), 16 rows"}
    assert {(r.metric_type, r.metric_value) for r in results} == {("accuracy", 0.6), ("auc", 0.65)}

    text = parsed.text
    spec = EMBEDDED_MODELS["smollm2-135m"]
    assert f"dequantized weights of a Q4_1 GGUF of `{spec.hub_id}`" in text and spec.sha256 in text
    assert "| out-of-domain | HANS, regenerated from the official templates | validation | 60 |" in text
    assert 'AutoPeftModelForCausalLM.from_pretrained("me/tiny-student")' in text
    assert "training data | MNLI validation_matched (local copy, rows apart from the evaluation file)" in text

    # the same names for a run's summary, from what metrics.json records
    lines = data_lines({r.where: r.as_dict() for r in reports})
    assert lines[1].startswith("HANS, regenerated from the official templates: 60 rows kept (read from ")
    # a file under the working directory is named relative to it (a published summary names no folders)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert data_lines({r.where: r.as_dict() for r in reports})[1].endswith(
        "(read from data/hans/validation.jsonl)"
    )

    full = card_for_recipe(
        StudentArguments(model_name_or_path="embedded:smollm2-135m"),
        config,
        metrics,
        "mnli",
        data_reports=reports,
    )
    assert ModelCard(str(build_model_card(full))).data.base_model_relation == "finetune"


def test_pushing_an_adapter_on_a_local_base_is_refused_with_merge_lora_as_the_fix(
    tmp_path, tokenizer, tiny_dirs, monkeypatch
):
    lora = prepare_student(load_causal_lm(tiny_dirs["student"]), "lora", lora_r=4)
    folder = save_student(lora, tmp_path / "adapter", tokenizer=tokenizer)
    files = fingerprint(folder)
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model is None and "a local folder with no Hub id" in card.text
    with pytest.raises(
        UsageError, match=r"base model .* is a local folder with no Hub id.*merge_lora=True"
    ) as error:
        push_student(folder, "me/tiny", token="hf_x")
    assert "\n" not in str(error.value) and fingerprint(folder) == files
    # merged, it is a plain model: the push goes on (and here stops only at the offline check)
    merged = save_student(lora, tmp_path / "merged", tokenizer=tokenizer, merge_lora=True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="offline mode is on"):
        push_student(merged, "me/tiny", token="hf_x")
