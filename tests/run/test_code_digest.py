"""Results read back only while the code that computed them is unchanged: the code digest, and the published
tables' stamps with the listing of stale ones (a comparison's reuse: tests/run/test_method_reuse.py)."""

import json
import shutil
from pathlib import Path

import pytest

from distill_trainer import code_digest
from distill_trainer.code_stamp import read_stamp, stale_tables, staleness, stamp_json, stamp_markdown
from distill_trainer.run import cli

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
LOSSES = "distill_trainer/training/losses.py"


def edited(path: str):
    """`library_files` as after an edit of `path` (a semantic change: its content, so its hash, differs)."""
    files = dict(code_digest.library_files())
    files[path] = "0" * 64
    return lambda: files


def test_the_digest_covers_the_library_and_scripts_not_docs_or_tests():
    files = code_digest.library_files()
    assert LOSSES in files and "distill_trainer/nli/metrics/nli.py" in files
    assert not any(name.startswith(("tests/", "docs/")) or name.endswith(".md") for name in files)
    record = code_digest.code_record(["recipes/compare.py"])
    assert list(record["scripts"]) == ["recipes/compare.py"] and record["packages"]["torch"]
    assert code_digest.code_digest(["recipes/compare.py"]) == record["digest"]
    assert code_digest.code_changes(record, record) == []


def test_code_changes_name_the_files_and_package_versions(monkeypatch):
    before = code_digest.code_record(["recipes/icl_eval.py"])
    monkeypatch.setattr(code_digest, "library_files", edited(LOSSES))
    monkeypatch.setattr(code_digest, "package_versions", lambda: {**before["packages"], "torch": "9.9"})
    now = code_digest.code_record(["recipes/icl_eval.py"])
    assert now["digest"] != before["digest"]
    assert code_digest.code_changes(before, now) == [
        f"{LOSSES} changed",
        f"torch {before['packages']['torch']} -> 9.9",
    ]


def test_a_cache_digest_follows_the_imports_of_the_code_that_fills_it(monkeypatch):
    files = code_digest.module_files("distill_trainer.nli.task_evaluation")
    assert "distill_trainer/nli/evaluation.py" in files and "distill_trainer/nli/patterns.py" in files
    assert LOSSES not in files  # scoring does not run the loss
    digest = code_digest.modules_digest("distill_trainer.nli.task_evaluation")
    monkeypatch.setattr(code_digest, "library_files", edited(LOSSES))
    assert code_digest.modules_digest("distill_trainer.nli.task_evaluation") == digest
    monkeypatch.setattr(code_digest, "library_files", edited("distill_trainer/nli/patterns.py"))
    assert code_digest.modules_digest("distill_trainer.nli.task_evaluation") != digest


# ---------------------------------------------------------------- published tables


@pytest.mark.integration
def test_a_published_table_names_its_code_and_the_listing_says_what_changed(tmp_path, monkeypatch, capsys):
    record = code_digest.code_record(["recipes/compare.py"])
    results = tmp_path / "results"
    (results / "run").mkdir(parents=True)
    table = results / "run" / "summary.md"
    table.write_text(stamp_markdown("# a table\n\n| a |\n|---|\n| 1 |\n", record))
    (results / "run" / "summary.json").write_text(json.dumps({"rows": [], "code": stamp_json(record)}))
    assert f"Made by code `{record['digest'][:12]}`" in table.read_text()
    assert stamp_markdown(table.read_text(), record) == table.read_text()  # restamping replaces
    assert read_stamp(table)["digest"] == record["digest"] and staleness(read_stamp(table)) == []
    assert stale_tables(results) == []
    assert cli.main(["stale-results", str(results)]) == 0

    (results / "old.md").write_text("# made before stamps\n")
    monkeypatch.setattr(code_digest, "library_files", edited(LOSSES))
    stale = {path.name: why for path, why in stale_tables(results)}
    assert stale == {
        "summary.md": [f"{LOSSES} changed"],
        "summary.json": [f"{LOSSES} changed"],
        "old.md": ["no code digest recorded"],
    }
    capsys.readouterr()
    assert cli.main(["stale-results", str(results)]) == 1
    out = capsys.readouterr().out
    assert f"{table}: {LOSSES} changed" in out and "3 table(s)" in out


