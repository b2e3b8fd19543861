"""A teacher averaged over demonstration sets and calibrated on content-free queries: the arithmetic, ICL
evaluation with its spread over demonstration seeds, and the teacher output cache of such a teacher."""

import json
import math

import pytest
import torch
from helpers import cli_args, load_recipe

from distill_trainer import DataArguments, UsageError
from distill_trainer.teacher.ensemble import (
    at_temperature,
    at_temperature_one,
    calibrate,
    combine_members,
    content_free_distribution,
)

# ---------------------------------------------------------------- the arithmetic


def test_one_set_without_calibration_is_the_single_set_teacher_exactly():
    scores = torch.randn(5, 2) - 3.0  # unnormalised label-word log-probs, as score_label_words gives them
    assert torch.equal(combine_members([scores]), scores)


def test_calibration_against_a_uniform_content_free_distribution_changes_nothing():
    scores = torch.randn(7, 3, dtype=torch.float64) - 2.0
    uniform = content_free_distribution(torch.zeros(4, 3))
    assert torch.allclose(uniform.exp(), torch.full((3,), 1 / 3, dtype=torch.float64))
    calibrated = combine_members([scores], [uniform])
    assert torch.allclose(calibrated, torch.log_softmax(scores, -1), atol=1e-12)
    assert torch.equal(calibrated.argmax(-1), scores.argmax(-1))


def test_calibration_removes_the_bias_the_content_free_queries_show():
    evidence = torch.randn(6, 2, dtype=torch.float64)
    bias = torch.tensor([2.5, -1.0], dtype=torch.float64)  # a prompt that pushes every answer to label 0
    biased = evidence + bias
    content_free = content_free_distribution(torch.stack([bias, bias + 0.0]))
    assert torch.allclose(calibrate(biased, content_free), torch.log_softmax(evidence, -1), atol=1e-12)


def test_the_ensemble_is_the_mean_of_the_sets_probabilities():
    a, b = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    mixture = combine_members([a, b])
    expected = (torch.softmax(a, -1) + torch.softmax(b, -1)) / 2
    assert torch.allclose(mixture.exp(), expected, atol=1e-12)
    geometric = combine_members([a, b], average="logprobs")
    assert torch.allclose(geometric.exp().sum(-1), torch.ones(4, dtype=torch.float64))
    assert not torch.allclose(geometric, mixture)


def test_temperature_is_undone_exactly():
    logits = torch.randn(3, 4, dtype=torch.float64)
    for temperature in (0.5, 1.0, 2.0):
        stored = torch.log_softmax(logits / temperature, -1)  # what the output cache keeps
        assert torch.allclose(at_temperature_one(stored, temperature), torch.log_softmax(logits, -1))
        assert torch.allclose(at_temperature(at_temperature_one(stored, temperature), temperature), stored)


def test_bad_ensemble_settings_are_one_line_each():
    with pytest.raises(UsageError, match="demonstration_sets must be >= 1"):
        DataArguments(demonstration_sets=0)
    with pytest.raises(UsageError, match="choose one of: none, content_free"):
        DataArguments(teacher_calibration="contextual")
    with pytest.raises(UsageError, match="set resample_demonstrations: false"):
        DataArguments(demonstration_sets=2, resample_demonstrations=True)
    with pytest.raises(UsageError, match="remove demonstration_ids"):
        DataArguments(k=1, demonstration_ids=[3], demonstration_seeds=[0, 1])


# ---------------------------------------------------------------- ICL evaluation


def _icl_argv(model, tmp_path, name, *extra):
    common = cli_args(model_name_or_path=model, task="mnli", eval_tasks=["mnli", "hans"], pattern="gpt3", k=2)
    return [*common, "--output_dir", str(tmp_path / name), *extra]


@pytest.mark.integration
def test_ensemble_evaluation_reuses_each_set_and_reports_the_seed_spread(tmp_path, tiny_dirs, monkeypatch):
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("icl_eval")
    model = tiny_dirs["teacher"]
    single = recipe.main(_icl_argv(model, tmp_path, "single", "--demonstration_seed", "1"))
    ensemble = recipe.main(
        _icl_argv(
            model,
            tmp_path,
            "ensemble",
            "--demonstration_sets",
            "3",
            "--teacher_calibration",
            "content_free",
            "--demonstration_seeds",
            "1",
            "2",
        )
    )
    for task in ("mnli", "hans"):
        report = ensemble["demonstration_seeds"]["1"][task]["teacher_ensemble"]
        # set 0 of seed 1 is the single-set teacher of seed 1, scored once and read back
        assert report["members"][0]["accuracy"] == single["eval"][task]["accuracy"]
        assert report["members"][0]["auc"] == single["eval"][task]["auc"]
        assert report["demonstration_sets"] == 3 and report["calibration"] == "content_free"
        assert len(report["bias"]) == 3
        assert all(math.isclose(sum(p), 1.0, abs_tol=1e-9) for p in report["bias"])
        spread = ensemble["seed_spread"][task]
        for metric in ("accuracy", "set0_accuracy"):
            values = spread[metric]["values"]
            assert len(values) == 2
            assert spread[metric]["range"] == pytest.approx(max(values) - min(values))
        assert spread["set0_accuracy"]["values"][0] == single["eval"][task]["accuracy"]
    lines = (tmp_path / "ensemble" / "predictions_mnli_seed2.jsonl").read_text().splitlines()
    assert len(lines) == ensemble["demonstration_seeds"]["2"]["mnli"]["n"]

    # everything is cached now: the same ensemble again never loads the model
    monkeypatch.setattr(
        recipe, "load_causal_lm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded"))
    )
    again = recipe.main(
        _icl_argv(
            model,
            tmp_path,
            "again",
            "--demonstration_sets",
            "3",
            "--teacher_calibration",
            "content_free",
            "--demonstration_seed",
            "2",
        )
    )
    assert again["eval"]["mnli"]["accuracy"] == ensemble["demonstration_seeds"]["2"]["mnli"]["accuracy"]


