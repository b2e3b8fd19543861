"""Run as a script: load a model as asked, in this fresh process, and print what the load needed (JSON).

python tests/models/load_memory_probe.py FOLDER DTYPE QUANTIZATION
"""

import json
import sys

from distill_trainer.memory.breakdown import model_bytes
from distill_trainer.memory.peak import MemoryTracker
from distill_trainer.models.loading import load_causal_lm


def warm_up(folder: str) -> None:
    """Import what a load imports (model classes, the int8 kernel), so the measure sees the load alone."""
    import torch

    from distill_trainer.models.cpu_quantized import Int8Linear
    from distill_trainer.models.streaming import empty_model

    empty_model(folder, torch.bfloat16)
    Int8Linear.from_float(torch.nn.Linear(64, 64))(torch.randn(2, 64, dtype=torch.bfloat16))


def main(folder: str, dtype: str, quantization: str) -> None:
    warm_up(folder)
    tracker = MemoryTracker(device="cpu", sampling_interval=0.001)
    before = tracker.as_dict()["peak"]["cpu_needed_mib"]
    with tracker.phase("load"):
        model = load_causal_lm(folder, dtype=dtype, quantization=quantization)
    phase = tracker.as_dict()["phases"]["load"]
    print(
        json.dumps(
            {
                "needed_mib": phase["cpu_needed_mib"] - before,
                "resident_mib": phase["cpu_peak_rss_mib"],
                "weights_mib": model_bytes(model) / 2**20,
                "kind": type(model.get_decoder().layers[0].mlp.up_proj).__name__,
            }
        )
    )
    tracker.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
