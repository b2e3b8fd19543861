"""Checks of the whole project that are neither unit tests nor benchmarks: the fault campaign (the main job
killed at its write events, each rerun proved to end as the uninterrupted run: `python -m checks.faults`)
and the GPU check (one prepared script for a machine with a GPU: `python3 checks/gpu_check.py`)."""
