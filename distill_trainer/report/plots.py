"""The comparison's plots (matplotlib, Agg backend: no display needed): accuracy and margin AUC of the
scored methods with their intervals, and each method's peak memory and time."""

from __future__ import annotations

import io
from pathlib import Path

from distill_trainer.integrity import write_bytes_atomically
from distill_trainer.report.columns import method_label, method_memory

ACCURACY_PLOT = "accuracy.png"
COST_PLOT = "memory_time.png"


def evaluated(rows: list[dict]) -> list[dict]:
    """The rows with a score (a memory probe has none)."""
    return [row for row in rows if any((t.get("accuracy") is not None) for t in row["eval"].values())]


def _save(fig, path: Path) -> None:
    """A PNG rendered in memory, then written atomically: never half of one."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    write_bytes_atomically(path, buffer.getvalue())


def write_plots(summary: dict, run_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # accuracy and margin AUC, each with its interval (1.96 standard errors), for the evaluated rows only: a
    # memory probe has no accuracy to show
    scored = evaluated(summary["methods"])
    names = [row["method"] for row in scored]
    x = range(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(max(9, 2.0 * len(names)), 4.2))
    for ax, figure, error, title in (
        (axes[0], "accuracy", "accuracy_stderr", "Accuracy"),
        (axes[1], "auc", "auc_stderr", "Margin AUC (threshold-free)"),
    ):
        for offset, task, label in (
            (-0.2, "mnli", "MNLI (in-domain)"),
            (0.2, "hans", "HANS (out-of-domain)"),
        ):
            # a task a method was not scored on gets no bar (NaN), not a bar at 0
            values = [row["eval"].get(task, {}).get(figure) for row in scored]
            errors = [1.96 * (row["eval"].get(task, {}).get(error) or 0) for row in scored]
            ax.bar(
                [i + offset for i in x],
                [float("nan") if v is None else v for v in values],
                width=0.4,
                yerr=errors,
                capsize=3,
                label=label,
            )
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xticks(list(x), names, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}, 95% interval")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, run_dir / ACCURACY_PLOT)
    plt.close(fig)

    methods = [method_label(row) for row in summary["methods"]]
    x = range(len(methods))
    fig, (memory_ax, time_ax) = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(methods)), 4))
    memory_ax.bar(list(x), [method_memory(row) or 0 for row in summary["methods"]], color="tab:purple")
    memory_ax.set_ylabel("needed memory (MiB)")
    memory_ax.set_title("Memory each method needs")
    train = [row["train_seconds"] for row in summary["methods"]]
    time_ax.bar(list(x), train, label="train")
    time_ax.bar(list(x), [row["eval_seconds"] for row in summary["methods"]], bottom=train, label="evaluate")
    time_ax.set_ylabel("seconds")
    time_ax.set_title("Time per method")
    time_ax.legend(fontsize=8)
    for ax in (memory_ax, time_ax):
        ax.set_xticks(list(x), methods, rotation=30, ha="right")
    fig.tight_layout()
    _save(fig, run_dir / COST_PLOT)
    plt.close(fig)
    return [run_dir / ACCURACY_PLOT, run_dir / COST_PLOT]


SIZE_PLOT = "sizes.png"
# the methods a comparison over student sizes draws, in the order of its legend
SIZE_METHODS = ("zero_shot", "icl_student", "pbft_lora", "cd_lora")


def parameter_count(parameters: int) -> str:
    """Millions for real students (135M), the count itself below that (a test's tiny model)."""
    return f"{parameters / 1e6:,.0f}M" if parameters >= 1e6 else f"{parameters:,}"


def write_size_plot(sizes: list[dict], path: Path) -> Path:
    """HANS margin AUC and MNLI accuracy against the student's parameters (log scale), one line per method
    with its 95% intervals; the teacher's figure, the same at every size, as a horizontal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ordered = sorted((e for e in sizes if e["parameters"]), key=lambda e: e["parameters"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, figure, title in (
        (axes[0], "hans_auc", "HANS margin AUC (out-of-domain)"),
        (axes[1], "mnli_accuracy", "MNLI accuracy (in-domain)"),
    ):
        for index, method in enumerate(SIZE_METHODS):
            # each method a little apart at one size (log scale: a factor): readable intervals
            shift = 1 + 0.03 * (index - (len(SIZE_METHODS) - 1) / 2)
            points = [(e["parameters"] * shift, e["methods"].get(method, {}).get(figure)) for e in ordered]
            points = [(x, f) for x, f in points if f]
            if not points:
                continue
            ax.errorbar(
                [x for x, _ in points],
                [f["value"] for _, f in points],
                yerr=[
                    [f["value"] - f["low"] for _, f in points],
                    [f["high"] - f["value"] for _, f in points],
                ],
                marker="o",
                capsize=3,
                label=method,
            )
        teacher = next(
            (e["methods"]["icl_teacher"].get(figure) for e in ordered if "icl_teacher" in e["methods"]), None
        )
        if teacher:
            ax.axhline(teacher["value"], color="black", linewidth=1, label="icl_teacher")
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(
            [e["parameters"] for e in ordered],
            [f"{e['folder']}\n{parameter_count(e['parameters'])}" for e in ordered],
            fontsize=8,
        )
        ax.set_xlabel("student (parameters)")
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}, 95% interval")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
