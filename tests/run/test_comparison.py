"""recipes/compare.py end to end on tiny models (2 steps per method), its per-method configs
(run/comparison_methods.py), the plan and its reuse (run/comparison.py), and the report."""

import importlib
import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_comparison

from distill_trainer import UsageError, parse_config
from distill_trainer.run import comparison
from distill_trainer.run.comparison_arguments import DEFAULT_METHODS, METHODS, apply_full, apply_quick
from distill_trainer.run.comparison_methods import method_config
from recipes import compare

ROOT = Path(__file__).resolve().parents[2]
DATA = str(Path(__file__).parents[1] / "data")
EMBEDDED_YAML = ROOT / "recipes" / "configs" / "embedded" / "compare.yaml"


def write_config(tmp_path, tiny_dirs, **overrides):
    values = tiny_comparison(
        tmp_path,
        tiny_dirs,
        model_name_or_path=tiny_dirs["student"],
        per_device_eval_batch_size=16,
        run_name="tiny",
        full_learning_rate=1e-3,
        lora_learning_rate=1e-2,
    )
    values.update(overrides)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own caches: scores read back from another test's run would measure no method."""
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.integration
def test_every_method_end_to_end_in_one_process(tmp_path, tiny_dirs, capsys):
    config = write_config(tmp_path, tiny_dirs, fresh_process_per_method=False)
    summary = compare.main(["--config", config])
    run_dir = tmp_path / "results" / "tiny"
    assert (tmp_path / "results" / "latest").resolve() == run_dir.resolve()

    rows = {row["method"]: row for row in summary["methods"]}
    assert list(rows) == DEFAULT_METHODS
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    for name, row in rows.items():
        method_dir = run_dir / name
        for task in ("mnli", "hans"):
            records = read_jsonl(method_dir / f"predictions_{task}.jsonl")
            figures = row["eval"][task]
            assert figures["n"] == len(records) > 0
            assert figures["accuracy"] == sum(r["prediction"] == r["label"] for r in records) / len(records)
            assert sum(figures["predicted_label_balance"].values()) == pytest.approx(1.0)
            teacher = read_jsonl(run_dir / "icl_teacher" / f"predictions_{task}.jsonl")
            # every method is scored on the very same rows
            assert [(r["premise"], r["hypothesis"]) for r in records] == [
                (r["premise"], r["hypothesis"]) for r in teacher
            ]
            expected = sum(a["prediction"] == b["prediction"] for a, b in zip(records, teacher)) / len(
                records
            )
            assert figures["teacher_agreement"] == pytest.approx(expected)
        assert set(row["eval"]["hans"]["per_heuristic"]) == {"lexical_overlap", "subsequence", "constituent"}
        # in one process the peak is the growth over what earlier methods left resident: may be 0
        assert row["peak_memory_mib"] >= 0 and row["wall_seconds"] > 0
        # the method's config is a complete config of its recipe
        recipe, _ = METHODS[name]
        module = importlib.import_module(f"recipes.{recipe}")
        parse_config(module.CONFIG_TYPES, ["--config", str(method_dir / "method.yaml")])

    assert rows["icl_teacher"]["eval"]["mnli"]["teacher_agreement"] == 1.0
    assert rows["icl_teacher"]["student"] == tiny_dirs["teacher"]
    assert rows["icl_teacher"]["trainable_parameters"] == rows["zero_shot"]["trainable_parameters"] == 0
    assert 0 < rows["cd_lora"]["trainable_parameters"] < rows["cd_full"]["trainable_parameters"]
    assert (
        rows["cd_lora_self"]["teacher"] == "self" and rows["cd_lora_8bit"]["teacher_quantization"] == "8bit"
    )
    for name in ("pbft_full", "cd_full", "cd_lora", "cd_lora_8bit"):
        assert (
            rows[name]["train_seconds"] > 0
            and json.loads((run_dir / name / "metrics.json").read_text())["train"]["global_step"] == 2
        )

    # per-phase peaks of every trained method, the teacher's only where its outputs were computed
    assert all(
        rows[name]["phase_peak_mib"]["train"] > 0 for name in rows if rows[name]["trainable_parameters"]
    )
    assert rows["cd_bitfit"]["trainable_parameters"] > 0  # the tiny Llama has no biases: BitFit adds them
    reference = summary["settings"]["memory_reference"]
    assert reference["peak_mib"] > 0 and "analytic" in reference["source"]
    assert any("recovers" in sentence or "no share" in sentence for sentence in summary["findings"])

    markdown = (run_dir / "summary.md").read_text()
    assert all(f"| {name} |" in markdown for name in rows)
    assert "## Findings" in markdown and "## Memory against fine-tuning the teacher" in markdown
    # the data named as what it is, with the rows every method scored
    assert any(
        "provenance not recorded" in line or "(local copy)" in line for line in summary["settings"]["data"]
    )
    assert summary["settings"]["data"][-1].startswith("scored per method: ")
    for plot in ("accuracy.png", "memory_time.png"):
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("outputs:")