# ---------------------------------------------------------------- the teacher output cache


def _distill(tmp_path, tiny_dirs, name, *extra):
    recipe = load_recipe("context_distill")
    argv = cli_args(
        model_name_or_path=tiny_dirs["student"],
        teacher_model_name_or_path=tiny_dirs["teacher"],
        task="mnli",
        eval_tasks="mnli",
        num_eval_examples=4,
        pattern="gpt3",
        k=2,
        num_train_examples=8,
        distill_vocab="label_words",
        teacher_output_cache=True,
        max_steps=1,
        per_device_train_batch_size=4,
        save_strategy="no",
        output_dir=tmp_path / name,
    )
    argv += extra
    return recipe.main(argv)["teacher_output_cache"]["train"]


@pytest.mark.integration
def test_the_ensemble_teachers_outputs_are_keyed_on_sets_seeds_and_calibration(
    tmp_path, tiny_dirs, monkeypatch
):
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    base = ("--demonstration_sets", "2", "--teacher_calibration", "content_free")
    first = _distill(tmp_path, tiny_dirs, "a", *base)
    assert first["ensemble"]["demonstration_sets"] == 2 and len(first["ensemble"]["bias"]) == 2
    again = _distill(tmp_path, tiny_dirs, "b", *base)
    assert again["reused"] is True and again["ensemble"]["key"] == first["ensemble"]["key"]
    keys = {
        first["ensemble"]["key"],
        _distill(
            tmp_path, tiny_dirs, "c", "--demonstration_sets", "3", "--teacher_calibration", "content_free"
        )["ensemble"]["key"],
        _distill(tmp_path, tiny_dirs, "d", *base, "--demonstration_seed", "5")["ensemble"]["key"],
        _distill(tmp_path, tiny_dirs, "e", "--demonstration_sets", "2")["ensemble"]["key"],
        _distill(tmp_path, tiny_dirs, "g", "--demonstration_sets", "2", "--teacher_calibration", "batch")[
            "ensemble"
        ]["key"],
    }
    assert len(keys) == 5
    # one set, no calibration: today's teacher, no ensemble step at all
    assert "ensemble" not in _distill(tmp_path, tiny_dirs, "f")


def test_an_ensemble_without_the_label_word_output_cache_is_refused(tmp_path, tiny_dirs):
    recipe = load_recipe("context_distill")
    with pytest.raises(UsageError, match="teacher_output_cache: true and distill_vocab: label_words"):
        recipe.main(
            cli_args(
                model_name_or_path=tiny_dirs["student"],
                teacher_model_name_or_path=tiny_dirs["teacher"],
                k=2,
                demonstration_sets=2,
                output_dir=tmp_path / "refused",
            )
        )
    assert not (tmp_path / "refused").exists()


@pytest.mark.integration
def test_the_benchmark_compares_the_averages_on_the_sets_icl_eval_scored(tmp_path, tiny_dirs, monkeypatch):
    from helpers import write_recipe

    from benchmarks import teacher_ensemble

    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    config = write_recipe(
        tmp_path,
        tiny_dirs,
        model_name_or_path=tiny_dirs["teacher"],
        pattern="gpt3",
        demonstration_sets=2,
        demonstration_seeds=[0, 3],
        teacher_calibration="content_free",
    )
    evaluated = load_recipe("icl_eval").main(["--config", config])
    report = teacher_ensemble.main(["--config", config, "--output-dir", str(tmp_path / "bench")])
    for seed in ("0", "3"):
        for task in ("mnli", "hans"):
            icl = evaluated["demonstration_seeds"][seed][task]
            bench = report["seeds"][seed][task]
            assert bench["one set"]["accuracy"] == icl["teacher_ensemble"]["members"][0]["accuracy"]
            assert bench["ensemble (probabilities), content-free calibration"]["accuracy"] == icl["accuracy"]
    assert (tmp_path / "bench" / "variants.md").read_text().count("| mnli |") == len(
        teacher_ensemble.VARIANTS
    )


@pytest.mark.integration
def test_batch_calibration_divides_out_each_sets_mean_answer_on_the_rows_it_scores(
    tmp_path, tiny_dirs, monkeypatch
):
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("icl_eval")
    model = tiny_dirs["teacher"]
    plain = recipe.main(_icl_argv(model, tmp_path, "plain"))
    batch = recipe.main(_icl_argv(model, tmp_path, "batch", "--teacher_calibration", "batch"))
    for task in ("mnli", "hans"):
        records = [
            json.loads(line)
            for line in (tmp_path / "plain" / f"predictions_{task}.jsonl").read_text().splitlines()
        ]
        probabilities = torch.softmax(torch.tensor([r["logprobs"] for r in records], dtype=torch.float64), -1)
        (bias,) = batch["eval"][task]["teacher_ensemble"]["bias"]
        assert bias == pytest.approx(probabilities.mean(0).tolist(), abs=1e-5)
        # one set: the ranking of rows is untouched, only the threshold moves
        assert batch["eval"][task]["auc"] == pytest.approx(plain["eval"][task]["auc"], abs=1e-6)
        calibrated = (probabilities / torch.tensor(bias, dtype=torch.float64)).argmax(-1).tolist()
        lines = (tmp_path / "batch" / f"predictions_{task}.jsonl").read_text().splitlines()
        assert [json.loads(line)["prediction"] for line in lines] == calibrated
