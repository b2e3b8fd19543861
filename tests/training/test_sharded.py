"""DeepSpeed ZeRO-3, ZeRO-2 and FSDP2 really run in 2 CPU processes (gloo) and equal a 1-process run with
the same global batch: the losses within 1e-4, the saved student within 1e-5 and loadable; each process
holds only its shard of what the strategy partitions (ZeRO-3: the student's and the teacher's weights;
FSDP2: the student's; ZeRO-2: neither, only the student's gradients and optimizer state).

One launch per strategy trains the two jobs of the DDP tests: a full student with a separate teacher
(2 processes x 4 examples) and a LoRA student whose teacher is its own base model, `teacher: self`
(2 processes x 2 examples x 2 accumulation steps), a PEFT model serving as teacher under each strategy.
FSDP2 runs with the settings of `recipes/configs/accelerate/fsdp.yaml` (how the strategies
run on CPU processes: `distill_trainer/training/cpu_processes.py`).

Marked `distributed` (a pass of its own in CI: `./run.sh test -m distributed`); ZeRO needs the
`distributed` extra (`pip install '.[distributed]'`), which `run.sh` installs. Select one strategy with
`-k zero3`, `-k zero2` or `-k fsdp2`.
"""

import importlib.util

import pytest
import torch
from distributed_launch import JOBS, WEIGHTS, launch, max_difference, reports
from safetensors.torch import load_file

from distill_trainer.report.hub import check_student_folder

STRATEGIES = {  # name: (the harness's flags, accelerate's distributed type, the student's wrapper class,
    # the models each process holds only a shard of)
    "zero3": (["--deepspeed", "3"], "DistributedType.DEEPSPEED", "DeepSpeedEngine", {"student", "teacher"}),
    # ZeRO-2 partitions the student's gradients and optimizer state, no weights: whole copies of both
    "zero2": (["--deepspeed", "2"], "DistributedType.DEEPSPEED", "DeepSpeedEngine", set()),
    # FSDP2 renames the class (FSDP<its class>) and leaves the teacher alone, as docs/distributed.md says
    "fsdp2": (["--fsdp"], "DistributedType.FSDP", "FSDP", {"student"}),
}

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
        reason="needs torch.distributed with gloo",
    ),
]


@pytest.fixture(scope="module", params=list(STRATEGIES))
def sharded_run(request, tiny_dirs, tmp_path_factory):
    """(strategy name, the output folder of its 2-process launch)."""
    name = request.param
    if name.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("ZeRO needs deepspeed: pip install '.[distributed]' (run.sh installs it)")
    output = tmp_path_factory.mktemp(name)
    launch(tiny_dirs, output, JOBS, *STRATEGIES[name][0])
    return name, output


@pytest.mark.integration
def test_the_strategy_really_runs_and_shards(sharded_run):
    strategy, output = sharded_run
    _, distributed_type, wrapper, sharded = STRATEGIES[strategy]

    def check_share(report, model):
        local, total = report[f"{model}_local_numel"], report[f"{model}_numel"]
        if model in sharded:  # about half per process, not a whole copy (shards round up)
            assert 0 < local < 0.6 * total
        else:
            assert local == total > 0

    for name in JOBS:
        for report in reports(output, name):
            assert report["world_size"] == 2 and report["distributed_type"] == distributed_type
            assert report["student_wrapper"].startswith(wrapper)
            check_share(report, "student")
    for report in reports(output, "full-4x1"):
        assert report["teacher_requires_grad"] is False and report["teacher_in_optimizer"] is False
        assert report["teacher_training"] is False
        check_share(report, "teacher")


@pytest.mark.integration
@pytest.mark.parametrize("name", list(JOBS))
def test_two_sharded_processes_equal_one_process(sharded_run, one_process_runs, name):
    _, output = sharded_run
    single, single_dir = one_process_runs[name]
    for report in reports(output, name):
        assert len(report["loss"]) == len(single["loss"])
        assert max(abs(a - b) for a, b in zip(report["loss"], single["loss"])) <= 1e-4
    weights = WEIGHTS[JOBS[name][0]]
    two = load_file(output / name / "rank0" / "student" / weights)
    one = load_file(single_dir / "rank0" / "student" / weights)
    assert max_difference(two, one) <= 1e-5


@pytest.mark.integration
def test_only_rank_zero_writes_a_loadable_student(sharded_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    _, output = sharded_run
    for name in JOBS:
        rank1 = output / name / "rank1"
        assert not rank1.exists() or not any(p.is_file() for p in rank1.rglob("*"))
        check_student_folder(output / name / "rank0" / "student")
    full = AutoModelForCausalLM.from_pretrained(output / "full-4x1" / "rank0" / "student")
    saved = load_file(output / "full-4x1" / "rank0" / "student" / "model.safetensors")
    # gathered, full-size weights, not one process's shards
    assert sum(t.numel() for t in saved.values()) == sum(p.numel() for p in full.parameters())
    AutoPeftModelForCausalLM.from_pretrained(output / "lora-2x2" / "rank0" / "student")
