"""Faults, not only bad input: NaN weights, damaged stores and a resumed run's log.

A model whose weights hold one NaN is an error naming the model at every place that would otherwise turn
its logits into a score (`distill-trainer evaluate`, the ICL recipe, the teacher output cache); a stored
result holding NaN is refused by whoever reads it (the evaluation cache, the comparison's findings).
"""

import json
import math
import re
import shutil

import pytest
import torch
from datasets import Dataset
from helpers import DATA, load_recipe, make_dataset, write_recipe
from safetensors.torch import load_file, save_file

from distill_trainer import TwoViewCollator, parse_config
from distill_trainer.errors import UsageError
from distill_trainer.nli.eval_cache import load_evaluation, store_evaluation
from distill_trainer.report.findings import findings
from distill_trainer.run.cli import main
from distill_trainer.teacher.output_cache import cached_teacher_outputs, load_or_build_teacher_outputs

MNLI_FILE = f"{DATA}/mnli/validation_matched.jsonl"


@pytest.fixture
def nan_model_dir(tmp_path, tiny_dirs):
    """The tiny student with a single NaN in one weight matrix: every forward then gives NaN logits."""
    directory = tmp_path / "nan-model"
    shutil.copytree(tiny_dirs["student"], directory)
    weights = load_file(str(directory / "model.safetensors"))
    weights[_projection(weights)][0, 0] = float("nan")
    save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return str(directory)


def _projection(weights) -> str:
    """The first layer's MLP output projection: every token's hidden state passes through it."""
    return next(name for name in weights if "layers.0." in name and name.endswith("down_proj.weight"))


def error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


# ---- A: non-finite numbers are an error naming their source, never a score ----


def test_evaluate_refuses_a_model_with_a_nan_weight(nan_model_dir, tmp_path, tiny_dirs, capsys):
    out = tmp_path / "eval"
    code = main(["evaluate", "--model", nan_model_dir, "--data", MNLI_FILE, "--output_dir", str(out)])
    lines = error_lines(capsys)
    assert code == 2 and len(lines) == 1, lines
    assert nan_model_dir in lines[0] and "NaN or infinite" in lines[0] and "float32" in lines[0]
    assert re.search(r"for (\d+) of \1 queries", lines[0])  # every query, counted
    assert not (out / "metrics.json").exists() and not list(out.glob("predictions_*"))
    # nothing half-written stands in the way: the same command on a sound model completes
    assert (
        main(["evaluate", "--model", tiny_dirs["student"], "--data", MNLI_FILE, "--output_dir", str(out)])
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["eval"]["mnli"]["accuracy"] >= 0


def test_the_icl_recipe_refuses_a_model_with_a_nan_weight(nan_model_dir, tmp_path, tiny_dirs):
    recipe = load_recipe("icl_eval")
    config = write_recipe(
        tmp_path, tiny_dirs, model_name_or_path=nan_model_dir, k=0, output_dir=str(tmp_path / "icl")
    )
    with pytest.raises(UsageError, match="NaN or infinite") as caught:
        recipe.main(["--config", config])
    assert nan_model_dir in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "icl" / "metrics.json").exists()


