import pytest

from distill_trainer.errors import UsageError
from distill_trainer.training.config import DistillationConfig, StudentArguments
from distill_trainer.training.parsing import parse_config

TYPES = [StudentArguments, DistillationConfig]


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_and_cli_overrides(tmp_path):
    path = write(
        tmp_path,
        f"model_name_or_path: tiny\noutput_dir: {tmp_path}/o\nalpha: 0.5\nloss: jsd\n"
        "learning_rate: 3.0e-5\nlora_target_modules: [q_proj, v_proj]\n",
    )
    (student, config), given = parse_config(
        TYPES, ["--config", path, "--learning_rate", "1e-4", "--temperature", "2"]
    )
    assert student.model_name_or_path == "tiny" and student.lora_target_modules == ["q_proj", "v_proj"]
    assert config.alpha == 0.5 and config.loss == "jsd"
    assert config.learning_rate == 1e-4 and config.temperature == 2.0
    assert given.get("learning_rate") == 1e-4 and given.get("alpha") == 0.5
    assert "beta" not in given and not hasattr(config, "recipe")  # nothing hung on the config


def test_unknown_yaml_key_is_rejected_with_a_suggestion(tmp_path):
    path = write(tmp_path, "temprature: 2.0\n")
    with pytest.raises(UsageError, match="unknown key 'temprature'.*did you mean 'temperature'"):
        parse_config(TYPES, ["--config", path])


def test_unknown_cli_key_is_rejected(tmp_path):
    with pytest.raises(UsageError, match="unknown key 'alfa' in the command line"):
        parse_config(TYPES, ["--alfa", "0.3"])


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("alpha", 1.5, "alpha must be in"),
        ("alpha", -0.1, "alpha must be in"),
        ("temperature", 0.0, "temperature must be > 0"),
        ("loss", "kl", "loss='kl' is not valid"),
        ("beta", 2.0, "beta must be in"),
        ("distill_vocab", "some", "distill_vocab='some' is not valid"),
        ("teacher_quantization", "3bit", "teacher_quantization='3bit'"),
    ],
)
def test_range_checks(tmp_path, field, value, message):
    with pytest.raises(UsageError, match=message):
        DistillationConfig(output_dir=str(tmp_path), **{field: value})


def test_missing_and_malformed_recipe_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        parse_config(TYPES, ["--config", str(tmp_path / "nope.yaml")])
    with pytest.raises(UsageError, match="must be a mapping"):
        parse_config(TYPES, ["--config", write(tmp_path, "- a\n- b\n")])


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_warns_only_on_a_cpu_that_emulates_it(monkeypatch, caplog, tiny_dirs, native):
    import torch

    from distill_trainer.models import loading as models

    monkeypatch.setattr(models.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    with caplog.at_level("WARNING", logger=models.logger.name):
        model = models.load_causal_lm(tiny_dirs["teacher"], dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    warned = [r.getMessage() for r in caplog.records if "no native bfloat16" in r.getMessage()]
    assert len(warned) == (0 if native else 1)
    if not native:
        assert "in bfloat16" in warned[0] and "use float32" in warned[0]


def test_bf16_training_warns_on_an_emulating_cpu(monkeypatch, caplog, tmp_path):
    from distill_trainer.models import loading as models
    from distill_trainer.nli.arguments import DataArguments
    from distill_trainer.run.validate import check_training_settings

    monkeypatch.setattr(models, "cpu_bf16_is_emulated", lambda: True)
    monkeypatch.setattr(models.torch.cuda, "is_available", lambda: False)
    config = DistillationConfig(output_dir=str(tmp_path), use_cpu=True, bf16=True)
    with caplog.at_level("WARNING", logger=models.logger.name):
        check_training_settings(DataArguments(), config)
    assert any("bf16: true (mixed-precision training)" in r.getMessage() for r in caplog.records)


def test_greedy_rollouts_are_asked_for_as_the_teachers_replies_are(tmp_path):
    from distill_trainer.training.rollouts import rollout_settings

    greedy = DistillationConfig(output_dir=str(tmp_path), rollout_do_sample=False, report_to="none")
    assert not rollout_settings(greedy, step=0).do_sample
    assert rollout_settings(DistillationConfig(output_dir=str(tmp_path), report_to="none"), step=0).do_sample
    with pytest.raises(UsageError, match="rollout_temperature > 0.*rollout_do_sample: false"):
        DistillationConfig(output_dir=str(tmp_path), rollout_temperature=-1.0)


def test_the_old_greedy_setting_still_works_with_a_deprecation_warning(tmp_path):
    path = write(tmp_path, f"output_dir: {tmp_path}/o\nrollout_temperature: 0\n")
    with pytest.warns(FutureWarning, match="rollout_temperature: 0 .*deprecated.*rollout_do_sample: false"):
        (_, config), _ = parse_config(TYPES, ["--config", path])
    assert config.rollout_do_sample is False and config.rollout_temperature == 1.0