@pytest.mark.integration
def test_fresh_process_per_method_measures_each_method(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs, methods=["zero_shot"])
    summary = compare.main(["--config", config, "--run_name", "isolated"])
    (row,) = summary["methods"]
    # a child process running torch holds well over 50 MiB; the parent's own memory is not counted
    assert row["peak_memory_mib"] > 50 and row["eval"]["mnli"]["teacher_agreement"] is None
    assert (tmp_path / "results" / "latest").resolve().name == "isolated"


def test_method_configs(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs)
    (student_args, data_args, args, training), given = parse_config(
        compare.CONFIG_TYPES, ["--config", config]
    )
    out = tmp_path / "m"
    recipe, pbft = method_config("pbft_lora", student_args, data_args, args, training, out, given)
    assert recipe == "pattern_finetune" and pbft["student_mode"] == "lora" and pbft["learning_rate"] == 1e-2
    assert "teacher_model_name_or_path" not in pbft and "alpha" not in pbft
    assert pbft["demonstration_ids"] == [21, 57]  # so its training queries exclude the demonstrations too
    _, zero_shot = method_config("zero_shot", student_args, data_args, args, training, out, given)
    assert zero_shot["k"] == 0 and "demonstration_ids" not in zero_shot
    _, teacher = method_config("icl_teacher", student_args, data_args, args, training, out, given)
    assert teacher["model_name_or_path"] == tiny_dirs["teacher"] and teacher["k"] == 2
    _, self_teacher = method_config("cd_lora_self", student_args, data_args, args, training, out, given)
    assert self_teacher["teacher_model_name_or_path"] == "self"
    _, full = method_config("cd_full", student_args, data_args, args, training, out, given)
    assert full["learning_rate"] == 1e-3 and full["teacher_quantization"] == "none"
    assert full["output_dir"] == str(out) and full["max_steps"] == 2


def test_quick_shrinks_the_run(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs, num_train_examples=20)
    (_, data_args, args, training), given = parse_config(
        compare.CONFIG_TYPES, ["--config", config, "--quick"]
    )
    assert args.quick
    quick = apply_quick(data_args, args, training, given)
    assert data_args.num_train_examples == args.quick_num_train_examples
    assert training.num_train_epochs == args.quick_num_train_epochs
    # every method's file carries quick's epochs; the parsed settings themselves are left as they were
    assert quick.get("num_train_epochs") == args.quick_num_train_epochs and "num_train_epochs" not in given


def test_unknown_method_is_a_usage_error(tmp_path, tiny_dirs):
    with pytest.raises(UsageError, match="unknown method"):
        compare.main(["--config", write_config(tmp_path, tiny_dirs, methods=["cd_qlora"])])


def test_the_embedded_preset_is_the_papers_shape_on_real_weights():
    (student_args, data_args, args, training), _ = parse_config(
        compare.CONFIG_TYPES, ["--config", str(EMBEDDED_YAML)]
    )
    assert student_args.model_name_or_path == "embedded:smollm2-135m"
    assert training.teacher_model_name_or_path == "embedded:qwen2.5-coder-1.5b"
    # different tokenizers: distillation over the label words, from the teacher's cached answers
    assert training.distill_vocab == "label_words" and training.teacher_output_cache
    assert (data_args.pattern, data_args.k, len(data_args.demonstration_ids)) == ("gpt3", 4, 4)
    # the default answers the paper's questions: ICL, zero-shot, PBFT and CD of one student mode, and
    # memory probes of the other students and the 8-bit teacher
    assert set(args.methods) >= {"icl_teacher", "zero_shot", "icl_student", "pbft_lora", "cd_lora"}
    probes = {"cd_full", "cd_bitfit", "cd_lora_fp32", "cd_lora_bf16", "cd_lora_8bit", "cd_lora_4bit"}
    assert set(args.probe_methods) == probes <= set(args.methods)
    # with power: MNLI standard error at most 2.5 points, 400+ HANS rows balanced over its 30 subcases
    assert data_args.num_eval_examples >= 400 and 30 * data_args.hans_per_subcase >= 400
    assert args.publish_dir is None  # a user's run writes under results/ only
    assert set(args.full_methods) >= {
        "icl_teacher",
        "zero_shot",
        "icl_student",
        "pbft_full",
        "pbft_lora",
        "cd_full",
        "cd_lora",
        "cd_bitfit",
        "cd_lora_self",
        "cd_lora_8bit",
        "pbft_teacher_lora",
    }
    # the upstream Hub ids are named for users who have the Hub
    text = EMBEDDED_YAML.read_text()
    assert "Qwen/Qwen2.5-Coder-1.5B-Instruct" in text and "HuggingFaceTB/SmolLM2-135M-Instruct" in text


