"""What a comparison's summary states beside its table: the run's settings, the data every method read,
the paper's memory reference (fine-tuning the teacher itself) and the sizes on disk.

    settings = run_settings(student_args, data_args, compare, config, earlier, seconds, setup_seconds)
    settings["data"] = data_read(rows)
    settings["memory_reference"] = teacher_finetuning_reference(rows, data_args, config)
    settings["disk_mb"] = disk_sizes(rows, config)
"""

from __future__ import annotations

import json
from pathlib import Path

from distill_trainer.report.columns import method_memory
from distill_trainer.teacher.teacher import is_self


def run_settings(
    student_args, data_args, compare, config, earlier: dict, seconds: float, setup_seconds
) -> dict:
    """The settings the summary states beside its table."""
    settings = {
        "student": student_args.model_name_or_path,
        "teacher": config.teacher_model_name_or_path,
        "pattern": data_args.pattern,
        "k": data_args.k,
        "demonstration_ids": data_args.demonstration_ids,
        "demonstration_seed": data_args.demonstration_seed,
        "num_train_examples": data_args.num_train_examples,
        "num_train_epochs": config.num_train_epochs,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "full_learning_rate": compare.full_learning_rate,
        "lora_learning_rate": compare.lora_learning_rate,
        "bitfit_learning_rate": compare.bitfit_learning_rate,
        "temperature": config.temperature,
        "distill_vocab": config.distill_vocab,
        "lora_r": student_args.lora_r,
        "num_eval_examples": data_args.num_eval_examples,
        "hans_per_subcase": data_args.hans_per_subcase,
        "quick": compare.quick,
        "full": compare.full,
        "memory_probes": list(compare.probe_methods),
        "reused": sorted(earlier),
        "memory": "peak resident set of each method's own process"
        if compare.fresh_process_per_method
        else "peak resident set during each method, in one process (earlier methods' leftovers included)",
        "total_seconds": round(seconds, 1),
        "setup_seconds": setup_seconds,
    }
    return settings


def teacher_finetuning_reference(results: list[dict], data_args, config) -> dict | None:
    """The paper's memory reference: fine-tuning the teacher itself. Full fine-tuning with AdamW holds 16
    bytes per parameter (fp32 weights, gradients and two moments) before any activation, more than a
    CPU machine has for a 1.5B teacher, so it is the analytic estimate (memory_estimate.py) on the runtime
    the measured runs had; LoRA fine-tuning of the teacher, when run (pbft_teacher_lora), is measured
    and listed beside it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from distill_trainer.memory.estimate import estimate_peak_memory
    from distill_trainer.models.loading import load_tokenizer, prepare_student, resolve_model_path
    from distill_trainer.nli.data import prepare_data
    from distill_trainer.report.estimates import longest_row_tokens

    teacher = config.teacher_model_name_or_path
    if not teacher or is_self(teacher):
        return None
    data = prepare_data(data_args)
    tokens = longest_row_tokens(load_tokenizer(teacher), data.pattern, data.train_rows)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(resolve_model_path(teacher)))
    model = prepare_student(model, "full")
    runtimes = [row["runtime_mib"] for row in results if row.get("runtime_mib")]
    runtime = int(min(runtimes) * 2**20) if runtimes else 0
    estimate = estimate_peak_memory(
        model,
        None,
        batch_size=config.per_device_train_batch_size,
        student_tokens=tokens,
        runtime_bytes=runtime,
    )
    import psutil

    machine = psutil.virtual_memory().total
    fits = "it would fit" if estimate.total < machine else "it does not fit"
    notes = [
        f"full fine-tuning of the teacher ({sum(p.numel() for p in model.parameters()) / 1e9:.2f} B "
        f"parameters, AdamW, batch {config.per_device_train_batch_size} x {tokens} tokens): "
        f"{estimate.total / 2**30:.2f} GiB, analytic ({fits} in this machine's {machine / 2**30:.0f} GiB)"
    ]
    lora = next((row for row in results if row["method"] == "pbft_teacher_lora"), None)
    if lora and method_memory(lora):
        notes.append(
            f"LoRA fine-tuning of the teacher (pbft_teacher_lora, measured over a few steps): "
            f"{method_memory(lora) / 1024:.2f} GiB"
        )
    return {
        "name": "full fine-tuning (PBFT) of the teacher",
        "peak_mib": round(estimate.total / 2**20, 1),
        "source": "analytic estimate",
        "notes": notes,
    }


def data_read(results: list[dict]) -> list[str]:
    """What the evaluated rows are, named truthfully (a local copy is not the Hub split it imitates), and
    how many of each task every method scored."""
    from distill_trainer.models.provenance import data_lines

    lines = []
    for row in results:
        metrics = json.loads((Path(row["output_dir"]) / "metrics.json").read_text(encoding="utf-8"))
        for line in data_lines(metrics.get("data") or {}):
            if line not in lines:
                lines.append(line)
    scored = {task: summary.get("n") for row in results for task, summary in row["eval"].items()}
    return lines + [f"scored per method: {', '.join(f'{n} {task} rows' for task, n in scored.items())}"]


def disk_sizes(results: list[dict], config) -> dict[str, float]:
    """MB on disk of the teacher's weights and of each trained student's saved folder."""
    from distill_trainer.models.loading import resolve_model_path

    def megabytes(folder) -> float:
        files = [p for p in Path(folder).glob("*") if p.suffix in (".safetensors", ".bin") and p.is_file()]
        return round(sum(p.stat().st_size for p in files) / 1e6, 1)

    sizes = {}
    teacher = config.teacher_model_name_or_path
    if teacher and not is_self(teacher) and Path(resolve_model_path(teacher)).is_dir():
        sizes[f"teacher {teacher} (float32)"] = megabytes(resolve_model_path(teacher))
    for row in results:
        if row["trainable_parameters"] and row["method"] != "pbft_teacher_lora":
            sizes[f"{row['method']} ({row['student_mode']})"] = megabytes(row["output_dir"])
    return sizes
