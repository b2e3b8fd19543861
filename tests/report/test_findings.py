"""The paper's claims as verdicts, the AUC standard error and the progress estimate, on made-up rows."""

import random
import re

import pytest

from distill_trainer.report.findings import CANNOT_TELL, CONTRADICTS, SUPPORTS, paper_claims
from distill_trainer.report.tables import auc_stderr
from distill_trainer.run.progress import RunProgress, format_duration


def scored(name: str, accuracy: dict, separation: dict, n: int = 400, seed: int = 0) -> dict:
    """A row whose predictions on each task are right with probability `accuracy[task]`, with margins
    that tell the classes apart by `separation[task]` (0: not at all)."""
    rng = random.Random(seed)
    records = {}
    for task in accuracy:
        rows = []
        for i in range(n):
            label = i % 2
            right = rng.random() < accuracy[task]
            margin = rng.gauss(separation[task] * (1 if label == 0 else -1), 1.0)
            rows.append({"label": label, "prediction": label if right else 1 - label, "margin": margin})
        records[task] = rows
    return {"method": name, "records": records, "eval": {}}


def verdict(sentences, start):
    (sentence,) = [s for s in sentences if s.startswith(start)]
    return re.search(r": (supports|contradicts|cannot tell);", sentence).group(1)


def test_claims_supported_when_cd_is_clearly_better():
    rows = [
        scored("icl_teacher", {"mnli": 0.9, "hans": 0.6}, {"mnli": 2, "hans": 1}, seed=1),
        scored("zero_shot", {"mnli": 0.5, "hans": 0.5}, {"mnli": 0, "hans": 0}, seed=2),
        scored("icl_student", {"mnli": 0.5, "hans": 0.3}, {"mnli": 0, "hans": 0}, seed=3),
        scored("pbft_lora", {"mnli": 0.7, "hans": 0.5}, {"mnli": 1, "hans": 0}, seed=4),
        scored("cd_lora", {"mnli": 0.8, "hans": 0.9}, {"mnli": 1.5, "hans": 2}, seed=5),
    ]
    rows[-1]["peak_memory_mib"] = 1000.0
    reference = {"peak_mib": 4000.0, "name": "full fine-tuning of the teacher", "source": "analytic estimate"}
    claims = paper_claims(rows, reference)
    assert verdict(claims, "In-domain recovery") == SUPPORTS
    assert verdict(claims, "Out of domain, CD over PBFT") == SUPPORTS
    assert verdict(claims, "Out of domain, CD over the student's own ICL") == SUPPORTS
    assert verdict(claims, "Memory") == SUPPORTS and "75% below" in claims[-1]


def test_claims_contradicted_or_undecided_when_the_data_say_so():
    rows = [
        scored("icl_teacher", {"mnli": 0.9, "hans": 0.6}, {"mnli": 2, "hans": 1}, seed=1),
        scored("zero_shot", {"mnli": 0.5, "hans": 0.5}, {"mnli": 0, "hans": 0}, seed=2),
        scored("pbft_lora", {"mnli": 0.8, "hans": 0.5}, {"mnli": 1, "hans": 1.5}, seed=4),
        scored("cd_lora", {"mnli": 0.45, "hans": 0.5}, {"mnli": 0, "hans": 0}, seed=5),
    ]
    rows[-1]["peak_memory_mib"] = 3000.0
    reference = {"peak_mib": 4000.0, "name": "full fine-tuning of the teacher", "source": "analytic estimate"}
    claims = paper_claims(rows, reference)
    # CD below the zero-shot student in domain, PBFT clearly better out of domain, only 25% less memory
    assert verdict(claims, "In-domain recovery") in (CONTRADICTS, CANNOT_TELL)
    assert verdict(claims, "Out of domain, CD over PBFT") == CONTRADICTS
    assert verdict(claims, "Memory") == CONTRADICTS
    # a handful of rows cannot decide anything
    few = [
        scored(r["method"], {"mnli": 0.7, "hans": 0.5}, {"mnli": 0.5, "hans": 0.2}, n=12, seed=i)
        for i, r in enumerate(rows)
    ]
    few[1] = scored("zero_shot", {"mnli": 0.5, "hans": 0.5}, {"mnli": 0, "hans": 0}, n=12, seed=9)
    assert CANNOT_TELL in {verdict(paper_claims(few), "Out of domain, CD over PBFT")}


def test_auc_stderr_matches_a_bootstrap_and_shrinks_with_rows():
    from distill_trainer.nli.metrics.nli import roc_auc

    rng = random.Random(0)
    labels = [i % 2 for i in range(400)]
    margins = [rng.gauss(0.8 if y == 0 else -0.8, 1) for y in labels]
    auc = roc_auc(margins, [y == 0 for y in labels])
    boot = []
    for _ in range(300):
        rows = [rng.randrange(400) for _ in range(400)]
        boot.append(roc_auc([margins[i] for i in rows], [labels[i] == 0 for i in rows]))
    mean = sum(boot) / len(boot)
    spread = (sum((b - mean) ** 2 for b in boot) / len(boot)) ** 0.5
    assert auc_stderr(auc, 200, 200) == pytest.approx(spread, rel=0.25)
    assert auc_stderr(auc, 800, 800) < auc_stderr(auc, 200, 200)
    assert auc_stderr(None, 1, 1) is None and auc_stderr(0.7, 0, 5) is None


def test_progress_estimates_from_history_then_from_what_it_measured(capsys):
    progress = RunProgress(["a", "b", "c"], history={"a": 60.0, "b": 120.0}, reused={"c"})
    assert progress.remaining("a") == pytest.approx(60 + 120 + 2)
    line = progress.start("a")
    assert line.startswith("[1/3] a") and "about 3 min left" in line
    assert "read back" in progress.start("c")
    fresh = RunProgress(["a", "b"], history={})
    assert "no estimate yet" in fresh.start("a")
    fresh.measured["a"] = 90.0
    assert fresh.remaining("b") == pytest.approx(90.0)
    assert format_duration(3725) == "1:02:05" and format_duration(65) == "1:05"