# ---------------------------------------------------------------- default, --full, probes and reuse


def test_probe_methods_train_a_few_steps_unscored_with_a_resident_quantized_teacher(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs, probe_methods=["cd_full", "cd_lora_8bit"], memory_only_steps=3)
    (student_args, data_args, args, training), given = parse_config(
        compare.CONFIG_TYPES, ["--config", config]
    )
    out = tmp_path / "m"
    _, full = method_config("cd_full", student_args, data_args, args, training, out, given)
    assert full["max_steps"] == 3 and full["evaluate_after_training"] is False
    assert full.get("teacher_output_cache", True)  # the student's memory: the teacher's outputs are cached
    _, eight_bit = method_config("cd_lora_8bit", student_args, data_args, args, training, out, given)
    assert eight_bit["max_steps"] == 3 and eight_bit["teacher_output_cache"] is False
    _, lora = method_config("cd_lora", student_args, data_args, args, training, out, given)
    assert lora["max_steps"] == 2 and lora.get("evaluate_after_training", True)


def test_dtype_settings_reach_only_the_methods_they_name(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs, lora_base_dtype="bfloat16", student_eval_dtype="bfloat16")
    (student_args, data_args, args, training), given = parse_config(
        compare.CONFIG_TYPES, ["--config", config]
    )
    out = tmp_path / "m"

    def dtype(name):
        return method_config(name, student_args, data_args, args, training, out, given)[1].get("dtype")

    assert dtype("cd_lora") == dtype("pbft_lora") == dtype("zero_shot") == dtype("icl_student") == "bfloat16"
    # full and BitFit students train their weights: float32, whatever the LoRA base is
    assert dtype("cd_full") == dtype("cd_bitfit") == dtype("pbft_full") == "float32"
    rated = write_config(tmp_path, tiny_dirs, learning_rates=["cd_lora=0.05"])
    (student_args, data_args, args, training), given = parse_config(compare.CONFIG_TYPES, ["--config", rated])
    lrs = {
        n: method_config(n, student_args, data_args, args, training, out, given)[1]["learning_rate"]
        for n in ("cd_lora", "pbft_lora", "cd_lora_8bit")
    }
    assert lrs == {"cd_lora": 0.05, "pbft_lora": 1e-2, "cd_lora_8bit": 1e-2}
    with pytest.raises(UsageError, match="not method=value"):
        compare.main(["--config", write_config(tmp_path, tiny_dirs, learning_rates=["cd_lora:0.1"])])
    with pytest.raises(UsageError, match="unknown method"):
        compare.main(["--config", write_config(tmp_path, tiny_dirs, learning_rates=["cd_qlora=0.1"])])
    with pytest.raises(UsageError, match="lora_base_dtype 'int3'"):
        compare.main(["--config", write_config(tmp_path, tiny_dirs, lora_base_dtype="int3")])


def test_full_runs_every_row_and_no_probe(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs, methods=["zero_shot", "cd_full"], probe_methods=["cd_full"])
    (_, _, args, _), _ = parse_config(compare.CONFIG_TYPES, ["--config", config, "--full"])
    apply_full(args)
    assert args.methods == DEFAULT_METHODS and args.probe_methods == []
    with pytest.raises(UsageError, match="--full and --quick"):
        compare.main(["--config", config, "--full", "--quick"])


