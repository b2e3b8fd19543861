"""Choosing each student's learning rates on the dev rows (`--select_learning_rates`,
run/learning_rate_selection.py) on two tiny students: every candidate run as its method would and chosen
on its dev-row scores only, the best per student and method, entries the preset reads back, and a measured
run with the chosen rates that reads the chosen candidates back instead of training them again."""

import json
from pathlib import Path

import pytest
import yaml
from helpers import tiny_comparison

from distill_trainer import UsageError, parse_config
from distill_trainer.run.comparison import student_folders
from distill_trainer.run.learning_rate_selection import choose
from distill_trainer.testing import build_model
from recipes import compare

DATA = Path(__file__).parents[1] / "data"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))


def dev_file(tmp_path) -> str:
    """Eight training-pool rows, four entailment and four contradiction, in the source's label ids (as a
    dev file is written)."""
    rows = [json.loads(line) for line in (DATA / "mnli" / "train.jsonl").read_text().splitlines()]
    dev = [row for row in rows if row["label"] == 0][-4:] + [row for row in rows if row["label"] == 2][-4:]
    path = tmp_path / "dev.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in dev))
    return str(path)


def write_config(tmp_path, tiny_dirs, **values) -> str:
    settings = tiny_comparison(
        tmp_path,
        tiny_dirs,
        fresh_process_per_method=False,
        methods=["zero_shot", "pbft_lora", "cd_lora"],
        distill_vocab="label_words",
        teacher_output_cache=True,
        **values,
    )
    path = tmp_path / "compare.yaml"
    path.write_text(yaml.safe_dump(settings))
    return str(path)


def select(config: str) -> dict:
    """The selection run "lr": two CD rates and one PBFT rate per student."""
    argv = ["--config", config, "--run_name", "lr"]
    return compare.main([*argv, "--select_learning_rates", "cd_lora=0.01,0.05", "pbft_lora=0.02"])


@pytest.mark.integration
def test_each_students_rates_are_chosen_on_the_dev_rows(tmp_path, tokenizer, tiny_dirs):
    wider = tmp_path / "wider"
    build_model(len(tokenizer), seed=2, hidden_size=40).save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    students = [tiny_dirs["student"], str(wider)]
    config = write_config(tmp_path, tiny_dirs, students=students, holdout_rows=dev_file(tmp_path))
    report = select(config)
    run_dir = tmp_path / "results" / "lr"
    assert [(c["student"], c["method"], c["learning_rate"]) for c in report["candidates"]] == [
        (s, m, r) for s in students for m, r in (("cd_lora", 0.01), ("cd_lora", 0.05), ("pbft_lora", 0.02))
    ]
    for candidate in report["candidates"]:
        folder = run_dir / student_folders(students)[candidate["student"]]
        method_dir = folder / f"{candidate['method']}-lr{candidate['learning_rate']:g}"
        # trained with that rate, scored on the dev rows only: never on the evaluation rows
        assert (
            yaml.safe_load((method_dir / "method.yaml").read_text())["learning_rate"]
            == candidate["learning_rate"]
        )
        assert candidate["dev"]["n"] == 8 and 0 <= candidate["dev"]["accuracy"] <= 1
        assert (method_dir / "dev" / "predictions_mnli.jsonl").is_file()
        # run as the comparison would run the method (its evaluation included), so that it can be read back
        assert (method_dir / "metrics.json").is_file() and (method_dir / "fingerprint.json").is_file()
    # the best dev accuracy per student and method, and nothing of the comparison ran
    for student in students:
        mine = [c for c in report["candidates"] if c["student"] == student and c["method"] == "cd_lora"]
        best = max(mine, key=lambda c: (c["dev"]["accuracy"], c["dev"]["auc"] or 0))
        assert report["chosen"][student] == {"cd_lora": best["learning_rate"], "pbft_lora": 0.02}
    assert not (run_dir / "sizes.md").exists() and (run_dir / "learning_rates.md").is_file()
    assert json.loads((run_dir / "learning_rates.json").read_text()) == report
    # the printed entries are what the preset's student_learning_rates reads
    (_, _, args, _), _ = parse_config(
        compare.CONFIG_TYPES,
        ["--config", config, "--student_learning_rates", *report["student_learning_rates"]],
    )
    for student in students:
        assert args.for_student(student).method_learning_rates() == report["chosen"][student]

    # a selection stopped while a candidate was being evaluated (its adapter trained, no metrics yet)
    # continues: that candidate runs again, the finished ones are read back
    stopped = run_dir / student_folders(students)[students[1]] / "cd_lora-lr0.05"
    (stopped / "metrics.json").unlink()
    (stopped / "fingerprint.json").unlink()
    finished = run_dir / student_folders(students)[students[0]] / "cd_lora-lr0.05" / "metrics.json"
    finished_at = finished.stat().st_mtime_ns
    again = select(config)
    assert (stopped / "metrics.json").is_file() and (stopped / "fingerprint.json").is_file()
    assert finished.stat().st_mtime_ns == finished_at
    assert [c["learning_rate"] for c in again["candidates"]] == [
        c["learning_rate"] for c in report["candidates"]
    ]

    # the measured run with the chosen rates trains nothing: every trained method is the chosen candidate
    compare.main(
        [
            "--config",
            config,
            "--run_name",
            "measured",
            "--student_learning_rates",
            *report["student_learning_rates"],
        ]
    )
    for student in students:
        folder = student_folders(students)[student]
        rows = json.loads((tmp_path / "results" / "measured" / folder / "summary.json").read_text())[
            "methods"
        ]
        for row in rows:
            if row["method"] == "zero_shot":
                assert not row.get("reused_from")
                continue
            chosen = f"{row['method']}-lr{report['chosen'][student][row['method']]:g}"
            source = (
                tmp_path / "results" / "measured" / folder / row["method"] / "reused_from.txt"
            ).read_text()
            assert source.strip() == str((run_dir / folder / chosen).resolve())


def test_candidates_are_checked_before_anything_trains(tmp_path, tiny_dirs):
    def run(*argv, **values):
        compare.main(
            [
                "--config",
                write_config(tmp_path, tiny_dirs, model_name_or_path=tiny_dirs["student"], **values),
                *argv,
            ]
        )

    with pytest.raises(UsageError, match="holdout_rows names none"):
        run("--select_learning_rates", "cd_lora=0.01")
    with pytest.raises(UsageError, match="not method=rate,rate"):
        run("--select_learning_rates", "cd_lora=fast")
    with pytest.raises(UsageError, match="train nothing"):
        run("--select_learning_rates", "zero_shot=0.01")
    assert not list((tmp_path / "results").glob("*/*/method.yaml"))


def test_ties_in_dev_accuracy_go_to_the_better_auc():
    def candidate(rate, accuracy, auc):
        return {
            "student": "s",
            "method": "cd_lora",
            "learning_rate": rate,
            "dev": {"accuracy": accuracy, "auc": auc},
        }

    chosen = choose([candidate(1e-3, 0.7, 0.6), candidate(2e-3, 0.7, 0.8), candidate(4e-3, 0.6, 0.9)])
    assert chosen == {"s": {"cd_lora": 2e-3}}
