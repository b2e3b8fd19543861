"""The package's roof (`distill_trainer/__init__.py`): its public names, and that importing them changes no
global state of the program that imports them (logging, warnings)."""

import json
import subprocess
import sys

import distill_trainer

# the third-party packages the library's modules import: imported before the snapshot, so that what they
# themselves set up when imported is not counted as the library's doing
THIRD_PARTY = ("torch", "transformers", "peft", "datasets", "accelerate", "huggingface_hub", "yaml")

SNAPSHOT = r"""
import logging, warnings

def logger_state(logger):
    return {
        "level": logger.level,
        "handlers": [repr(h) for h in logger.handlers],
        "filters": [repr(f) for f in logger.filters],
        "disabled": logger.disabled,
        "propagate": logger.propagate,
    }

def snapshot():
    loggers = {"": logger_state(logging.getLogger())}
    for name, logger in sorted(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            loggers[name] = logger_state(logger)
    return {"loggers": loggers, "warnings": [repr(f) for f in warnings.filters],
            "disable": logging.root.manager.disable}
"""


def run_and_compare(before_imports: str, statements: str) -> dict:
    """Snapshots of the logging and warnings state before and after `statements`, in a fresh interpreter."""
    code = (
        SNAPSHOT
        + before_imports
        + "\nimport json\nbefore = snapshot()\n"
        + statements
        + "\nprint(json.dumps({'before': before, 'after': snapshot()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def changes(states: dict) -> list[str]:
    before, after = states["before"], states["after"]
    found = []
    if before["warnings"] != after["warnings"]:
        found.append(f"warnings.filters: {before['warnings']} -> {after['warnings']}")
    if before["disable"] != after["disable"]:
        found.append("logging.disable was called")
    for name, state in after["loggers"].items():
        quiet = {"level": 0, "handlers": [], "filters": [], "disabled": False, "propagate": True}
        was = before["loggers"].get(name, quiet)  # one created since: as logging creates it, unconfigured
        if was != state:
            found.append(f"logger {name or 'root'}: {was} -> {state}")
    return found


def test_importing_the_package_changes_no_logging_or_warnings_state():
    states = run_and_compare("", "import distill_trainer")
    assert not changes(states), changes(states)


def test_importing_every_public_name_changes_no_logging_or_warnings_state():
    third_party = "\n".join(f"import {name}" for name in THIRD_PARTY)
    everything = "import distill_trainer as d\nfor name in d.__all__:\n    getattr(d, name)"
    found = changes(run_and_compare(third_party, everything))
    assert not found, "importing the public names changed global state: " + "; ".join(found)


def test_the_quiet_logs_are_a_change_the_comparison_sees():
    # the comparison above would miss nothing: the filters a command installs show as changes
    third_party = "\n".join(f"import {name}" for name in THIRD_PARTY)
    states = run_and_compare(
        third_party, "from distill_trainer.quiet_logs import install_quiet_logs\ninstall_quiet_logs()"
    )
    found = changes(states)
    assert any("warnings.filters" in line for line in found)
    assert any(line.startswith("logger kernels._internals.hf_hub") for line in found)


def test_teacher_is_exported():
    from distill_trainer.teacher.teacher import Teacher

    assert distill_trainer.Teacher is Teacher
    assert "Teacher" in distill_trainer.__all__
