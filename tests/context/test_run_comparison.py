"""`distill-trainer compare-replies`: runs side by side, the paired difference on hand-made cases, and
runs of other prompts refused."""

import json

import pytest

from distill_trainer.context.run_comparison import compare_runs, paired_difference
from distill_trainer.errors import UsageError
from distill_trainer.run.cli import main


def _run(folder, passed, prompts=None, replies="off-policy (the teacher's replies)"):
    folder.mkdir(parents=True)
    prompts = prompts or [f"prompt {i}" for i in range(len(passed))]
    n, k = len(passed), sum(passed)
    rule = {"n": n, "passed": k, "rate": k / n, "stderr": 0.1, "cut_off": n - k}
    kl = {"kl_per_token": 0.05}
    metrics = {
        "recipe": "distill_context",
        "replies": replies,
        "seconds": 100.0,
        "train": {"train_runtime": 60.0},
        "eval": {
            "teacher": {"rule": rule},
            "before": {"rule": rule, "kl": kl},
            "after": {"rule": rule, "kl": kl},
        },
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    records = [{"prompt": p, "after_check": {"passed": ok, "reason": ""}} for p, ok in zip(prompts, passed)]
    (folder / "predictions_replies.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def test_paired_difference_on_hand_made_cases():
    same = paired_difference([True, False, True, False], [True, False, True, False])
    assert same["difference"] == 0 and same["stderr"] == 0
    better = paired_difference([False, False, True, True], [True, False, True, True])
    assert better["difference"] == pytest.approx(0.25)
    # differences 1, 0, 0, 0: sample sd 0.5, standard error 0.25
    assert better["stderr"] == pytest.approx(0.25) and better["low"] == pytest.approx(0.25 - 1.96 * 0.25)


def test_compare_replies_writes_the_table_and_the_interval(tmp_path):
    a = _run(tmp_path / "off", [False, False, True, True])
    b = _run(tmp_path / "on", [True, False, True, True], replies="on-policy")
    out = tmp_path / "modes.md"
    assert main(["compare-replies", str(a), str(b), "--output", str(out)]) == 0
    text = out.read_text()
    assert "| on | on-policy | 0.750" in text and "- on: +0.250 ± 0.250" in text
    assert "teacher of off, with the context" in text


def test_runs_of_other_prompts_or_unfinished_runs_are_refused(tmp_path):
    a = _run(tmp_path / "a", [True, False])
    b = _run(tmp_path / "b", [True, False], prompts=["other", "prompts"])
    with pytest.raises(UsageError, match="other held-out prompts"):
        compare_runs([a, b])
    with pytest.raises(UsageError, match="does not exist"):
        compare_runs([a, tmp_path / "missing"])
    with pytest.raises(UsageError, match="at least two"):
        compare_runs([a])
