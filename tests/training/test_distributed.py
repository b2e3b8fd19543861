"""Data-parallel training really runs in 2 CPU processes (gloo) and equals a 1-process run with the same
global batch: same losses, same weights; the teacher stays frozen in every process; only rank 0 writes.

One launch of `tests/training/distributed_run.py` under torchrun trains two students one after the other:
a full student (2 processes x 4 examples, a separate teacher) and a LoRA student (2 processes x 2
examples x 2 accumulation steps, teacher="self"). The 1-process references run in this process.
"""

from pathlib import Path

import pytest
import torch
from distributed_launch import JOBS, STEPS, WEIGHTS, launch, max_difference, reports
from safetensors.torch import load_file

from distill_trainer.errors import UsageError
from distill_trainer.report.hub import check_student_folder

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)


@pytest.fixture(scope="module")
def two_process_run(tiny_dirs, tmp_path_factory):
    output = tmp_path_factory.mktemp("ddp")
    launch(tiny_dirs, output, JOBS)
    return output


@pytest.mark.integration
def test_two_cpu_processes_really_train_with_ddp(two_process_run):
    for name in JOBS:
        both = reports(two_process_run, name)
        assert [r["rank"] for r in both] == [0, 1]
        for report in both:
            assert report["world_size"] == 2
            assert report["distributed_type"] == "DistributedType.MULTI_CPU"
            assert report["student_wrapper"] == "DistributedDataParallel"


@pytest.mark.integration
@pytest.mark.parametrize("name", list(JOBS))
def test_two_processes_equal_one_process_with_the_same_global_batch(
    two_process_run, one_process_runs, tiny_dirs, name
):
    single, single_dir = one_process_runs[name]
    assert single["world_size"] == 1
    for report in reports(two_process_run, name):
        assert len(report["loss"]) == STEPS
        assert max(abs(a - b) for a, b in zip(report["loss"], single["loss"])) <= 1e-4
        if JOBS[name][2] == 1:  # the logged terms are per micro-batch, so comparable without accumulation
            for term in ("kd_loss", "ce_loss"):
                assert max(abs(a - b) for a, b in zip(report[term], single[term])) <= 1e-4
    weights = WEIGHTS[JOBS[name][0]]
    two = load_file(two_process_run / name / "rank0" / "student" / weights)
    one = load_file(single_dir / "rank0" / "student" / weights)
    assert max_difference(two, one) <= 1e-5
    if weights == "model.safetensors":
        start = load_file(Path(tiny_dirs["student"]) / weights)
        assert max_difference(one, start) > 1e-2  # training moved the weights


@pytest.mark.integration
def test_teacher_is_frozen_in_every_process_and_outside_the_optimizer(two_process_run):
    for report in reports(two_process_run, "full-4x1"):
        assert report["teacher"] == "LlamaForCausalLM"  # a plain module: never wrapped in DDP
        assert report["teacher_training"] is False
        assert report["teacher_requires_grad"] is False
        assert report["teacher_in_optimizer"] is False
        assert report["teacher_devices"] == ["cpu"]


@pytest.mark.integration
def test_only_rank_zero_writes_the_student(two_process_run):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    for name in JOBS:
        rank1 = two_process_run / name / "rank1"
        assert not rank1.exists() or not any(p.is_file() for p in rank1.rglob("*"))
        folder = check_student_folder(two_process_run / name / "rank0" / "student")
        assert (folder / "recipe.yaml").is_file()
    AutoModelForCausalLM.from_pretrained(two_process_run / "full-4x1" / "rank0" / "student")
    AutoPeftModelForCausalLM.from_pretrained(two_process_run / "lora-2x2" / "rank0" / "student")


def test_launched_processes_that_never_joined_are_refused(tiny_dirs, tmp_path, monkeypatch):
    """What a multi-GPU accelerate config does on a machine without GPUs unless use_cpu is set: N processes
    that each think they are alone, and would each train on all the data into the same output_dir."""
    from distributed_run import run

    monkeypatch.setenv("WORLD_SIZE", "2")  # as the launcher sets it; no process group is ever formed
    monkeypatch.setattr("distributed_run.DistillationConfig", _without_cpu_flag())
    with pytest.raises(UsageError, match="did not join one process group.*use_cpu: true"):
        run(tiny_dirs["student"], tiny_dirs["teacher"], str(tmp_path), 4, 1, STEPS)


def _without_cpu_flag():
    from distill_trainer import DistillationConfig

    def make(**values):
        values["use_cpu"] = False  # the recipe left it unset
        return DistillationConfig(**values)

    return make


@pytest.mark.parametrize("name", ["ddp", "deepspeed_zero2", "deepspeed_zero3", "fsdp"])
def test_accelerate_configs_load_and_start_with_their_launch_command(name):
    from accelerate.commands.config.config_args import load_config_from_file

    path = Path(__file__).parents[2] / "recipes" / "configs" / "accelerate" / f"{name}.yaml"
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith(f"# accelerate launch --config_file recipes/configs/accelerate/{name}.yaml ")
    config = load_config_from_file(str(path))  # accelerate's own parser: unknown keys are errors
    expected = {
        "ddp": "MULTI_GPU",
        "deepspeed_zero2": "DEEPSPEED",
        "deepspeed_zero3": "DEEPSPEED",
        "fsdp": "FSDP",
    }
    assert config.distributed_type.value == expected[name] and config.num_processes > 1
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
    if name == "deepspeed_zero3":  # saved as ordinary weights, loadable with from_pretrained
        assert (
            config.deepspeed_config["zero3_save_16bit_model"] and config.deepspeed_config["zero3_init_flag"]
        )
    if name == "fsdp":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_every_accelerate_config_says_how_ci_runs_it():
    """The second line of each config names the CI command that runs its strategy (or why none does);
    a test file it names exists, and a strategy it selects with -k is one test_sharded.py runs."""
    from test_sharded import STRATEGIES

    configs = sorted((Path(__file__).parents[2] / "recipes" / "configs" / "accelerate").glob("*.yaml"))
    assert len(configs) == 6
    for path in configs:
        line = path.read_text().splitlines()[1]
        assert line.startswith("# CI: "), path.name
        for word in line.split():
            if word.startswith("tests/"):
                assert (Path(__file__).parents[2] / word).is_file(), word
        if " -k " in line:
            assert line.split(" -k ")[1].split()[0] in STRATEGIES
