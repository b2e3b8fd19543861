"""The comparison's findings, as sentences computed from one run's per-row predictions, each with its
interval.

    sentences = findings(rows, memory_reference)   # rows as report.load_method_result gives them

Every comparison is paired (the methods scored the same evaluation rows), so intervals come from a
bootstrap over rows: resample the rows, recompute both methods' figures on the same resample. The gain
recovered by a context-distilled student is (CD - zero-shot) / (teacher - zero-shot) on MNLI accuracy.
"""

from __future__ import annotations

import random

from .errors import UsageError
from .finite import nonfinite_records
from .metrics.nli import roc_auc

TEACHER, ZERO_SHOT = "icl_teacher", "zero_shot"
BOOTSTRAP_SAMPLES = 1000
# paired comparisons, when both methods ran: (method, against, what each is called in the verdict)
PAIRS = (
    ("cd_full", "pbft_full", "CD", "PBFT"),
    ("cd_lora", "pbft_lora", "CD", "PBFT"),
    ("icl_teacher_cf_calibrated", "icl_teacher", "calibrated", "uncalibrated"),
    ("cd_lora_cf_calibrated", "cd_lora", "calibrated", "uncalibrated"),
    ("icl_teacher_batch_calibrated", "icl_teacher", "calibrated", "uncalibrated"),
    ("cd_lora_batch_calibrated", "cd_lora", "calibrated", "uncalibrated"),
    ("icl_teacher_ensemble", "icl_teacher", "ensemble", "one set"),
    ("cd_lora_ensemble", "cd_lora", "ensemble", "one set"),
)


def _accuracy(correct: list[bool], rows: list[int]) -> float:
    return sum(correct[i] for i in rows) / len(rows)


def _auc(margins: list[float], labels: list[int], rows: list[int]) -> float | None:
    return roc_auc([margins[i] for i in rows], [labels[i] == 0 for i in rows])


def _interval(values: list[float]) -> tuple[float, float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return float("nan"), float("nan")
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]


def _bootstrap(statistic, n: int, seed: int = 0) -> tuple[float, float]:
    rng = random.Random(seed)
    return _interval([statistic([rng.randrange(n) for _ in range(n)]) for _ in range(BOOTSTRAP_SAMPLES)])


def _task(row: dict, task: str) -> dict | None:
    records = (row.get("records") or {}).get(task)
    if not records:
        return None
    labels = [r["label"] for r in records]
    return {
        "correct": [r["prediction"] == r["label"] for r in records],
        "labels": labels,
        "margins": [r.get("margin", 0.0) for r in records],
    }


def recovered_gain(cd: dict, teacher: dict, zero_shot: dict) -> tuple[float, tuple[float, float]] | None:
    """(CD - zero-shot) / (teacher - zero-shot) on MNLI accuracy, with a 95% bootstrap interval."""
    c, t, z = _task(cd, "mnli"), _task(teacher, "mnli"), _task(zero_shot, "mnli")
    if not (c and t and z) or not len(c["correct"]) == len(t["correct"]) == len(z["correct"]):
        return None

    def ratio(rows):
        gap = _accuracy(t["correct"], rows) - _accuracy(z["correct"], rows)
        return None if gap <= 0 else (_accuracy(c["correct"], rows) - _accuracy(z["correct"], rows)) / gap

    every = list(range(len(c["correct"])))
    point = ratio(every)
    return None if point is None else (point, _bootstrap(ratio, len(every)))


def paired_difference(a: dict, b: dict, task: str, figure: str) -> tuple[float, tuple[float, float]] | None:
    """a - b in accuracy or margin AUC on the same rows, with a 95% bootstrap interval."""
    x, y = _task(a, task), _task(b, task)
    if not (x and y) or len(x["correct"]) != len(y["correct"]):
        return None

    def difference(rows):
        if figure == "accuracy":
            return _accuracy(x["correct"], rows) - _accuracy(y["correct"], rows)
        first, second = _auc(x["margins"], x["labels"], rows), _auc(y["margins"], y["labels"], rows)
        return None if first is None or second is None else first - second

    every = list(range(len(x["correct"])))
    point = difference(every)
    return None if point is None else (point, _bootstrap(difference, len(every)))


def check_finite_predictions(rows: list[dict]) -> None:
    """A method whose predictions hold NaN or infinite scores has no accuracy or AUC to compare: its
    argmax reads as label 0 and its margins sort anywhere, so every finding built on it would be noise."""
    for row in rows:
        for task, records in (row.get("records") or {}).items():
            bad = nonfinite_records(records or [])
            if bad:
                raise UsageError(
                    f"method {row['method']}: predictions_{task}.jsonl holds NaN or infinite scores in "
                    f"{len(bad)} of its {len(records)} rows (first: row {bad[0]}), so no findings were "
                    f"computed; evaluate that method again (its model gives NaN/inf logits: see its log), "
                    "or leave it out of the comparison"
                )


def findings(rows: list[dict], memory_reference: dict | None = None) -> list[str]:
    """One sentence per claim: gain recovered per CD method, each of `PAIRS` (CD against PBFT, a calibrated
    or ensembled teacher against the plain one: MNLI and HANS, accuracy and AUC), and the memory ratio
    against fine-tuning the teacher."""
    check_finite_predictions(rows)
    by_name = {row["method"]: row for row in rows}
    teacher, zero_shot = by_name.get(TEACHER), by_name.get(ZERO_SHOT)
    sentences = []
    cd_rows = [row for row in rows if row["method"].startswith("cd_") and row.get("records")]
    if teacher and zero_shot:
        for row in cd_rows:
            result = recovered_gain(row, teacher, zero_shot)
            if result is None:
                sentences.append(
                    f"{row['method']}: the teacher is not above the zero-shot student on MNLI, so no "
                    "share of its gain can be recovered."
                )
                continue
            point, (low, high) = result
            sentences.append(
                f"{row['method']} recovers {point:.0%} (95% interval {low:.0%} to {high:.0%}) of the "
                "teacher's MNLI gain over the zero-shot student."
            )
    for cd_name, pbft_name, better, worse in PAIRS:
        cd, pbft = by_name.get(cd_name), by_name.get(pbft_name)
        if not (cd and pbft and cd.get("records") and pbft.get("records")):
            continue
        for task, label in (("mnli", "MNLI"), ("hans", "HANS")):
            parts = []
            for figure, name in (("accuracy", "accuracy"), ("auc", "margin AUC")):
                result = paired_difference(cd, pbft, task, figure)
                if result is None:
                    continue
                point, (low, high) = result
                scale, digits = (100, 1) if figure == "accuracy" else (1, 3)
                unit = " points" if figure == "accuracy" else ""
                verdict = (
                    f"{better} better"
                    if low > 0
                    else f"{worse} better"
                    if high < 0
                    else "no clear difference"
                )
                parts.append(
                    f"{name} {scale * point:+.{digits}f}{unit} (95% interval {scale * low:+.{digits}f} to "
                    f"{scale * high:+.{digits}f}: {verdict})"
                )
            if parts:
                sentences.append(f"On {label}, {cd_name} against {pbft_name}: " + "; ".join(parts) + ".")
    if memory_reference:
        reference = memory_reference["peak_mib"]
        for row in cd_rows:
            peak = row.get("peak_memory_mib")
            if peak:
                sentences.append(
                    f"{row['method']} peaks at {peak / 1024:.2f} GiB, {1 - peak / reference:.0%} below "
                    f"{memory_reference['name']} ({reference / 1024:.2f} GiB, "
                    f"{memory_reference['source']})."
                )
    return sentences
