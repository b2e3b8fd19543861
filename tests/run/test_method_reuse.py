"""A comparison's method reuse keyed on code: an edit of the library or a package's version reruns the
methods and says why, an unchanged rerun reads every method back, `--reuse never` runs everything."""

import shutil

import pytest
from test_comparison import DATA, write_config

from distill_trainer import code_digest
from distill_trainer.code_stamp import read_stamp
from distill_trainer.run import comparison
from recipes import compare

LOSSES = "distill_trainer/training/losses.py"


def edited(path: str):
    """`library_files` as after an edit of `path` (a semantic change: its content, so its hash, differs)."""
    files = dict(code_digest.library_files())
    files[path] = "0" * 64
    return lambda: files


@pytest.mark.integration
def test_a_code_or_package_change_reruns_and_says_why_an_unchanged_rerun_reads_back(
    tmp_path, tiny_dirs, monkeypatch, capsys
):
    data = tmp_path / "data"
    shutil.copytree(DATA, data)
    config = write_config(
        tmp_path,
        tiny_dirs,
        methods=["zero_shot", "cd_lora"],
        fresh_process_per_method=False,
        data_dir=str(data),
        teacher_output_cache=True,
    )
    ran, real_run = [], comparison.run_in_this_process

    def counting_run(scripts, recipe, config_path, tracker, name, extra=()):
        ran.append(name)
        return real_run(scripts, recipe, config_path, tracker, name, extra)

    monkeypatch.setattr(comparison, "run_in_this_process", counting_run)
    compare.main(["--config", config, "--run_name", "first"])
    assert ran == ["zero_shot", "cd_lora"]

    # one edit of the loss: every method reruns (reuse keys on the whole library), and says why
    monkeypatch.setattr(code_digest, "library_files", edited(LOSSES))
    capsys.readouterr()
    second = compare.main(["--config", config, "--run_name", "second"])
    assert ran[2:] == ["zero_shot", "cd_lora"]
    why = f"code ({LOSSES} changed)"
    assert second["settings"]["run_again"] == {"zero_shot": [why], "cd_lora": [why]}
    out = capsys.readouterr().out
    assert f"cd_lora runs again: {why}" in out
    assert "mnli: evaluation of these model files on these rows and prompt read back from the cache" in out
    summary = (tmp_path / "results" / "second" / "summary.md").read_text()
    assert f"- cd_lora: {why}" in summary and read_stamp(tmp_path / "results" / "second" / "summary.md")

    # the same code again: everything is read back
    third = compare.main(["--config", config, "--run_name", "third"])
    assert ran[4:] == [] and third["settings"]["reused"] == ["cd_lora", "zero_shot"]
    assert third["settings"]["run_again"] == {}

    # a package's version: reruns, naming it
    versions = code_digest.package_versions()
    monkeypatch.setattr(code_digest, "package_versions", lambda: {**versions, "transformers": "99.0"})
    fourth = compare.main(["--config", config, "--run_name", "fourth", "--methods", "zero_shot"])
    assert ran[4:] == ["zero_shot"]
    moved = f"transformers {versions['transformers']} -> 99.0"
    assert fourth["settings"]["run_again"]["zero_shot"] == [f"package versions ({moved})"]

    # --reuse never runs everything, even what this very run folder finished
    compare.main(["--config", config, "--run_name", "fourth", "--methods", "zero_shot", "--reuse", "never"])
    assert ran[5:] == ["zero_shot"]
