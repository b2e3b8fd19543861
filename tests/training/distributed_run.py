"""A few steps of context distillation on tiny models, run in one process or under a launcher.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/training/distributed_run.py \\
        --student DIR --output DIR --steps 3 --job full-4x1 full 4 1 TEACHER_DIR --job lora-2x2 lora 2 2 self

Each `--job NAME MODE PER_DEVICE_BATCH ACCUMULATION TEACHER` trains a fresh student, one after the other
in the same processes (one launch, several checks). `tests/training/test_distributed.py` launches it and
compares with `run(...)` called in its own process. Every process trains with its own output_dir,
`<output>/<name>/rank<r>`, and saves the student there through the library's API: what a non-main
process writes is then visible, and must be nothing. Each process reports what it saw in
`<output>/<name>/report-rank<r>.json` (the harness's file, not the library's).

`--deepspeed 3` runs the jobs under DeepSpeed ZeRO-3 instead of DDP (needs `pip install '.[distributed]'`;
on a machine without GPUs also `DS_ACCELERATOR=cpu`); `--fsdp` runs them under FSDP2 with the settings
of `recipes/configs/accelerate/fsdp.yaml`; `training/cpu_processes.py` says how both run on CPU processes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from datasets import Dataset

from distill_trainer import ContextDistillationTrainer, DistillationConfig, TwoViewCollator, build_views
from distill_trainer.models.loading import load_causal_lm, load_tokenizer, prepare_student
from distill_trainer.report.hub import save_student
from distill_trainer.report.model_card import StudentCard
from distill_trainer.training.cpu_processes import deepspeed_on_cpu_processes, fsdp2_on_cpu_processes

DEMOS = "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes"
ROWS = [  # answers of 1 and 3 tokens, so the two processes see different answer-token counts
    ("A man is playing a guitar question: Nobody plays music. Yes or No? answer:", " No"),
    ("The doctor saw the lawyer question: The lawyer saw the doctor. Yes or No? answer:", " Yes"),
    ("Two dogs run in the park question: Dogs run. Yes or No? answer:", " Yes"),
    ("The senator thanked the artist question: Nobody was thanked. Yes or No? answer:", " No question: Yes"),
    ("premise hypothesis Question: The cat sat. True or False? answer:", " True"),
]


FSDP_CONFIG = Path(__file__).parents[2] / "recipes" / "configs" / "accelerate" / "fsdp.yaml"


def run(
    student: str,
    teacher: str,
    output: str,
    per_device_batch: int,
    accumulation: int,
    steps: int,
    mode: str = "full",
    alpha: float = 0.7,
    deepspeed_stage: int = 0,
    fsdp: bool = False,
) -> dict:
    extra = {}
    if deepspeed_stage:
        extra = deepspeed_on_cpu_processes(deepspeed_stage)
    elif fsdp:
        extra = fsdp2_on_cpu_processes(str(FSDP_CONFIG))
    tokenizer = load_tokenizer(student)
    rows = [ROWS[i % len(ROWS)] for i in range(24)]
    dataset = Dataset.from_list([build_views(tokenizer, q, a, DEMOS) for q, a in rows])
    rank = int(os.environ.get("RANK", 0))
    run_dir = Path(output) / f"rank{rank}"
    # plain SGD, no clipping: the weights after training are a direct function of the gradients
    args = DistillationConfig(
        output_dir=str(run_dir),
        per_device_train_batch_size=per_device_batch,
        gradient_accumulation_steps=accumulation,
        max_steps=steps,
        optim="sgd",
        learning_rate=0.5,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        alpha=alpha,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not deepspeed_stage,
        seed=0,
        disable_tqdm=True,
        **extra,
    )
    # loaded after the arguments, as a recipe does: under ZeRO-3 the student is then created partitioned
    model = load_causal_lm(student)
    if mode == "lora":
        torch.manual_seed(0)  # the adapters' random init, the same in every run whatever ran before
        model = prepare_student(model, "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"])
    trainer = ContextDistillationTrainer(
        model=model,
        teacher=teacher,
        args=args,
        train_dataset=dataset,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
    )
    trainer.train()
    card = StudentCard(model_name="tiny-student", base_model=student, teacher=teacher, student_mode=mode)
    save_student(trainer, run_dir / "student", card=card, recipe={"alpha": alpha, "steps": steps})

    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    teacher_params = [] if trainer.teacher.is_self else list(trainer.teacher.model.parameters())
    history = trainer.state.log_history
    return {
        "rank": rank,
        "world_size": trainer.accelerator.num_processes,
        "distributed_type": str(trainer.accelerator.distributed_type),
        "student_wrapper": type(trainer.model_wrapped).__name__,
        "teacher": "self" if trainer.teacher.is_self else type(trainer.teacher.model).__name__,
        "teacher_training": not trainer.teacher.is_self and trainer.teacher.model.training,
        "teacher_requires_grad": any(p.requires_grad for p in teacher_params),
        "teacher_in_optimizer": any(id(p) in in_optimizer for p in teacher_params),
        "teacher_devices": sorted({str(p.device) for p in teacher_params}),
        # under ZeRO-3 and FSDP a process holds only its shard of a parameter, about 1/world_size
        "teacher_local_numel": sum(_local_numel(p) for p in teacher_params),
        "teacher_numel": sum(_numel(p) for p in teacher_params),
        "student_local_numel": sum(_local_numel(p) for p in trainer.model_wrapped.parameters()),
        "student_numel": sum(_numel(p) for p in trainer.model_wrapped.parameters()),
        "loss": [log["loss"] for log in history if "loss" in log],
        "kd_loss": [log["kd_loss"] for log in history if "kd_loss" in log],
        "ce_loss": [log["ce_loss"] for log in history if "ce_loss" in log],
    }


def _local_numel(parameter) -> int:
    """The elements this process holds: its ZeRO-3 partition (ds_tensor), its FSDP2 shard (a DTensor's
    local tensor), or the whole parameter."""
    if hasattr(parameter, "ds_tensor"):
        return parameter.ds_tensor.numel()
    if hasattr(parameter, "to_local"):
        return parameter.to_local().numel()
    return parameter.numel()


def _numel(parameter) -> int:
    """The parameter's size over all processes (a DTensor's numel is already the global one)."""
    return getattr(parameter, "ds_numel", parameter.numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--deepspeed", type=int, default=0, help="ZeRO stage; 0: plain DDP")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 with fsdp.yaml's settings, not DDP")
    parser.add_argument(
        "--job",
        nargs=5,
        action="append",
        required=True,
        metavar=("NAME", "MODE", "PER_DEVICE_BATCH", "ACCUMULATION", "TEACHER"),
    )
    a = parser.parse_args()
    torch.set_num_threads(1)  # two processes on two cores
    for name, mode, batch, accumulation, teacher in a.job:
        output = Path(a.output, name)
        report = run(
            a.student,
            teacher,
            str(output),
            int(batch),
            int(accumulation),
            a.steps,
            mode,
            deepspeed_stage=a.deepspeed,
            fsdp=a.fsdp,
        )
        output.mkdir(parents=True, exist_ok=True)
        Path(output, f"report-rank{report['rank']}.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
