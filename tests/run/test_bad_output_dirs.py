"""Bad inputs, output folders and resuming (the catalogue's rules are in bad_inputs.py): earlier runs,
unsafe folders, damaged checkpoints."""

from __future__ import annotations

import pytest
from bad_inputs import (
    Case,
    check_bad_input,
    damaged_checkpoint,
    earlier_run,
    home_dir,
    output_dir_in_use,
    output_dir_is,
    output_under_a_file,
)
from helpers import ROOT

CASES = [
    # ---- output directory and resuming
    Case(
        "finished-run-in-output-dir",
        "pattern_finetune",
        setup=earlier_run("metrics.json", "model.safetensors"),
        problem="already holds a run's results",
        fix="set overwrite_output_dir: true",
        leaves="untouched",
    ),
    Case(
        "unfinished-run-in-output-dir",
        "pattern_finetune",
        setup=earlier_run("checkpoint-2"),
        problem="holds checkpoints of an unfinished run",
        fix="set resume_from_checkpoint: true",
        leaves="untouched",
    ),
    Case(
        "resume-without-checkpoint",
        "pattern_finetune",
        {"resume_from_checkpoint": True},
        problem="holds no complete checkpoint",
        fix="remove resume_from_checkpoint",
    ),
    Case(
        "resume-from-a-missing-path",
        "pattern_finetune",
        {"resume_from_checkpoint": "no/such/checkpoint-3"},
        problem="is not a complete checkpoint",
        fix="give one, or true",
    ),
    Case(
        "resume-and-overwrite",
        "pattern_finetune",
        {"resume_from_checkpoint": True, "overwrite_output_dir": True},
        problem="contradict|starts it over",
        fix="set only one of them",
    ),
    Case(
        "resume-with-other-settings",
        "pattern_finetune",
        {"resume_from_checkpoint": True},
        setup=earlier_run("checkpoint-2", resolved={"learning_rate": 0.5}),
        problem=r"trained with other settings \(learning_rate: 0\.5 -> 0\.001\)",
        fix="resume with its own settings",
        leaves="untouched",
    ),
    Case(
        "resume-in-icl",
        "icl_eval",
        {"resume_from_checkpoint": True},
        problem="trains nothing",
        fix="remove resume_from_checkpoint",
    ),
    Case(
        "output-dir-under-a-file",
        "icl_eval",
        setup=output_under_a_file,
        problem="is a file, not a directory",
        fix="choose another output_dir",
    ),
    # ---- unsafe output folders (class 4)
    Case(
        "output-dir-empty",
        "icl_eval",
        setup=output_dir_is(lambda ctx: ""),
        problem="output_dir is empty, which means the current directory",
        fix="a folder of its own",
    ),
    Case(
        "output-dir-root",
        "pattern_finetune",
        setup=output_dir_is(lambda ctx: "/"),
        problem="output_dir / is the file system root",
        fix="such as results/my-run",
    ),
    Case(
        "output-dir-home",
        "icl_eval",
        setup=home_dir,
        problem="is your home directory, which holds other files",
        fix="set output_dir to a folder",
        leaves="untouched",
    ),
    Case(
        "output-dir-in-the-project",
        "pattern_finetune",
        setup=output_dir_is(lambda ctx: ROOT / "recipes"),
        problem="is inside the project's own folders",
        fix="set output_dir to a folder of its own",
    ),
    Case(
        "output-dir-in-use",
        "pattern_finetune",
        setup=output_dir_in_use,
        problem=r"is in use by another run \(pid \d+ on .*started",
        fix="wait for it to finish",
        leaves="untouched",
    ),
    # ---- damaged checkpoints (class 5)
    Case(
        "resume-from-a-checkpoint-without-weights",
        "pattern_finetune",
        {"resume_from_checkpoint": "{out}/checkpoint-2"},
        setup=damaged_checkpoint("weights deleted"),
        problem="checkpoint-2 is not a complete checkpoint: model.safetensors is missing",
        fix="give an earlier checkpoint",
        leaves="untouched",
    ),
    Case(
        "resume-with-only-a-truncated-checkpoint",
        "pattern_finetune",
        {"resume_from_checkpoint": True},
        setup=damaged_checkpoint("optimizer truncated"),
        problem=r"no complete checkpoint-N \(checkpoint-2: optimizer\.pt is 10 bytes, 64 when saved",
        fix="remove resume_from_checkpoint to start afresh",
        leaves="untouched",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch):
    check_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch)
