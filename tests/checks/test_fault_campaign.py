"""The fault campaign, small: SIGKILL once in every phase of the job and Ctrl-C once; each run, rerun until
it completes, ends as the uninterrupted run does, with no partial file (CI's slow pass; the full campaign
is `python -m checks.faults`). And the parts it is made of, fast."""

import json

import pytest

from checks import fault_job, fault_outcome, faults


@pytest.mark.integration
@pytest.mark.slow
def test_a_small_campaign_ends_identical_with_no_partial_file(tmp_path):
    result = faults.campaign(tmp_path, per_phase=1, seed=0, interrupts=1, log=lambda line: None)
    records = result["records"]
    kills = [r for r in records if r["signal"] == "KILL"]
    assert {r["phase"] for r in kills} == set(faults.PHASES)  # every phase is struck
    assert all(r["first_exit"] == -9 for r in kills if "note" not in r), records
    failed = [r for r in records if not r["identical"] or r["partial_files"]]
    keys = ("phase", "signal", "at", "delay", "path", "differences", "partial_files", "error")
    assert not failed, [{k: r.get(k) for k in keys} for r in failed]
    interrupts = [r for r in records if r["signal"] == "INT"]
    assert len(interrupts) == 1 and all(faults.sigint_ok(r) for r in interrupts), interrupts
    assert all("resume with: " in r["lines"][0] for r in interrupts)


def test_phases_come_from_the_paths_written():
    assert faults.phase_of("cache/evaluations/.evaluation-1.json.7.partial") == "ICL evaluation"
    assert faults.phase_of("cache/teacher_outputs/t/state.json") == "teacher pass"
    assert faults.phase_of("cache/teacher_completions/c.json") == "completion cache"
    assert (
        faults.phase_of("results/tiny/cd_full/.checkpoint-staging/checkpoint-1/x") == "training checkpoints"
    )
    assert faults.phase_of("results/tiny/summary.json") == "summary"
    assert faults.phase_of("results/tiny/.summary.json.812.partial") == "summary"
    assert faults.phase_of("results/tiny/.accuracy.png.812.partial") == "summary"
    assert faults.phase_of("results/tiny/cd_full/.write-test.812.partial") == "set-up"
    assert faults.phase_of("results/tiny/cd_full/.metrics.json.812.partial") == "students and evaluation"
    assert faults.phase_of("results/latest") == "summary"
    assert faults.phase_of("results/tiny/cd_full/method.yaml") == "set-up"
    assert faults.phase_of("results/tiny/cd_full/model.safetensors") == "students and evaluation"


def test_kill_points_are_seeded_and_cover_every_phase():
    events = [
        {"index": i + 1, "seconds": i * 0.1, "event": "open", "path": path, "phase": faults.phase_of(path)}
        for i, path in enumerate(
            [
                "results/tiny/a/method.yaml",
                "cache/evaluations/e.json",
                "cache/teacher_outputs/t/state.json",
                "results/tiny/a/checkpoint-1/x",
                "results/tiny/a/metrics.json",
                "results/tiny/summary.json",
                "cache/teacher_completions/c.json",
            ]
        )
    ]
    points = faults.kill_points(events, 3, seed=5)
    assert points == faults.kill_points(events, 3, seed=5)
    # one event per phase: struck before it, then at a moment before it (2 points, not 3); the first
    # event of the run has no moment before it
    assert sorted(p["phase"] for p in points) == sorted([*faults.PHASES * 2][1:])
    assert all(0 <= p["delay"] <= 0.1 for p in points)
    assert len({(p["at"], p["delay"]) for p in points}) == len(points) == 13
    assert sum(p["delay"] > 0 for p in points) == 6


def test_the_outcome_leaves_out_what_is_measured_and_what_a_cache_reused():
    value = {
        "eval": {"accuracy": 0.5, "eval_seconds": 3.1},
        "peak_memory_mib": 12,
        "teacher_output_cache": {"train": {"path": "p", "reused": True, "when_built": {"seconds": 1}}},
        "findings": ["cd_full peaks at 0.51 GiB", "cd_full agrees with the teacher"],
    }
    assert fault_outcome._strip_measured(value) == {
        "eval": {"accuracy": 0.5},
        "teacher_output_cache": {"train": {"path": "p"}},
        "findings": ["cd_full agrees with the teacher"],
    }


def test_write_events_are_what_changes_files():
    assert fault_job.written_path("open", ("/a/b", "w", 0)) == "/a/b"
    assert fault_job.written_path("open", ("/a/b", "r", 0)) is None
    assert fault_job.written_path("open", ("/a/b", None, 1)) == "/a/b"  # os.open(O_WRONLY)
    assert fault_job.written_path("os.rename", ("/a/.b.1.partial", "/a/b", None, None)) == "/a/.b.1.partial"
    assert fault_job.written_path("os.listdir", ("/a",)) is None
    assert json.dumps(sorted(fault_job.WRITE_EVENTS))  # plain names