@pytest.mark.integration
def test_a_probe_row_is_labelled_and_kept_out_of_the_scores(tmp_path, tiny_dirs):
    config = write_config(
        tmp_path,
        tiny_dirs,
        methods=["icl_teacher", "zero_shot", "cd_lora", "cd_full"],
        probe_methods=["cd_full"],
        memory_only_steps=2,
        fresh_process_per_method=False,
    )
    summary = compare.main(["--config", config])
    rows = {row["method"]: row for row in summary["methods"]}
    assert rows["cd_full"]["memory_probe_steps"] == 2 and rows["cd_full"]["eval"] == {}
    assert rows["cd_full"]["phase_peak_mib"]["train"] > 0
    markdown = (tmp_path / "results" / "tiny" / "summary.md").read_text()
    assert "| cd_full (memory probe, 2 steps) |" in markdown and "## The paper's claims" in markdown
    # the probe has no predictions, so no recovery is claimed for it; its memory is reported
    assert not any(s.startswith("cd_full recovers") for s in summary["findings"])
    assert any(s.startswith("cd_full needs") for s in summary["findings"])
    assert rows["cd_full"]["needed_memory_mib"] <= rows["cd_full"]["peak_memory_mib"]
    assert any(s.startswith("In-domain recovery") for s in summary["claims"])


@pytest.mark.integration
def test_an_unchanged_rerun_reads_every_method_back_and_a_change_reruns_only_what_it_touches(
    tmp_path, tiny_dirs, monkeypatch, capsys
):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    config = write_config(
        tmp_path,
        tiny_dirs,
        methods=["zero_shot", "pbft_lora"],
        fresh_process_per_method=False,
        data_dir=str(data),
    )
    first = compare.main(["--config", config, "--run_name", "first"])
    ran = []
    real_run = comparison.run_in_this_process

    def counting_run(scripts, recipe, config_path, tracker, name, extra=()):
        ran.append(name)
        return real_run(scripts, recipe, config_path, tracker, name, extra)

    monkeypatch.setattr(comparison, "run_in_this_process", counting_run)
    second = compare.main(["--config", config, "--run_name", "second"])
    assert ran == [] and second["settings"]["reused"] == ["pbft_lora", "zero_shot"]
    for a, b in zip(first["methods"], second["methods"]):
        assert a["eval"]["mnli"]["accuracy"] == b["eval"]["mnli"]["accuracy"]
        assert b["reused_from"] == "first" and b["peak_memory_mib"] == a["peak_memory_mib"]
    second_dir = tmp_path / "results" / "second"
    assert (second_dir / "pbft_lora" / "adapter_model.safetensors").is_file()
    assert "Read back from earlier runs" in (second_dir / "summary.md").read_text()
    assert "(read back from an earlier run)" in capsys.readouterr().out

    # a learning rate touches the LoRA student only
    compare.main(["--config", config, "--run_name", "third", "--lora_learning_rate", "0.02"])
    assert ran == ["pbft_lora"]
    # a changed data row touches both
    rows = (data / "mnli" / "validation_matched.jsonl").read_text().splitlines()
    rows[0] = rows[0].replace('"label": 0', '"label": 2') if '"label": 0' in rows[0] else rows[0] + " "
    (data / "mnli" / "validation_matched.jsonl").write_text("\n".join(rows) + "\n")
    compare.main(["--config", config, "--run_name", "fourth", "--lora_learning_rate", "0.02"])
    assert ran == ["pbft_lora", "zero_shot", "pbft_lora"]
    # an interrupted method (no fingerprint written) is never read back
    (tmp_path / "results" / "fourth" / "zero_shot" / "fingerprint.json").unlink()
    assert compare.main(["--config", config, "--run_name", "fifth", "--lora_learning_rate", "0.02"])
    assert ran[-1] == "zero_shot"


def test_every_method_is_checked_before_the_first_one_runs(tmp_path, tiny_dirs):
    config = write_config(
        tmp_path, tiny_dirs, methods=["icl_student", "cd_lora"], lora_target_modules=["no_such_proj"]
    )
    with pytest.raises(UsageError, match="method cd_lora \\(context_distill\\): .*no_such_proj") as error:
        compare.main(["--config", config])
    assert "\n" not in str(error.value)
    assert not (tmp_path / "results" / "tiny" / "icl_student" / "metrics.json").exists()  # nothing ran


def test_check_only_checks_every_method_and_runs_nothing(tmp_path, tiny_dirs, capsys):
    config = write_config(tmp_path, tiny_dirs, methods=["zero_shot", "pbft_lora", "cd_lora"])
    assert compare.main(["--config", config, "--check_only", "true"]) == {
        "checked": ["zero_shot", "pbft_lora", "cd_lora"]
    }
    assert "ok: 3 methods checked" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()
    bad = write_config(tmp_path, tiny_dirs, methods=["cd_lora"], lora_target_modules=["no_such_proj"])
    with pytest.raises(UsageError, match="method cd_lora"):
        compare.main(["--config", bad, "--check_only", "true"])
