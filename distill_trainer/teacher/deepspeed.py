"""A frozen teacher under DeepSpeed: partitioned like the student under ZeRO-3, a plain replica otherwise."""

from __future__ import annotations

import copy


def prepare_teacher_for_deepspeed(teacher, accelerator):
    """Wrap a frozen teacher in a DeepSpeed engine built from the run's own DeepSpeed config.

    Under ZeRO-3 the teacher's weights are then partitioned across ranks like the student's (a rank
    gathers a layer only while it runs it) instead of every rank holding the whole teacher. ZeRO-1/2
    partition gradients and optimizer state, which a frozen teacher has none of, so there the teacher
    runs at stage 0: a plain replica, in the run's precision.
    """
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for unused in ("optimizer", "scheduler"):  # nothing to optimize
        config.pop(unused, None)
    zero = config.setdefault("zero_optimization", {})
    # values left "auto" are sized by the Trainer for the student at train time; let DeepSpeed pick
    # its defaults for the teacher, and size the stage-3 buckets for the teacher when we know its width
    for key in [k for k, v in zero.items() if v == "auto"]:
        del zero[key]
    if zero.get("stage") == 3:
        hidden = getattr(getattr(teacher, "config", None), "hidden_size", None)
        if hidden:
            zero["reduce_bucket_size"] = hidden * hidden
            zero["stage3_param_persistence_threshold"] = 10 * hidden
            zero["stage3_prefetch_bucket_size"] = int(0.9 * hidden * hidden)
    else:
        zero["stage"] = 0
        zero.pop("offload_optimizer", None)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine
