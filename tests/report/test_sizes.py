"""The verdict across student sizes, computed from made-up numbers: the smallest student whose HANS margin
AUC interval lies above chance, and whether CD's paired difference against PBFT is above zero there."""

from distill_trainer.report.sizes import size_entry, size_verdict, student_parameters


def figure(value: float, spread: float = 0.03) -> dict:
    return {"value": value, "low": value - spread, "high": value + spread}


def size(student: str, parameters: int, hans_auc: dict, cd_vs_pbft: float | None = None) -> dict:
    """One size's line: each method's HANS AUC (value ± 0.03), CD minus PBFT's (value ± 0.02)."""
    differences = {} if cd_vs_pbft is None else {"cd_vs_pbft": {"auc": figure(cd_vs_pbft, 0.02)}}
    return {
        "student": student,
        "parameters": parameters,
        "methods": {name: {"hans_auc": figure(value)} for name, value in hans_auc.items()},
        "differences": differences,
    }


CHANCE = {"zero_shot": 0.5, "icl_student": 0.51, "pbft_lora": 0.49, "cd_lora": 0.52}


def test_the_first_size_that_tells_hans_apart_and_cd_transferring_more_there():
    sizes = [
        # given out of order: the verdict orders by parameters, not by the list
        size("large", 500_000_000, {"cd_lora": 0.75, "pbft_lora": 0.7}, cd_vs_pbft=0.05),
        size("small", 135_000_000, CHANCE, cd_vs_pbft=0.03),
        size("middle", 270_000_000, {**CHANCE, "cd_lora": 0.6}, cd_vs_pbft=0.1),
        # the teacher's AUC is above chance at every size: it is no student's
        size("teacher-only", 100_000_000, {"icl_teacher": 0.77, **CHANCE}, cd_vs_pbft=0.0),
    ]
    first, there = size_verdict(sizes)
    assert first.startswith(
        "The smallest student that tells HANS's classes apart is middle (270M parameters)"
    )
    assert "cd_lora 0.600" in first and "pbft_lora" not in first
    assert there.startswith("There, CD transfers more of the teacher's out-of-domain ability than PBFT")


def test_pbft_better_or_no_clear_difference_at_that_size():
    pbft_better = [size("s", 1, CHANCE), size("m", 2, {"pbft_lora": 0.7, "cd_lora": 0.6}, cd_vs_pbft=-0.1)]
    assert size_verdict(pbft_better)[1].startswith("There, PBFT does better out of domain than CD")
    unclear = [size("m", 2, {"pbft_lora": 0.7, "cd_lora": 0.7}, cd_vs_pbft=0.01)]
    assert size_verdict(unclear)[1].startswith("There, the run cannot tell")
    missing = [size("m", 2, {"zero_shot": 0.7})]
    assert "no paired CD-vs-PBFT" in size_verdict(missing)[1]


def test_no_size_tells_hans_apart():
    (sentence,) = size_verdict([size("s", 1, CHANCE), size("m", 2, {**CHANCE, "cd_lora": 0.525})])
    assert sentence.startswith("No student tells HANS's classes apart") and "s, m" in sentence


def test_a_size_entry_from_rows():
    def row(method, recipe, mode="-", total=None, trainable=0, auc=0.6, records=()):
        return {
            "method": method,
            "recipe": recipe,
            "student_mode": mode,
            "total_parameters": total,
            "trainable_parameters": trainable,
            "eval": {
                "hans": {"auc": auc, "auc_stderr": 0.05},
                "mnli": {"accuracy": 0.7, "accuracy_stderr": 0.02},
            },
            "records": {"hans": list(records)},
        }

    teacher = row("icl_teacher", "icl_eval", total=1_500)
    trained = row("pbft_lora", "pattern_finetune", "lora", total=140, trainable=5)
    # the student's size: an untrained row's total, else a LoRA row's frozen base; never the teacher's
    assert student_parameters([teacher, trained]) == 135
    assert student_parameters([teacher, row("zero_shot", "icl_eval", total=135), trained]) == 135
    entry = size_entry(
        "s", "s", {"pbft_lora": 1e-3}, {"claims": ["In-domain recovery: ..."]}, [teacher, trained]
    )
    assert entry["parameters"] == 135 and entry["claims"] == ["In-domain recovery: ..."]
    hans = entry["methods"]["pbft_lora"]["hans_auc"]
    assert hans["low"] == 0.6 - 1.96 * 0.05 and hans["high"] == 0.6 + 1.96 * 0.05
    assert entry["methods"]["pbft_lora"]["mnli_accuracy"]["value"] == 0.7
    assert entry["differences"] == {}  # no cd_lora row: no paired difference
