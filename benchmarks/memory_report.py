"""Tables (markdown, JSON) and the bar chart of the memory benchmark (`benchmarks/memory.py`)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from distill_trainer.memory.units import GIB, MIB

GOAL_CD_8BIT_LORA = 0.75  # peak reduction against PBFT of OPT-1.3B
GOAL_CACHED = 0.90
GOAL_ANALYTIC_ERROR = 0.15


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _rows(
    results: dict, settings: dict, estimate, scenarios: dict, reference: str
) -> tuple[list[dict], dict]:
    """One row per scenario: measured peak, analytic estimate (with the measured runtime), reductions."""
    runtimes = [
        r["runtime_bytes"] for r in results.values() if r.get("status") == "measured" and "runtime_bytes" in r
    ]
    typical_runtime = int(statistics.median(runtimes)) if runtimes else 0
    rows = []
    for name, scenario in scenarios.items():
        result = results.get(name)
        if result is None:
            continue
        runtime = result.get("runtime_bytes", typical_runtime)
        predicted = estimate(scenario, settings, runtime_bytes=runtime)
        at_paper_batch = estimate(
            scenario, settings, batch_size=settings["paper_batch"], runtime_bytes=runtime
        )
        measured = result.get("peak_bytes") if result["status"] == "measured" else None
        rows.append(
            {
                "scenario": name,
                "title": scenario.title,
                "status": result["status"],
                "validation_only": scenario.validation_only,
                "measured_bytes": measured,
                "estimate_bytes": predicted.total,
                "estimate": predicted.as_dict(),
                # peak minus the exactly countable terms, defined like the measured breakdown's rest
                "estimate_rest_bytes": predicted.total
                - predicted.runtime
                - predicted.parameters
                - predicted.gradients
                - predicted.optimizer_state
                - predicted.teacher_weights,
                "estimate_paper_batch_bytes": at_paper_batch.total,
                "error": None if measured is None else (measured - predicted.total) / predicted.total,
                "reserved_bytes": result.get("peak_reserved_bytes") if measured is not None else None,
                "trainable_parameters": result.get("trainable_parameters") or predicted.gradients // 4,
                "breakdown": result.get("breakdown"),
                "phases": (result.get("memory") or {}).get("phases"),
                "seconds": result.get("seconds"),
                "available_bytes": result.get("available_bytes"),
                "error_message": result.get("error"),
                "code": result.get("code"),
            }
        )
    by_name = {row["scenario"]: row for row in rows}
    ref = by_name.get(reference)
    reference_info = None
    if ref is not None:
        value = ref["measured_bytes"] if ref["measured_bytes"] is not None else ref["estimate_bytes"]
        reference_info = {
            "scenario": reference,
            "bytes": value,
            "paper_batch_bytes": ref["estimate_paper_batch_bytes"],
            "source": "measured" if ref["measured_bytes"] is not None else "analytic estimate",
        }
        for row in rows:
            peak = row["measured_bytes"] if row["measured_bytes"] is not None else row["estimate_bytes"]
            row["reduction"] = 1 - peak / value
            row["reduction_source"] = "measured" if row["measured_bytes"] is not None else "analytic"
            row["reduction_paper_batch"] = (
                1 - row["estimate_paper_batch_bytes"] / reference_info["paper_batch_bytes"]
            )
    return rows, reference_info


def _goals(rows: list[dict]) -> dict:
    by_name = {row["scenario"]: row for row in rows}

    def reduction(name):
        row = by_name.get(name)
        return None if row is None or row["measured_bytes"] is None else row.get("reduction")

    errors = {row["scenario"]: row["error"] for row in rows if row["error"] is not None}
    worst = max(errors.items(), key=lambda item: abs(item[1])) if errors else None
    cd8, cached = reduction("cd-8bit-lora"), reduction("cd-cached-lora")
    return {
        "cd_8bit_lora_reduction": {
            "value": cd8,
            "goal": GOAL_CD_8BIT_LORA,
            "met": None if cd8 is None else cd8 >= GOAL_CD_8BIT_LORA,
        },
        "cached_lora_reduction": {
            "value": cached,
            "goal": GOAL_CACHED,
            "met": None if cached is None else cached >= GOAL_CACHED,
        },
        "analytic_error": {
            "worst_scenario": worst[0] if worst else None,
            "worst": worst[1] if worst else None,
            "mean_abs": statistics.mean(abs(e) for e in errors.values()) if errors else None,
            "goal": GOAL_ANALYTIC_ERROR,
            "met": None if worst is None else abs(worst[1]) <= GOAL_ANALYTIC_ERROR,
        },
    }


def _markdown(rows, reference, goals, disk, settings, claims, environment) -> str:
    lines = [
        *_introduction(rows, settings, environment),
        *_peak_table(rows, reference, settings),
        *_breakdown_table(rows, settings),
        *_goal_lines(goals, claims),
        *_disk_lines(disk, claims),
    ]
    return "\n".join(lines) + "\n"


def _introduction(rows, settings, environment) -> list[str]:
    """The title, what was measured and how, on which machine, and the command."""
    batch, accumulation = settings["micro_batch_size"], settings["gradient_accumulation_steps"]
    teacher_tokens = 1 + settings["demonstration_tokens"] + settings["student_tokens"] - 1
    lines = [
        "# Memory: context distillation vs pattern-based fine-tuning"
        + (" (tiny smoke run)" if settings["tiny"] else ""),
        "",
        f"Random-initialised {'tiny stand-ins for ' if settings['tiny'] else ''}OPT-1.3B / OPT-125M "
        "(published configs), `ContextDistillationTrainer` on `TwoViewCollator` batches, "
        f"{settings['steps']} optimizer steps of micro-batch {batch} x {accumulation} accumulation, student "
        f"view {settings['student_tokens']} tokens, teacher view {teacher_tokens} tokens "
        f"({settings['demonstration_tokens']} of them the 16 demonstrations, shared: the teacher prefix KV "
        f"cache is on unless a row says otherwise), AdamW, fp32 student, device `{settings['device']}`. "
        "Peak = "
        + (
            "CUDA peak allocated bytes (reserved: the caching allocator's peak hold, allocated plus cached "
            "free blocks)"
            if settings["device"].startswith("cuda")
            else "peak resident set size of the process"
        )
        + " during `trainer.train()`, each scenario in a fresh process"
        + (
            ""
            if settings["device"].startswith("cuda")
            else (
                " with glibc's default malloc settings."
                if settings.get("glibc_default")
                else " with glibc's mmap threshold fixed at 128 KiB, so freed tensors leave the RSS as they "
                "would leave CUDA's allocated bytes (`--glibc-default` measures without it)."
            )
        ),
        (
            f"{environment['machine']}; torch {environment['versions'].get('torch')}, transformers "
            f"{environment['versions'].get('transformers')}, bitsandbytes "
            f"{environment['versions'].get('bitsandbytes')}; {environment['date']}; code "
            f"{_code_versions(rows)}."
        ),
        "",
        "Command: `python benchmarks/memory.py" + (" --tiny" if settings["tiny"] else "") + "`",
        "",
    ]
    return lines


def _peak_table(rows, reference, settings) -> list[str]:
    """Measured and analytic peak per scenario, and the reduction against fine-tuning the teacher."""
    cuda = settings["device"].startswith("cuda")
    lines = [
        "## Peak memory while training",
        "",
        (
            "Reduction is against pattern-based fine-tuning of OPT-1.3B "
            f"({reference['source'] if reference else 'n/a'}). The last two columns are the analytic model "
            f"at the paper's batch of {settings['paper_batch']} without accumulation (activations and the "
            "teacher's forward grow with it; the rest does not)."
        ),
        "",
        (
            "| scenario | trainable params | measured peak (GiB) | "
            + ("reserved peak (GiB) | " if cuda else "")
            + f"analytic (GiB) | error | reduction | analytic, batch {settings['paper_batch']} (GiB) | "
            f"reduction, batch {settings['paper_batch']} |"
        ),
        "|---|---:|---:|" + ("---:|" if cuda else "") + "---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row["status"] == "measured":
            measured = _gib(row["measured_bytes"])
        elif row["status"] == "does_not_fit":
            measured = f"does not fit ({_gib(row['available_bytes'])} GiB available)"
        else:
            measured = f"{row['status']}: {row['error_message'] or ''}"[:80]
        reduction = _pct(row.get("reduction"))
        if row.get("reduction_source") == "analytic" and row.get("reduction") is not None:
            reduction += " (analytic)"
        paper_reduction = _pct(row.get("reduction_paper_batch"))
        if row["validation_only"] or row["scenario"] == (reference or {}).get("scenario"):
            reduction = paper_reduction = "-"  # the reference itself, or a check of the analytic model
        params = f"{row['trainable_parameters'] / 1e6:.2f} M" if row["trainable_parameters"] else "-"
        reserved = f"{_gib(row['reserved_bytes'])} | " if cuda else ""
        lines.append(
            f"| {row['title']} | {params} | {measured} | {reserved}{_gib(row['estimate_bytes'])} | "
            f"{_pct(row['error']) if row['error'] is not None else '-'} | {reduction} | "
            f"{_gib(row['estimate_paper_batch_bytes'])} | {paper_reduction} |"
        )
    return lines


def _breakdown_table(rows, settings) -> list[str]:
    """Where each measured peak goes: runtime, parameters, gradients, optimizer, teacher, rest."""
    lines = []
    lines += [
        "",
        "## Where the peak goes (measured, MiB)",
        "",
        (
            "Runtime is the process before any model exists (interpreter, torch, transformers); parameters, "
            "gradients, optimizer state and teacher weights are exact byte counts of the tensors; rest = "
            "peak minus all of those (activations, the teacher's forward and prefix KV cache, gradient "
            "temporaries, allocator slack), beside the analytic model's rest, defined the same way. Load "
            "peak: the `model_load` phase (building the student, loading the teacher checkpoint); teacher "
            "fwd peak: the worst teacher forward."
        ),
        "",
        (
            "| scenario | runtime | parameters | gradients | optimizer | teacher weights | rest | rest, "
            "analytic | load peak | teacher fwd peak | time (s) |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        b = row["breakdown"]
        if not b:
            continue
        phases = row["phases"] or {}
        key = "cuda_peak_allocated_mib" if settings["device"].startswith("cuda") else "cpu_peak_rss_mib"
        load = phases.get("model_load", {}).get(key, "-")
        teacher_forward = phases.get("teacher_forward", {}).get(key, "-")
        analytic_rest = row["estimate_rest_bytes"] / MIB
        lines.append(
            f"| {row['scenario']} | {b['runtime']:.0f} | {b['parameters']:.0f} | {b['gradients']:.0f} | "
            f"{b['optimizer_state']:.0f} | {b['teacher_weights']:.0f} | {b['rest']:.0f} | "
            f"{analytic_rest:.0f} | {load} | {teacher_forward} | {row['seconds']} |"
        )
    return lines


def _goal_lines(goals, claims) -> list[str]:
    lines = []
    lines += ["", "## Goals", ""]
    g = goals["cd_8bit_lora_reduction"]
    lines.append(
        f"- 8-bit OPT-1.3B teacher + LoRA OPT-125M student: {_pct(g['value'])} less peak memory than PBFT "
        f"of OPT-1.3B (goal >= {_pct(g['goal'])}; paper: {claims['memory_reduction']}): "
        f"{_verdict(g['met'])}."
    )
    g = goals["cached_lora_reduction"]
    lines.append(
        f"- Cached teacher outputs + LoRA student: {_pct(g['value'])} less (goal >= {_pct(g['goal'])}): "
        f"{_verdict(g['met'])}."
    )
    g = goals["analytic_error"]
    if g["worst"] is not None:
        lines.append(
            f"- Analytic model vs measured peaks: mean |error| {_pct(g['mean_abs'])}, worst "
            f"{_pct(g['worst'])} ({g['worst_scenario']}) (goal within {_pct(g['goal'])}): "
            f"{_verdict(g['met'])}."
        )
    return lines


def _disk_lines(disk, claims) -> list[str]:
    lines = []
    if disk:
        lines += [
            "",
            "## Size on disk",
            "",
            f"Paper: {claims['model_size']}.",
            "",
            "| file | size (MB) |",
            "|---|---:|",
        ]
        lines += [f"| {label} | {size / 1e6:,.1f} |" for label, size in disk.get("sizes_bytes", {}).items()]
        lines += [f"- {note}" for note in disk.get("notes", [])]
    return lines


def _code_versions(rows: list[dict]) -> str:
    versions = sorted({row.get("code") or "not recorded" for row in rows})
    return versions[0] if len(versions) == 1 else "mixed: " + "; ".join(versions)


def _verdict(met) -> str:
    return "not measured" if met is None else ("met" if met else "NOT met")


def _chart(rows, reference, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    terms = [
        ("runtime", "runtime", "#bbbbbb"),
        ("parameters", "parameters", "#4c72b0"),
        ("gradients", "gradients", "#55a868"),
        ("optimizer_state", "optimizer state", "#c44e52"),
        ("teacher_weights", "teacher weights", "#8172b2"),
        ("rest", "activations and rest", "#ccb974"),
    ]
    estimate_terms = {
        "runtime": "runtime",
        "parameters": "parameters",
        "gradients": "gradients",
        "optimizer_state": "optimizer_state",
        "teacher_weights": "teacher_weights",
    }
    shown = [row for row in rows if row["breakdown"] or row["status"] == "does_not_fit"]
    fig, ax = plt.subplots(figsize=(10, 0.45 * len(shown) + 1.8))
    for y, row in enumerate(shown):
        measured = bool(row["breakdown"])
        left = 0.0
        for key, _label, color in terms:
            if measured:
                value = max(row["breakdown"][key], 0.0) / 1024
            elif key == "rest":
                value = row["estimate_rest_bytes"] / GIB
            else:
                value = row["estimate"][estimate_terms[key]] / 1024
            ax.barh(
                y,
                value,
                left=left,
                color=color,
                hatch=None if measured else "//",
                edgecolor="white" if measured else "black",
                linewidth=0.3,
            )
            left += value
        if not measured:
            note = "does not fit here: analytic estimate"
        elif row["validation_only"]:
            note = "check of the analytic model"
        elif row.get("reduction") is not None and row["scenario"] != (reference or {}).get("scenario"):
            note = f"{_pct(row['reduction'])} less"
        else:
            note = ""
        ax.text(left + 0.1, y, note, va="center", fontsize=8)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color) for _, _, color in terms]
    ax.legend(handles, [label for _, label, _ in terms], fontsize=8, loc="lower right")
    ax.set_yticks(range(len(shown)), [row["scenario"] for row in shown], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("peak memory while training (GiB)")
    ax.set_title("Peak training memory by component, vs pattern-based fine-tuning of OPT-1.3B")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    results: dict,
    settings: dict,
    output_dir: Path,
    estimate,
    scenarios: dict,
    reference: str,
    claims: dict,
    environment: dict,
) -> dict:
    output_dir.mkdir(parents=True, exist_ok=True)
    rows, reference_info = _rows(results, settings, estimate, scenarios, reference)
    goals = _goals(rows)
    disk = results.get("disk")
    report = {
        "settings": settings,
        "environment": environment,
        "paper_claims": claims,
        "reference": reference_info,
        "goals": goals,
        "scenarios": rows,
        "disk": disk,
    }
    (output_dir / "memory.json").write_text(json.dumps(report, indent=1))
    (output_dir / "memory.md").write_text(
        _markdown(rows, reference_info, goals, disk, settings, claims, environment)
    )
    _chart(rows, reference_info, output_dir / "memory.png")
    return report
