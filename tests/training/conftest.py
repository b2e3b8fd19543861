"""The one-process reference runs that every multi-process test (DDP, ZeRO-3, FSDP2) compares with."""

import pytest
from distributed_launch import JOBS, STEPS, teacher_for


@pytest.fixture(scope="session")
def one_process_runs(tiny_dirs, tmp_path_factory):
    """{job name: (its report, its folder)}: each job in this process with the global batch of 8."""
    from distributed_run import run

    output = tmp_path_factory.mktemp("single")
    return {
        name: (
            run(tiny_dirs["student"], teacher_for(teacher, tiny_dirs), str(output / name), 8, 1, STEPS, mode),
            output / name,
        )
        for name, (mode, _, _, teacher) in JOBS.items()
    }
