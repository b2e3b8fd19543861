"""The recipe checks take the settings given explicitly as an argument (`GivenSettings`), never from the
config objects, and change no config; a config built in Python meets the same checks."""

import dataclasses

import pytest

from distill_trainer import DataArguments, DistillationConfig, StudentArguments, UsageError
from distill_trainer.run.validate import RECIPES, check_recipe_rules, validate_recipe
from distill_trainer.training.parsing import GivenSettings, given_or_inferred, parse_config


def _configs(tmp_path, **training):
    return (
        StudentArguments(model_name_or_path="student-dir"),
        DataArguments(),
        DistillationConfig(output_dir=str(tmp_path / "out"), report_to="none", **training),
    )


def test_a_python_built_config_meets_the_checks_a_recipe_file_meets(tmp_path):
    student, data, config = _configs(tmp_path, alpha=0.5)
    with pytest.raises(UsageError, match="pattern_finetune uses alpha=0.*got alpha=0.5"):
        validate_recipe("pattern_finetune", student, data, config)
    student, data, config = _configs(tmp_path, teacher_quantization="8bit")
    with pytest.raises(
        UsageError, match="icl_eval reads no teacher, so teacher_quantization would be ignored"
    ):
        validate_recipe("icl_eval", student, data, config)


def test_the_same_values_from_a_recipe_file_fail_alike(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model_name_or_path: student-dir\noutput_dir: {tmp_path / 'out'}\nalpha: 0.5\n")
    configs, given = parse_config(
        (StudentArguments, DataArguments, DistillationConfig), ["--config", str(recipe)]
    )
    with pytest.raises(UsageError, match="pattern_finetune uses alpha=0"):
        validate_recipe("pattern_finetune", *configs, given=given)


def test_an_alpha_given_at_its_default_value_is_still_given(tmp_path):
    # from a recipe file, `alpha: 1.0` was written by the user: pattern_finetune rejects it; built in
    # Python, the default is indistinguishable from no choice, and the recipe sets alpha=0 itself
    student, data, config = _configs(tmp_path)
    rules = RECIPES["pattern_finetune"]
    with pytest.raises(UsageError, match="pattern_finetune uses alpha=0"):
        check_recipe_rules("pattern_finetune", rules, student, config, GivenSettings({"alpha": 1.0}))
    check_recipe_rules(
        "pattern_finetune", rules, student, config, given_or_inferred(None, (student, data, config))
    )


def test_checks_change_no_config_and_return_the_one_the_recipe_runs_with(tmp_path):
    student, data, config = _configs(tmp_path)
    before = dataclasses.asdict(student), dataclasses.asdict(data), config.to_dict()
    runs_with = check_recipe_rules(
        "pattern_finetune", RECIPES["pattern_finetune"], student, config, GivenSettings()
    )
    assert (dataclasses.asdict(student), dataclasses.asdict(data), config.to_dict()) == before
    assert config.alpha == 1.0 and runs_with.alpha == 0.0  # gold labels only, in a new config
    assert {k: v for k, v in runs_with.to_dict().items() if k != "alpha"} == {
        k: v for k, v in before[2].items() if k != "alpha"
    }


def test_given_settings_are_read_only_and_inferred_from_the_recipes_own_fields(tmp_path):
    given = GivenSettings({"alpha": 0.5})
    with pytest.raises(TypeError):
        given.values["alpha"] = 0.0
    more = given.with_values(num_train_epochs=1.0)
    assert dict(more.items()) == {"alpha": 0.5, "num_train_epochs": 1.0} and "num_train_epochs" not in given
    student, data, config = _configs(tmp_path, alpha=0.5, learning_rate=1e-3)
    inferred = GivenSettings.from_defaults((student, data, config))
    # TrainingArguments' own fields are rewritten by its __post_init__: not evidence of a choice
    assert dict(inferred.items()) == {"model_name_or_path": "student-dir", "alpha": 0.5}