def test_the_listing_of_a_missing_folder_is_one_line(tmp_path, capsys):
    assert cli.main(["stale-results", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


@pytest.mark.parametrize("name", ["summary.md", "report.md"])
def test_a_copied_table_keeps_its_stamp(tmp_path, name):
    record = code_digest.code_record(["recipes/distill_context.py"])
    source = tmp_path / name
    source.write_text(stamp_markdown("# t\n", record))
    copy = tmp_path / "published" / name
    copy.parent.mkdir()
    shutil.copyfile(source, copy)
    assert read_stamp(copy)["scripts"] == {
        "recipes/distill_context.py": record["scripts"]["recipes/distill_context.py"][:16]
    }


def test_a_public_name_of_the_package_counts_as_the_module_that_defines_it(tmp_path):
    # `from distill_trainer import DataArguments` loads on use, from the module that defines it
    imports = code_digest._imports((ROOT / "recipes" / "icl_eval.py").resolve())
    assert "distill_trainer.nli.arguments" in imports and code_digest.ALL not in imports
    script = tmp_path / "script.py"
    script.write_text("from distill_trainer import UsageError\nfrom distill_trainer import not_a_name\n")
    assert code_digest._imports(script) == {code_digest.ALL}  # unknown: it may load anything


def test_a_record_covers_what_its_scripts_import_and_nothing_else(monkeypatch):
    comparison = ["recipes/compare.py", "recipes/icl_eval.py", "recipes/pattern_finetune.py"]
    record = code_digest.code_record(comparison)
    assert LOSSES in record["library"] and "distill_trainer/training/trainer.py" in record["library"]
    assert "distill_trainer/memory/architectures/opt-125m.json" in record["library"]  # data files: always
    reply_code = "distill_trainer/context/steps.py"
    assert reply_code not in record["library"] and reply_code in code_digest.library_files()
    assert record["entry"] == sorted(comparison)
    monkeypatch.setattr(code_digest, "library_files", edited(reply_code))
    assert code_digest.code_record(comparison)["digest"] == record["digest"]  # the reply recipes' code
    assert code_digest.code_record(["recipes/distill_context.py"])["library"][reply_code] == "0" * 64
    monkeypatch.setattr(code_digest, "library_files", edited(LOSSES))
    assert code_digest.code_record(comparison)["digest"] != record["digest"]


def test_the_document_recipes_code_is_not_in_the_system_prompt_recipes_record(monkeypatch):
    # each reply recipe imports only its own validate steps: writing questions from a document is no part
    # of what computes a system-prompt table, and an edit to it leaves those tables current
    context = code_digest.code_record(["recipes/distill_context.py"])
    document = code_digest.code_record(["recipes/distill_document.py"])
    writing = "distill_trainer/context/question_writing.py"
    assert writing in document["library"] and writing not in context["library"]
    assert "distill_trainer/run/validate_replies.py" in context["library"]
    monkeypatch.setattr(code_digest, "library_files", edited(writing))
    assert code_digest.code_record(["recipes/distill_context.py"])["digest"] == context["digest"]
    assert code_digest.code_record(["recipes/distill_document.py"])["digest"] != document["digest"]


def test_helper_modules_beside_a_script_are_covered(tmp_path, monkeypatch):
    record = code_digest.code_record(["benchmarks/speed.py"])
    assert {"benchmarks/speed.py", "benchmarks/flops.py", "benchmarks/pairs.py"} <= set(record["scripts"])
    helper = tmp_path / "benchmarks" / "helper.py"
    helper.parent.mkdir()
    (tmp_path / "benchmarks" / "__init__.py").write_text("")
    helper.write_text("X = 1\n")
    (tmp_path / "bench.py").write_text("from benchmarks.helper import X\n")
    monkeypatch.setattr(code_digest, "ROOT", tmp_path)
    code_digest._imports.cache_clear(), code_digest.module_files.cache_clear()
    before = code_digest.code_record(["bench.py"])
    assert "benchmarks/helper.py" in before["scripts"]
    helper.write_text("X = 2\n")
    code_digest.module_files.cache_clear()
    assert code_digest.code_record(["bench.py"])["digest"] != before["digest"]
    code_digest._imports.cache_clear(), code_digest.module_files.cache_clear()