def test_a_teacher_with_nan_weights_builds_no_cache(tmp_path, tokenizer, teacher):
    with torch.no_grad():  # one NaN in a projection every token passes through
        dict(teacher.named_parameters())[_projection(teacher.state_dict())][0, 0] = float("nan")
    teacher.name_or_path = "tiny-nan-teacher"
    dataset = make_dataset(tokenizer)
    options = dict(distill_vocab="full", temperature=1.0, top_k=8, cache_dir=tmp_path / "cache", batch_size=4)
    with pytest.raises(UsageError, match="tiny-nan-teacher gives NaN or infinite logits") as caught:
        load_or_build_teacher_outputs(teacher, dataset, TwoViewCollator(tokenizer.pad_token_id), **options)
    assert "4 of 4 rows of a batch" in str(caught.value) and "nothing was cached" in str(caught.value)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_a_cache_read_holding_nan_is_rebuilt_with_one_warning_naming_file_and_rows(
    tmp_path, tokenizer, teacher, caplog
):
    collator = TwoViewCollator(tokenizer.pad_token_id)
    dataset = make_dataset(tokenizer)
    options = dict(
        distill_vocab="full", temperature=1.0, top_k=8, cache_dir=tmp_path / "cache", teacher_id="tiny"
    )
    built, path, _ = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    expected = built["teacher_topk_logprobs"]
    del built
    _rewrite_with_nan(path, rows=(1, 5))
    caplog.set_level("WARNING", logger="distill_trainer")
    # a run looks without its teacher first, then builds with it: the damage is reported once
    cached, _ = cached_teacher_outputs(dataset, **options)
    assert cached is None
    rebuilt, again, reused = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert str(path) in warnings[0] and "2 of its 8 rows hold NaN" in warnings[0]
    assert not reused and again == path and rebuilt["teacher_topk_logprobs"] == expected
    assert cached_teacher_outputs(dataset, **options)[0] is not None  # and the rebuilt one is trusted


def _rewrite_with_nan(path, rows):
    """Put NaN into some rows' stored log-probabilities and re-record the checksums (the values are what is
    wrong, as a teacher that produced NaN would have left them, not the files)."""
    from datasets import load_from_disk

    from distill_trainer.integrity import file_records
    from distill_trainer.teacher.store import KEY_FILE

    dataset = load_from_disk(str(path))
    column = "teacher_topk_logprobs"
    values = [
        [[float("nan")] * len(token) for token in row] if i in rows else row
        for i, row in enumerate(dataset[column])
    ]
    damaged = Dataset.from_dict(
        {**{c: dataset[c] for c in dataset.column_names if c != column}, column: values},
        features=dataset.features,
    )
    record = json.loads((path / KEY_FILE).read_text())
    del dataset
    tmp = path.with_name(path.name + "-rewritten")
    damaged.save_to_disk(str(tmp))
    shutil.rmtree(path)
    tmp.rename(path)
    record["files"] = file_records(path, skip=(KEY_FILE,))
    (path / KEY_FILE).write_text(json.dumps(record))


def test_an_evaluation_cache_entry_holding_nan_is_evaluated_again(tmp_path, caplog):
    predictions = [{"label": 0, "prediction": 0, "logprobs": [-0.1, -2.3], "margin": 2.2}] * 3
    predictions = [*predictions, {"label": 1, "prediction": 0, "logprobs": [math.nan, math.nan]}]
    store_evaluation("k" * 64, {"accuracy": 0.5}, predictions, cache_dir=tmp_path)
    caplog.set_level("WARNING", logger="distill_trainer")
    assert load_evaluation("k" * 64, cache_dir=tmp_path) is None
    assert "1 of its 4 rows" in caplog.text
    store_evaluation("k" * 64, {"accuracy": 0.75}, predictions[:3], cache_dir=tmp_path)
    assert load_evaluation("k" * 64, cache_dir=tmp_path)[0] == {"accuracy": 0.75}


def _method(name, logprobs):
    records = [
        {"label": i % 2, "prediction": int(lp[1] > lp[0]), "logprobs": lp, "margin": lp[0] - lp[1]}
        for i, lp in enumerate(logprobs)
    ]
    return {"method": name, "records": {"mnli": records}}


def test_findings_refuse_a_method_whose_predictions_hold_nan():
    good = [[-0.1, -2.0], [-2.0, -0.1]] * 4
    rows = [_method("cd_full", good), _method("pbft_full", [[-0.5, -0.9]] * 8)]
    assert any("cd_full against pbft_full" in sentence for sentence in findings(rows))
    rows[1] = _method("pbft_full", [[-0.5, -0.9]] * 6 + [[math.nan, math.nan]] * 2)
    with pytest.raises(UsageError, match="pbft_full: predictions_mnli.jsonl holds NaN") as caught:
        findings(rows)
    assert "2 of its 8 rows" in str(caught.value)


