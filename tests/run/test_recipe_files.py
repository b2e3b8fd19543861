"""Every YAML under recipes/configs starts with the command that runs it, and every recipe YAML loads
into the dataclasses of the recipe that command names (its CONFIG_TYPES)."""

import importlib
import shlex
from pathlib import Path

import pytest
import yaml

from distill_trainer import DistillationConfig, StudentArguments, parse_config
from distill_trainer.nli.arguments import DataArguments

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "recipes" / "configs").rglob("*.yaml"))
RECIPE_CONFIGS = [p for p in CONFIGS if p.parent.name != "accelerate"]
DEFAULT_TYPES = (StudentArguments, DataArguments, DistillationConfig)


def header_command(path: Path) -> list[str]:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch "), f"{path} must begin with '# accelerate launch ...'"
    return shlex.split(first[2:])


def option(argv: list[str], name: str) -> str:
    assert name in argv, f"the command has no {name}: {argv}"
    return argv[argv.index(name) + 1]


def recipe_types(script: Path):
    module = importlib.import_module(f"recipes.{script.stem}")
    return getattr(module, "CONFIG_TYPES", DEFAULT_TYPES)


def test_the_expected_files_exist():
    names = {str(p.relative_to(ROOT / "recipes" / "configs")) for p in CONFIGS}
    assert {
        "accelerate/cpu.yaml",
        "accelerate/single_gpu.yaml",
        "paper/icl.yaml",
        "paper/pbft.yaml",
        "paper/cd-full.yaml",
        "paper/cd-lora.yaml",
        "paper/cd-8bit-teacher.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "recipes" / "configs")))
def test_header_is_a_runnable_command(path):
    argv = header_command(path)
    accelerate_config = option(argv, "--config_file")
    assert (ROOT / accelerate_config).is_file()
    script = next(a for a in argv if a.endswith(".py"))
    assert (ROOT / script).is_file() and script.startswith("recipes/")
    relative = str(path.relative_to(ROOT))
    assert relative in (option(argv, "--config"), accelerate_config), f"{relative}'s command does not run it"


@pytest.mark.parametrize(
    "path", RECIPE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "recipes" / "configs"))
)
def test_recipe_yaml_loads_into_the_recipe_dataclasses(path):
    script = ROOT / next(a for a in header_command(path) if a.endswith(".py"))
    _, given = parse_config(recipe_types(script), ["--config", str(path)])
    assert set(given) == set(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("name", ["cpu.yaml", "single_gpu.yaml"])
def test_single_process_accelerate_configs(name):
    config = yaml.safe_load((ROOT / "recipes" / "configs" / "accelerate" / name).read_text())
    assert config["num_processes"] == 1 and config["distributed_type"] == "NO"
    assert config["use_cpu"] is (name == "cpu.yaml")


def test_paper_preset_is_the_papers_setting():
    files = {p.stem: p for p in RECIPE_CONFIGS if p.parent.name == "paper"}
    parsed = {
        name: parse_config(DEFAULT_TYPES, ["--config", str(path)]).configs for name, path in files.items()
    }
    for name, (_student, data, config) in parsed.items():
        assert (data.task, data.eval_tasks, data.pattern, data.k) == (
            "mnli",
            ["mnli", "hans"],
            "minimal",
            16,
        ), name
        assert config.output_dir == f"results/paper/{name}"
    assert parsed["icl"][0].model_name_or_path == "facebook/opt-1.3b"
    trained = {n: p for n, p in parsed.items() if n != "icl"}
    assert set(trained) == {"pbft", "cd-full", "cd-lora", "cd-8bit-teacher"}
    for name, (student, data, config) in trained.items():
        assert student.model_name_or_path == "facebook/opt-125m", name
        assert (
            data.num_train_examples == 128 and config.learning_rate == 1e-5 and config.num_train_epochs == 40
        )
        assert config.warmup_steps == 0.5 and config.per_device_train_batch_size == 32
        expected_teacher = None if name == "pbft" else "facebook/opt-1.3b"
        assert config.teacher_model_name_or_path == expected_teacher, name
    assert parsed["cd-lora"][0].student_mode == "lora"
    assert parsed["cd-8bit-teacher"][2].teacher_quantization == "8bit"
    assert parsed["cd-full"][2].teacher_quantization == "none" and parsed["cd-full"][0].student_mode == "full"


@pytest.mark.parametrize(
    "path", RECIPE_CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "recipes" / "configs"))
)
def test_a_preset_naming_an_embedded_qwen_model_names_its_upstream_hub_id(path):
    from distill_trainer.models.embedded import EMBEDDED_MODELS

    text = path.read_text()
    for alias, spec in EMBEDDED_MODELS.items():
        if alias.startswith("qwen") and f"embedded:{alias}" in text:
            assert spec.hub_id in text, f"{path.name} uses embedded:{alias}; name {spec.hub_id} in a comment"
