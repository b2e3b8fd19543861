"""DeepSpeed ZeRO and FSDP2 in CPU processes over gloo, where accelerate would not set them up itself.

    settings = deepspeed_on_cpu_processes(3)         # or: fsdp2_on_cpu_processes("recipes/.../fsdp.yaml")
    args = DistillationConfig(output_dir=..., **settings)   # FSDP2: also use_cpu=True
    # then build the student and the trainer as usual, in every process of a torchrun launch

On GPUs, `accelerate launch --config_file recipes/configs/accelerate/<config>.yaml` sets up everything.
On CPU processes it does not: accelerate picks no process-group backend for DeepSpeed, and it turns FSDP
on only for GPU-type process groups (accelerate/state.py), so an FSDP config on CPUs silently trains
with DDP instead. These functions set accelerate's state up over gloo before the Trainer is built, and
the Trainer then uses it as it is (`use_configured_state`): the strategy's own code paths run (DeepSpeed's
partitioned engine; accelerate's `fully_shard` of each decoder layer and its full-state-dict gathering),
as they do on GPUs. This is how the tests run both strategies on machines without GPUs.

A process may train several models one after the other: each call starts from a fresh accelerate
state, keeping the process group.
"""

from __future__ import annotations

import os

import torch


def _fresh_cpu_state(**partial_state) -> None:
    """Drops the accelerate state of a previous model (not the process group) and creates the process
    state over gloo if there is none yet."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    if not PartialState._shared_state:
        PartialState(backend="gloo", **partial_state)


def deepspeed_on_cpu_processes(stage: int) -> dict:
    """TrainingArguments for a DeepSpeed ZeRO-`stage` run; "auto" values are filled in by the Trainer.
    On a machine without GPUs, set DS_ACCELERATOR=cpu in the environment (DeepSpeed's CPU accelerator)."""
    config = {
        "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
    }
    if torch.cuda.is_available():
        return {"deepspeed": config}  # accelerate sets it up itself
    # DeepSpeed's process state is chosen from this variable, read when the state is created
    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        _fresh_cpu_state()
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
    return {"deepspeed": config, "accelerator_config": {"use_configured_state": True}}


def fsdp2_on_cpu_processes(accelerate_config: str) -> dict:
    """TrainingArguments for an FSDP2 run with the `fsdp_config` of an accelerate config file (such as
    recipes/configs/accelerate/fsdp.yaml); build the DistillationConfig with use_cpu=True too."""
    from accelerate import Accelerator, PartialState
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    _fresh_cpu_state(cpu=True)
    settings = load_config_from_file(accelerate_config).fsdp_config
    # the plugin's argument is the key without its "fsdp_" prefix, but for these two
    names = {"fsdp_offload_params": "cpu_offload", "fsdp_version": "fsdp_version"}
    plugin = FullyShardedDataParallelPlugin(
        **{names.get(key, key.removeprefix("fsdp_")): value for key, value in settings.items()}
    )
    Accelerator(cpu=True)  # creates the accelerator state that later Accelerators (the Trainer's) share
    # every later Accelerator copies the process state's type over its own: mark both
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState().fsdp_plugin = plugin
    return {"accelerator_config": {"use_configured_state": True}}
