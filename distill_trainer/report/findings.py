"""The comparison's findings, as sentences computed from one run's per-row predictions, each with its
interval.

    sentences = findings(rows, memory_reference)   # rows as report.load_method_result gives them

Every comparison is paired (the methods scored the same evaluation rows), so intervals come from a
bootstrap over rows: resample the rows, recompute both methods' figures on the same resample. The gain
recovered by a context-distilled student is (CD - zero-shot) / (teacher - zero-shot) on MNLI accuracy.
"""

from __future__ import annotations

import random

from distill_trainer.errors import UsageError
from distill_trainer.finite import nonfinite_records
from distill_trainer.nli.metrics.nli import roc_auc
from distill_trainer.report.columns import method_memory

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
        for row in (row for row in rows if row["method"].startswith("cd_")):  # memory probes included
            peak = method_memory(row)
            if peak:
                sentences.append(
                    f"{row['method']} {_memory_verb(row)} {peak / 1024:.2f} GiB, "
                    f"{1 - peak / reference:.0%} below "
                    f"{memory_reference['name']} ({reference / 1024:.2f} GiB, "
                    f"{memory_reference['source']})."
                )
    return sentences


def _memory_verb(row: dict) -> str:
    return "needs" if row.get("needed_memory_mib") is not None else "peaks at"


# ---------------------------------------------------------------- the paper's claims, one verdict each

SUPPORTS, CONTRADICTS, CANNOT_TELL = "supports", "contradicts", "cannot tell"
# the paper's sizes: out-of-domain accuracy +20 points over PBFT, ~50% better (relative) than the student's
# ICL, up to 60% less memory than fine-tuning the teacher
PAPER_OOD_OVER_PBFT_POINTS = 20.0
PAPER_OOD_OVER_ICL_RELATIVE = 0.5
PAPER_MEMORY_SAVING = 0.6


def _first(by_name: dict, names) -> dict | None:
    return next((by_name[n] for n in names if n in by_name and by_name[n].get("records")), None)


def _ood_verdict(cd: dict, other: dict, least_points: float) -> tuple[str, str] | None:
    """Verdict on 'CD is better out of domain than `other`', by HANS margin AUC (the direction: threshold
    free) and accuracy (the size the paper claims: `least_points`)."""
    auc, accuracy = (
        paired_difference(cd, other, "hans", "auc"),
        paired_difference(cd, other, "hans", "accuracy"),
    )
    if auc is None or accuracy is None:
        return None
    (auc_point, (auc_low, auc_high)), (acc_point, (acc_low, acc_high)) = auc, accuracy
    if auc_low > 0 and acc_low > 0:
        verdict = SUPPORTS
    elif auc_high < 0 or 100 * acc_high < least_points:
        verdict = CONTRADICTS
    else:
        verdict = CANNOT_TELL
    detail = (
        f"HANS margin AUC {auc_point:+.3f} (95% interval {auc_low:+.3f} to {auc_high:+.3f}), accuracy "
        f"{100 * acc_point:+.1f} points ({100 * acc_low:+.1f} to {100 * acc_high:+.1f}; the paper's size: "
        f"at least {least_points:+.1f})"
    )
    return verdict, detail


def paper_claims(rows: list[dict], memory_reference: dict | None = None) -> list[str]:
    """One sentence per claim of the paper that this run can speak to, starting with its verdict: the run
    supports it, contradicts it (its interval excludes the claim) or cannot tell (the interval is too
    wide)."""
    by_name = {row["method"]: row for row in rows}
    teacher, zero_shot = by_name.get(TEACHER), by_name.get(ZERO_SHOT)
    cd = _first(by_name, ("cd_lora", "cd_full", "cd_bitfit", "cd_lora_8bit"))
    sentences = []
    if cd and teacher and zero_shot:
        result = recovered_gain(cd, teacher, zero_shot)
        if result is None:
            sentences.append(
                f"In-domain recovery: {CANNOT_TELL}; the ICL teacher is not above the zero-shot student on "
                "MNLI, so there is no gain to recover."
            )
        else:
            point, (low, high) = result
            verdict = SUPPORTS if low > 0 else CONTRADICTS if high < 0 else CANNOT_TELL
            sentences.append(
                f"In-domain recovery (a CD student gains on MNLI toward its ICL teacher): {verdict}; "
                f"{cd['method']} recovers {point:.0%} (95% interval {low:.0%} to {high:.0%}) of the "
                "teacher's gain over the zero-shot student."
            )
    if cd:
        mode = cd["method"].removeprefix("cd_").split("_")[0]
        pbft = _first(by_name, (f"pbft_{mode}",))
        result = _ood_verdict(cd, pbft, PAPER_OOD_OVER_PBFT_POINTS) if pbft else None
        if result:
            sentences.append(
                f"Out of domain, CD over PBFT (paper: +{PAPER_OOD_OVER_PBFT_POINTS:.0f} points on HANS): "
                f"{result[0]}; {cd['method']} against {pbft['method']}: {result[1]}."
            )
        icl = _first(by_name, ("icl_student",))
        icl_task = _task(icl, "hans") if icl else None
        if icl_task:
            least = (
                100
                * PAPER_OOD_OVER_ICL_RELATIVE
                * _accuracy(icl_task["correct"], range(len(icl_task["correct"])))
            )
            result = _ood_verdict(cd, icl, least)
            if result:
                sentences.append(
                    f"Out of domain, CD over the student's own ICL (paper: about "
                    f"{PAPER_OOD_OVER_ICL_RELATIVE:.0%} better): {result[0]}; {cd['method']} against "
                    f"{icl['method']}: {result[1]}."
                )
    if memory_reference:
        reference = memory_reference["peak_mib"]
        measured = [r for r in rows if r["method"].startswith("cd_") and method_memory(r)]
        paper_setting = next((r for r in measured if r["method"] == "cd_lora_8bit"), None) or min(
            measured, key=method_memory, default=None
        )
        if paper_setting:
            saving = 1 - method_memory(paper_setting) / reference
            verdict = SUPPORTS if saving >= PAPER_MEMORY_SAVING else CONTRADICTS
            sentences.append(
                f"Memory (paper: up to {PAPER_MEMORY_SAVING:.0%} less than fine-tuning the teacher): "
                f"{verdict}; "
                f"{paper_setting['method']} {_memory_verb(paper_setting)} "
                f"{method_memory(paper_setting) / 1024:.2f} GiB, "
                f"{saving:.0%} below {memory_reference['name']} ({reference / 1024:.2f} GiB, "
                f"{memory_reference['source']})."
            )
    return sentences
