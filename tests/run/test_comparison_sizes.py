"""The comparison over student sizes (`students:`, run/student_sizes.py) end to end on two tiny students of
different sizes: each student's methods in its own folder, the teacher's row and its pass over the
training queries computed once, the per-size report, and reruns that read every row back; and the
preset, whose 135M student resolves to the main job's very method configs."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_comparison

from distill_trainer import UsageError, parse_config
from distill_trainer.code_stamp import read_stamp
from distill_trainer.run.comparison import student_folders
from distill_trainer.run.comparison_methods import method_config
from distill_trainer.testing import build_model
from recipes import compare

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED = ROOT / "recipes" / "configs" / "embedded"
METHODS = ["icl_teacher", "zero_shot", "icl_student", "pbft_lora", "cd_lora"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own caches: a teacher pass or scores from another test would prove nothing here."""
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def students(tmp_path_factory, tokenizer, tiny_dirs):
    """Two tiny students of different sizes (widths 32 and 40), the smaller one first."""
    wider = tmp_path_factory.mktemp("students") / "wider"
    build_model(len(tokenizer), seed=2, hidden_size=40).save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    return [tiny_dirs["student"], str(wider)]


def write_config(tmp_path, tiny_dirs, **values):
    settings = tiny_comparison(
        tmp_path,
        tiny_dirs,
        num_eval_examples=16,
        per_device_eval_batch_size=16,
        fresh_process_per_method=False,
        methods=METHODS,
        lora_learning_rate=1e-2,
        distill_vocab="label_words",
        teacher_output_cache=True,
        **values,
    )
    path = tmp_path / f"compare-{len(list(tmp_path.glob('compare-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def teacher_caches(tmp_path) -> list[Path]:
    return sorted((tmp_path / "cache" / "teacher_outputs").glob("teacher-outputs-*"))


def cache_use(run_dir: Path, method: str = "cd_lora") -> dict:
    return json.loads((run_dir / method / "metrics.json").read_text())["teacher_output_cache"]["train"]


