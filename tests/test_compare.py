"""recipes/compare.py end to end on tiny models (2 steps per method), its per-method configs, and the
report."""

import importlib
import json
from pathlib import Path

import pytest
import yaml

from distill_trainer import UsageError, parse_config
from recipes import compare

ROOT = Path(__file__).resolve().parent.parent
DATA = str(Path(__file__).parent / "data")
EMBEDDED_YAML = ROOT / "recipes" / "configs" / "embedded" / "compare.yaml"


def write_config(tmp_path, tiny_dirs, **overrides):
    values = {
        "model_name_or_path": tiny_dirs["student"],
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
        "per_device_eval_batch_size": 16,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "results_dir": str(tmp_path / "results"),
        "run_name": "tiny",
        "full_learning_rate": 1e-3,
        "lora_learning_rate": 1e-2,
    }
    values.update(overrides)
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_every_method_end_to_end_in_one_process(tmp_path, tiny_dirs, capsys):
    config = write_config(tmp_path, tiny_dirs, fresh_process_per_method=False)
    summary = compare.main(["--config", config])
    run_dir = tmp_path / "results" / "tiny"
    assert (tmp_path / "results" / "latest").resolve() == run_dir.resolve()

    rows = {row["method"]: row for row in summary["methods"]}
    assert list(rows) == compare.DEFAULT_METHODS
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
        recipe, _ = compare.METHODS[name]
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
    for plot in ("accuracy.png", "memory_time.png"):
        assert (run_dir / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("outputs:")


def test_fresh_process_per_method_measures_each_method(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs, methods=["zero_shot"])
    summary = compare.main(["--config", config, "--run_name", "isolated"])
    (row,) = summary["methods"]
    # a child process running torch holds well over 50 MiB; the parent's own memory is not counted
    assert row["peak_memory_mib"] > 50 and row["eval"]["mnli"]["teacher_agreement"] is None
    assert (tmp_path / "results" / "latest").resolve().name == "isolated"


def test_method_configs(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs)
    student_args, data_args, args, training = parse_config(compare.CONFIG_TYPES, ["--config", config])
    out = tmp_path / "m"
    recipe, pbft = compare.method_config("pbft_lora", student_args, data_args, args, training, out)
    assert recipe == "pattern_finetune" and pbft["student_mode"] == "lora" and pbft["learning_rate"] == 1e-2
    assert "teacher_model_name_or_path" not in pbft and "alpha" not in pbft
    assert pbft["demonstration_ids"] == [21, 57]  # so its training queries exclude the demonstrations too
    _, zero_shot = compare.method_config("zero_shot", student_args, data_args, args, training, out)
    assert zero_shot["k"] == 0 and "demonstration_ids" not in zero_shot
    _, teacher = compare.method_config("icl_teacher", student_args, data_args, args, training, out)
    assert teacher["model_name_or_path"] == tiny_dirs["teacher"] and teacher["k"] == 2
    _, self_teacher = compare.method_config("cd_lora_self", student_args, data_args, args, training, out)
    assert self_teacher["teacher_model_name_or_path"] == "self"
    _, full = compare.method_config("cd_full", student_args, data_args, args, training, out)
    assert full["learning_rate"] == 1e-3 and full["teacher_quantization"] == "none"
    assert full["output_dir"] == str(out) and full["max_steps"] == 2


def test_quick_shrinks_the_run(tmp_path, tiny_dirs):
    config = write_config(tmp_path, tiny_dirs, num_train_examples=20)
    _, data_args, args, training = parse_config(compare.CONFIG_TYPES, ["--config", config, "--quick"])
    assert args.quick
    compare.apply_quick(data_args, args, training)
    assert data_args.num_train_examples == args.quick_num_train_examples
    assert training.recipe["num_train_epochs"] == args.quick_num_train_epochs


def test_unknown_method_is_a_usage_error(tmp_path, tiny_dirs):
    with pytest.raises(UsageError, match="unknown method"):
        compare.main(["--config", write_config(tmp_path, tiny_dirs, methods=["cd_qlora"])])


def test_the_embedded_preset_is_the_papers_shape_on_real_weights():
    student_args, data_args, args, training = parse_config(
        compare.CONFIG_TYPES, ["--config", str(EMBEDDED_YAML)]
    )
    assert student_args.model_name_or_path == "embedded:smollm2-135m"
    assert training.teacher_model_name_or_path == "embedded:qwen2.5-coder-1.5b"
    # different tokenizers: distillation over the label words, from the teacher's cached answers
    assert training.distill_vocab == "label_words" and training.teacher_output_cache
    assert (data_args.pattern, data_args.k, len(data_args.demonstration_ids)) == ("gpt3", 4, 4)
    assert set(args.methods) >= {
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