# ---- C: small ones ----


def test_evaluate_given_a_folder_as_data_says_so(tiny_dirs, capsys):
    code = main(["evaluate", "--model", tiny_dirs["student"], "--data", f"{DATA}/mnli"])
    lines = error_lines(capsys)
    assert code == 2 and len(lines) == 1
    assert "is a folder, not a file" in lines[0] and "does not exist" not in lines[0]
    assert "--data " in lines[0] and ".jsonl" in lines[0]


def _train_loss_lines(text: str) -> list[float]:
    """The `train_loss` the Trainer's closing log line printed (its dict, as PrinterCallback prints it)."""
    import ast

    found = []
    for line in text.splitlines():
        if "'train_loss'" in line:
            found.append(float(ast.literal_eval(line[line.index("{") :])["train_loss"]))
    return found


@pytest.mark.integration
def test_the_console_loss_of_a_resumed_run_is_the_uninterrupted_runs(tmp_path, tiny_dirs, capsys):
    # a loss line every 3 steps and a checkpoint every 2: checkpoint-2 holds 2 steps not yet logged
    config = write_recipe(
        tmp_path,
        tiny_dirs,
        teacher_model_name_or_path=tiny_dirs["teacher"],
        num_train_examples=8,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        logging_steps=3,
        learning_rate=1e-2,
        eval_tasks=["mnli"],
        output_dir=str(tmp_path / "whole"),
    )
    recipe = load_recipe("context_distill")
    configs, given = parse_config(recipe.CONFIG_TYPES, ["--config", config])
    recipe.run_context_distill(*configs, given=given)
    whole = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    printed_whole = _train_loss_lines(capsys.readouterr().out)

    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "whole" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    argv = ["--config", config, "--output_dir", str(tmp_path / "resumed"), "--resume_from_checkpoint", "true"]
    configs, given = parse_config(recipe.CONFIG_TYPES, argv)
    recipe.run_context_distill(*configs, given=given)
    resumed = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    printed_resumed = _train_loss_lines(capsys.readouterr().out)

    # the console rounds to 6 digits; the resumed steps' own mean (what it showed before) is far off
    assert printed_whole == [pytest.approx(whole["train"]["train_loss"], abs=1e-6)]
    assert printed_resumed == printed_whole  # the console line, not only metrics.json
    assert resumed["train"]["train_loss"] == whole["train"]["train_loss"]
    step3 = [
        [log["loss"] for log in m["log_history"] if log.get("step") == 3 and "loss" in log]
        for m in (whole, resumed)
    ]
    assert step3[0] and step3[1] == pytest.approx(step3[0], abs=1e-6)  # the mean over steps 1-3 both times


@pytest.mark.integration
def test_a_recipe_warns_once_about_a_damaged_teacher_cache_and_rebuilds_it(tmp_path, tiny_dirs, caplog):
    recipe = load_recipe("context_distill")
    config = write_recipe(
        tmp_path,
        tiny_dirs,
        teacher_model_name_or_path=tiny_dirs["teacher"],
        teacher_output_cache=True,
        teacher_cache_dir=str(tmp_path / "teacher-cache"),
        num_train_examples=8,
        max_steps=1,
        eval_tasks=["mnli"],
    )

    def run(name):
        argv = ["--config", config, "--output_dir", str(tmp_path / name)]
        configs, given = parse_config(recipe.CONFIG_TYPES, argv)
        recipe.run_context_distill(*configs, given=given)
        return json.loads((tmp_path / name / "metrics.json").read_text())

    first = run("first")
    arrow = next((tmp_path / "teacher-cache").glob("*/*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    caplog.set_level("WARNING", logger="distill_trainer")
    second = run("second")  # looks for the cache without the teacher, then with it: one warning
    damaged = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 1 and str(arrow.parent) in damaged[0], damaged
    assert second["train"]["train_loss"] == first["train"]["train_loss"]  # the same teacher outputs again