@pytest.mark.integration
def test_student_sizes_end_to_end_share_the_teacher_and_read_back_what_is_unchanged(
    tmp_path, tiny_dirs, students
):
    small, wide = students
    folders = student_folders(students)
    # ---- the default run of the smaller student alone: its rows are read back by the sizes run
    alone = write_config(tmp_path, tiny_dirs, model_name_or_path=small, learning_rates=["cd_lora=0.02"])
    compare.main(["--config", alone, "--run_name", "default"])
    assert len(teacher_caches(tmp_path)) == 1 and not cache_use(tmp_path / "results" / "default")["reused"]

    sizes_config = write_config(
        tmp_path,
        tiny_dirs,
        students=students,
        learning_rates=["cd_lora=0.02"],
        student_learning_rates=[f"{wide} cd_lora=0.05 pbft_lora=0.03"],
    )
    report = compare.main(["--config", sizes_config, "--run_name", "sizes"])
    run_dir = tmp_path / "results" / "sizes"
    small_dir, wide_dir = run_dir / folders[small], run_dir / folders[wide]

    # every method of each student in its folder, with that student's own summary
    for folder in (small_dir, wide_dir):
        summary = json.loads((folder / "summary.json").read_text())
        assert [row["method"] for row in summary["methods"]] == METHODS
    # the smaller student's rows are the default run's, read back, not rerun
    small_rows = json.loads((small_dir / "summary.json").read_text())["methods"]
    assert {row["method"]: row.get("reused_from") for row in small_rows} == dict.fromkeys(METHODS, "default")
    wide_rows = {row["method"]: row for row in json.loads((wide_dir / "summary.json").read_text())["methods"]}
    # the teacher's row once: the wider student reads it back from this run (from the default run's copy)
    assert wide_rows["icl_teacher"]["reused_from"] == folders[small]
    assert all(not wide_rows[m].get("reused_from") for m in METHODS if m != "icl_teacher")
    assert wide_rows["zero_shot"]["student"] == wide
    # the teacher's outputs on the training queries: computed once (by the default run), read by the other
    assert len(teacher_caches(tmp_path)) == 1
    assert cache_use(wide_dir)["reused"] and cache_use(wide_dir)["path"] == str(teacher_caches(tmp_path)[0])

    # per-student learning rates, recorded in the resolved configs and the report
    wide_yaml = yaml.safe_load((wide_dir / "cd_lora" / "method.yaml").read_text().split("\n", 1)[1])
    assert wide_yaml["learning_rate"] == 0.05
    entries = {entry["student"]: entry for entry in report["sizes"]}
    assert entries[wide]["learning_rates"] == {"pbft_lora": 0.03, "cd_lora": 0.05}
    assert entries[small]["learning_rates"] == {"pbft_lora": 1e-2, "cd_lora": 0.02}

    # the report per size: parameters, HANS AUC with intervals, the paired differences, the verdict
    assert 0 < entries[small]["parameters"] < entries[wide]["parameters"]
    for entry in entries.values():
        auc = entry["methods"]["cd_lora"]["hans_auc"]
        assert auc["low"] <= auc["value"] <= auc["high"]
        for pair in ("cd_vs_pbft", "cd_vs_icl"):
            difference = entry["differences"][pair]["auc"]
            assert difference["low"] <= difference["value"] <= difference["high"]
        assert entry["claims"] and entry["claims"][0].startswith("In-domain recovery")
    assert report["verdict"] and "HANS" in report["verdict"][0]
    assert json.loads((run_dir / "sizes.json").read_text()) == report
    # both tables name the code that made them, as the per-student summaries do
    assert read_stamp(run_dir / "sizes.md") == report["code"] == read_stamp(small_dir / "summary.md")
    markdown = (run_dir / "sizes.md").read_text()
    for student in students:
        assert sum(line.startswith(f"| {student} |") for line in markdown.splitlines()) == 2  # AUC, MNLI
    assert all(sentence in markdown for sentence in report["verdict"])
    assert (run_dir / "sizes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # ---- an unchanged rerun reads every row of every student back, and reports the same numbers
    again = compare.main(["--config", sizes_config, "--run_name", "sizes-again"])
    for folder in folders.values():
        rows = json.loads((tmp_path / "results" / "sizes-again" / folder / "summary.json").read_text())
        assert all(row.get("reused_from") for row in rows["methods"])
    assert [e["methods"] for e in again["sizes"]] == [e["methods"] for e in report["sizes"]]
    assert again["verdict"] == report["verdict"]
    assert len(teacher_caches(tmp_path)) == 1


def test_the_sizes_preset_resolves_the_135m_student_to_the_main_jobs_configs():
    """Every setting of the sizes preset but the students, their rates and the methods is the main job's:
    its 135M student's methods and the teacher's row have the default run's configs (so their rows are
    read back from it), and each student gets its own learning rates."""

    def configs(path, student, names):
        (student_args, data_args, args, training), given = parse_config(
            compare.CONFIG_TYPES, ["--config", path]
        )
        if args.students:
            student_args.model_name_or_path, args = student, args.for_student(student)
        out = Path("out")
        return {n: method_config(n, student_args, data_args, args, training, out / n, given) for n in names}

    sizes = str(EMBEDDED / "compare-student-sizes.yaml")
    preset = yaml.safe_load(Path(sizes).read_text())
    assert preset["methods"] == METHODS and "model_name_or_path" not in preset
    smallest = preset["students"][0]
    assert smallest == yaml.safe_load((EMBEDDED / "compare.yaml").read_text())["model_name_or_path"]
    assert configs(sizes, smallest, METHODS) == configs(str(EMBEDDED / "compare.yaml"), smallest, METHODS)
    for student in preset["students"][1:]:
        resolved = configs(sizes, student, ["cd_lora", "zero_shot", "icl_teacher"])
        assert resolved["cd_lora"][1]["model_name_or_path"] == student
        assert "learning_rate" in resolved["cd_lora"][1]
        assert resolved["icl_teacher"] == configs(sizes, smallest, ["icl_teacher"])["icl_teacher"]


def test_a_students_list_is_checked_before_anything_runs(tmp_path, tiny_dirs, students):
    small, wide = students
    with pytest.raises(UsageError, match="drop model_name_or_path"):
        compare.main(
            ["--config", write_config(tmp_path, tiny_dirs, model_name_or_path=small, students=students)]
        )
    with pytest.raises(UsageError, match="not in students"):
        compare.main(
            [
                "--config",
                write_config(
                    tmp_path, tiny_dirs, students=[small], student_learning_rates=[f"{wide} cd_lora=1"]
                ),
            ]
        )
    with pytest.raises(UsageError, match="names no method=value"):
        compare.main(
            ["--config", write_config(tmp_path, tiny_dirs, students=students, student_learning_rates=[wide])]
        )
    with pytest.raises(UsageError, match="not method=value"):
        compare.main(
            [
                "--config",
                write_config(
                    tmp_path, tiny_dirs, students=students, student_learning_rates=[f"{wide} cd_lora:1"]
                ),
            ]
        )
    with pytest.raises(UsageError, match="each once"):
        compare.main(["--config", write_config(tmp_path, tiny_dirs, students=[small, small])])
    with pytest.raises(UsageError, match="share a folder name"):
        student_folders(["a/student", "b/student"])
    assert student_folders(["embedded:smollm2-135m", "Qwen/Qwen2.5-Coder-0.5B-Instruct"]) == {
        "embedded:smollm2-135m": "smollm2-135m",
        "Qwen/Qwen2.5-Coder-0.5B-Instruct": "Qwen2.5-Coder-0.5B-Instruct",
    }
    assert not (tmp_path / "results").exists()  # nothing ran
