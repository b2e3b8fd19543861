"""A full disk in every writer: one error line naming the path, the bytes it needed and the space free there;
what was there before is intact, no partial file is left, and the same write completes once space is freed.

The disk fills by fault injection: the write helper (or torch's, datasets' and transformers' own writers)
writes part of its bytes, then fails with ENOSPC, as a real full disk does.
"""

import errno
import json
import math
import re
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from helpers import DATA, make_trainer

from distill_trainer.context import completion_cache
from distill_trainer.integrity import DiskFullError, file_records, write_text_atomically
from distill_trainer.nli.eval_cache import load_evaluation, store_evaluation
from distill_trainer.report.hub import save_student
from distill_trainer.report.model_card import StudentCard
from distill_trainer.run.runner import run_recipe
from distill_trainer.teacher.store import load_verified, save_atomically
from distill_trainer.training.checkpoints import checkpoint_dirs, is_complete_checkpoint
from recipes import compare


def check_message(error, path):
    """One line, naming the path, the bytes needed and the space free."""
    text = str(error)
    assert "\n" not in text and str(path) in text, text
    assert re.search(r"needs [\d,.]+ MB and [\d,.]+ MB is free there", text), text
    assert "what was there before is kept" in text


def contents(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def full_disk(monkeypatch):
    """`fill(part)`: from now on, a Path.write_bytes / write_text whose path contains `part` writes half its
    bytes, then fails with ENOSPC; `free()` frees the space."""
    state = {"part": None}
    real_bytes, real_text = Path.write_bytes, Path.write_text

    def failing(path, data):
        if state["part"] and state["part"] in str(path):
            real_bytes(path, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    def write_bytes(self, data):
        failing(self, data)
        return real_bytes(self, data)

    def write_text(self, text, *args, **kwargs):
        failing(self, text.encode())
        return real_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    monkeypatch.setattr(Path, "write_text", write_text)

    class Disk:
        def fill(self, part):
            state["part"] = part

        def free(self):
            state["part"] = None

    return Disk()


# ---------------------------------------------------------------- stores written through the one helper


def _evaluation_cache(tmp_path, version):
    store_evaluation("k" * 64, {"accuracy": version}, [{"prediction": version}], cache_dir=tmp_path)
    return load_evaluation("k" * 64, cache_dir=tmp_path)


def _completion_cache(tmp_path, version):
    path = tmp_path / "completions.json"
    completion_cache.write_entries(path, {"v": 1}, {"row": {"text": str(version), "ids": [version]}})
    return completion_cache.read_entries(path, {"v": 1})


def _results(tmp_path, version):
    write_text_atomically(tmp_path / "metrics.json", json.dumps({"accuracy": version}))
    return json.loads((tmp_path / "metrics.json").read_text())


def _model_card(tmp_path, version, student=None):
    card = StudentCard(model_name=f"student-{version}", base_model="tiny")
    save_student(student, tmp_path / "out", card=card, write_weights=False)
    return (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize(
    "writer", [_evaluation_cache, _completion_cache, _results, _model_card], ids=lambda f: f.__name__[1:]
)
def test_a_store_under_a_full_disk_keeps_its_last_content(writer, tmp_path, full_disk, student):
    kwargs = {"student": student} if writer is _model_card else {}
    before = writer(tmp_path, 1, **kwargs)
    files = contents(tmp_path)
    full_disk.fill(".partial")
    with pytest.raises(DiskFullError) as caught:
        writer(tmp_path, 2, **kwargs)
    check_message(caught.value, tmp_path)
    assert contents(tmp_path) == files  # intact, and no partial file beside it
    full_disk.free()
    after = writer(tmp_path, 2, **kwargs)
    assert after != before and writer(tmp_path, 2, **kwargs) == after


# ---------------------------------------------------------------- checkpoints, weights, teacher outputs


@pytest.mark.integration
def test_a_checkpoint_under_a_full_disk_keeps_the_previous_one_and_resumes(
    tmp_path, student, teacher, tokenizer, monkeypatch
):
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-2" in str(f):
            Path(f).write_bytes(b"\0" * 100)  # a part of it
            raise RuntimeError(
                "[enforce fail at inline_container.cc] . PytorchStreamWriter failed writing "
                "file data/0: file write failed: No space left on device"
            )
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    trainer = make_trainer(
        tmp_path, student, teacher, tokenizer, save_strategy="steps", save_steps=1, max_steps=2
    )
    with pytest.raises(DiskFullError) as caught:
        trainer.train()
    check_message(caught.value, tmp_path / "out" / "checkpoint-2")
    out = tmp_path / "out"
    assert [p.name for p in checkpoint_dirs(out)] == ["checkpoint-1"] and is_complete_checkpoint(
        out / "checkpoint-1"
    )
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-1"]  # nothing staged is left
    monkeypatch.setattr(torch, "save", real_save)  # space freed: the run continues from checkpoint-1
    resumed = make_trainer(
        tmp_path,
        student,
        teacher,
        tokenizer,
        save_strategy="steps",
        save_steps=1,
        max_steps=2,
        resume_from_checkpoint="true",
    )
    assert resumed.train().global_step == 2 and is_complete_checkpoint(out / "checkpoint-2")


def test_saved_weights_under_a_full_disk_leave_no_partial_file(tmp_path, student, monkeypatch):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "metrics.json").write_text("{}")
    real = type(student).save_pretrained

    def save_pretrained(self, directory, *args, **kwargs):
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(student), "save_pretrained", save_pretrained)
    with pytest.raises(DiskFullError) as caught:
        save_student(student, folder)
    check_message(caught.value, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.json"]
    monkeypatch.setattr(type(student), "save_pretrained", real)
    save_student(student, folder)
    assert (folder / "model.safetensors").stat().st_size > 100


def test_the_teacher_output_cache_under_a_full_disk_keeps_the_cache_there(tmp_path, monkeypatch):
    path = tmp_path / "teacher-outputs-abc"
    halves, quarters = [math.log(0.5)] * 2, [math.log(0.75), math.log(0.25)]
    rows = Dataset.from_dict({"teacher_label_logprobs": [halves, quarters]})
    save_atomically(rows, path, {"key": "abc"})
    before = file_records(path)
    real = Dataset.save_to_disk

    def save_to_disk(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True)
        (Path(directory) / "data-00000-of-00001.arrow").write_bytes(b"\0" * 100)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Dataset, "save_to_disk", save_to_disk)
    with pytest.raises(DiskFullError) as caught:
        save_atomically(rows, path, {"key": "abc"})
    check_message(caught.value, path)
    assert file_records(path) == before and sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert load_verified(path)[1] is None
    monkeypatch.setattr(Dataset, "save_to_disk", real)
    save_atomically(rows, path, {"key": "abc"})
    assert load_verified(path)[1] is None


def test_the_embedded_model_cache_under_a_full_disk_is_built_by_the_rerun(fake_alias, monkeypatch, tokenizer):
    from distill_trainer.models import embedded
    from distill_trainer.testing import build_model

    class Full(type(build_model(len(tokenizer)))):
        def save_pretrained(self, directory, *args, **kwargs):
            (Path(directory) / "model.safetensors").write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")

    real = embedded._dequantize
    monkeypatch.setattr(
        embedded, "_dequantize", lambda path: (Full(build_model(len(tokenizer)).config), tokenizer)
    )
    with pytest.raises(DiskFullError) as caught:
        embedded.materialize_embedded_model("embedded:fake")
    check_message(caught.value, fake_alias["cache"] / "fake")
    assert sorted(p.name for p in fake_alias["cache"].iterdir()) == ["fake.lock"]
    monkeypatch.setattr(embedded, "_dequantize", real)
    assert (embedded.materialize_embedded_model("embedded:fake") / "model.safetensors").is_file()


# ---------------------------------------------------------------- the comparison, end to end


def write_config(tmp_path, tiny_dirs, **overrides):
    values = {
        "model_name_or_path": tiny_dirs["student"],
        "teacher_model_name_or_path": tiny_dirs["teacher"],
        "eval_tasks": ["mnli", "hans"],
        "data_source": "local",
        "data_dir": DATA,
        "k": 2,
        "num_train_examples": 8,
        "hans_per_subcase": 1,
        "max_steps": 2,
        "per_device_eval_batch_size": 16,
        "report_to": "none",
        "use_cpu": True,
        "disable_tqdm": True,
        "results_dir": str(tmp_path / "results"),
        "run_name": "tiny",
        **overrides,
    }
    path = tmp_path / "compare.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return str(path)


@pytest.mark.integration
def test_a_comparison_stopped_by_a_full_disk_prints_one_line_and_its_rerun_completes(
    tmp_path, tiny_dirs, full_disk, capsys
):
    config = write_config(
        tmp_path, tiny_dirs, methods=["icl_teacher", "zero_shot"], fresh_process_per_method=False
    )
    full_disk.fill("summary.json")
    with pytest.raises(SystemExit) as stop:
        run_recipe(compare.main, ["--config", config])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    run_dir = tmp_path / "results" / "tiny"
    assert stop.value.code == 2 and len(errors) == 1
    check_message(errors[0], run_dir / "summary.json")
    assert errors[0].endswith(f"; then resume with: python {sys.argv[0]} --config {config}")
    assert not (run_dir / "summary.json").exists() and not list(run_dir.glob(".*partial"))
    finished = {
        name: (run_dir / name / "metrics.json").stat().st_mtime_ns for name in ("icl_teacher", "zero_shot")
    }
    full_disk.free()
    summary = compare.main(["--config", config])  # the same command: both methods are kept, not rerun
    assert [row["method"] for row in summary["methods"]] == ["icl_teacher", "zero_shot"]
    assert {name: (run_dir / name / "metrics.json").stat().st_mtime_ns for name in finished} == finished
    assert json.loads((run_dir / "summary.json").read_text()) == summary
