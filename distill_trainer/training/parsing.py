"""Reading a recipe: the dataclasses (`config.py` and each recipe's own) from a YAML file with command-line
overrides, and the settings given explicitly.

    (student_args, config), given = parse_config([StudentArguments, DistillationConfig])
    # python recipe.py --config recipe.yaml --learning_rate 1e-4

`given` (a `GivenSettings`) holds the keys the recipe file and the command line set: the checks that ask
"did the user choose this?" take it as an argument; nothing is hung on the config objects.

Three layers, as in alignment-handbook: the accelerate config (hardware), the recipe YAML (experiment),
CLI flags (override). Unknown keys are errors, never silently ignored: a misspelled `temprature`
would otherwise train at the default temperature without anyone noticing.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import yaml
from transformers import HfArgumentParser, TrainingArguments

from distill_trainer.errors import UsageError


def _is_text_field(annotation) -> bool:
    # a string annotation, or the type itself once HfArgumentParser has resolved it
    if annotation is str:
        return True
    text = str(annotation).replace(" ", "").replace("typing.", "")
    return text in (
        "str",
        "list[str]",
        "List[str]",
        "Optional[str]",
        "Optional[list[str]]",
        "Optional[List[str]]",
        "str|None",
        "list[str]|None",
    )


def check_yaml_types(values: dict, dataclass_types) -> None:
    """YAML 1.1 reads unquoted yes/no/on/off/true/false as booleans: a text setting (a label word, a
    pattern name) given one would pass as the string 'True'. Reject it and say how to quote it."""
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    text_fields = {
        f.name
        for dc in dataclass_types
        for f in dataclasses.fields(dc)
        if f.init and f.name not in inherited and _is_text_field(f.type)
    }
    for key, value in values.items():
        items = value if isinstance(value, list) else [value]
        if key in text_fields and any(isinstance(item, bool) for item in items):
            example = "[' Yes', ' No']" if isinstance(value, list) else "'no'"
            raise UsageError(
                f"{key}: YAML read an unquoted yes/no/on/off/true/false as a boolean ({value!r}); quote "
                f"the text, e.g. {key}: {example}"
            )


def _field_names(dataclass_types) -> dict[str, type]:
    names = {}
    for dc in dataclass_types:
        for f in dataclasses.fields(dc):
            if f.init:
                names[f.name] = dc
    return names


def check_keys(keys, dataclass_types, where: str) -> None:
    """Reject unknown keys, suggesting the closest valid name."""
    known = _field_names(dataclass_types)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "remove it or check the spelling"
            raise UsageError(f"unknown key '{key}' in {where}: {hint}")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"recipe file {path} does not exist; pass --config with the path to a recipe YAML")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        where = " ".join(str(error).split())  # the parser's multi-line report, as one line
        raise UsageError(f"recipe file {path} is not valid YAML ({where}); fix the syntax") from None
    if not isinstance(data, dict):
        raise UsageError(f"recipe file {path} must be a mapping of key: value, got {type(data).__name__}")
    return data


def _to_argv(values: dict) -> list[str]:
    argv = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            argv += [f"--{key}", *map(str, value)]
        elif isinstance(value, dict):
            argv += [f"--{key}", json.dumps(value)]
        else:
            argv += [f"--{key}", str(value)]
    return argv


def _cli_keys(argv: list[str]) -> list[str]:
    # --help is argparse's own flag: it prints every setting with its help and exits
    return [key for a in argv if a.startswith("--") and (key := a[2:].split("=", 1)[0]) != "help"]


def _raise_value_error(message: str):
    # argparse words it "argument --k: invalid int value: '2.5'"; name the setting as a recipe file does
    match = re.match(r"argument --(\w+)(?:/--[\w-]+)?: (.*)", message)
    if match:
        message = f"{match.group(1)}: {match.group(2)}".rstrip(".")
    raise UsageError(f"{message}; fix the value in the recipe file or on the command line")


@dataclass(frozen=True)
class GivenSettings(Mapping):
    """The settings a run was given explicitly (recipe file, command line), with their values: a
    read-only mapping.

    Checks that depend on whether the user chose a value (a teacher setting given to a recipe that reads
    no teacher, an alpha given to pattern-based fine-tuning, a setting changed on resume) take it as an
    argument, and the resolved config records these keys as written. It is read-only: a recipe that sets a
    value itself makes a new one with `with_values`.
    """

    values: Mapping = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "values", MappingProxyType(dict(self.values)))

    def __getitem__(self, key):
        return self.values[key]

    def __iter__(self):
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)

    def with_values(self, **values) -> GivenSettings:
        return GivenSettings({**self.values, **values})

    @classmethod
    def from_defaults(cls, configs) -> GivenSettings:
        """For configs built in Python (no recipe file): the fields of the recipe's own dataclasses whose
        value differs from a default-built instance's count as given, so such a config meets the same checks
        as a recipe file. `TrainingArguments`' own fields are left out: its `__post_init__` derives several
        from others (and from the machine), so a difference there does not say what the caller set."""
        inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
        values = {}
        for obj in configs:
            defaults = _default_values(type(obj))
            for f in dataclasses.fields(obj):
                if not f.init or (isinstance(obj, TrainingArguments) and f.name in inherited):
                    continue
                if getattr(obj, f.name) != defaults.get(f.name, dataclasses.MISSING):
                    values[f.name] = getattr(obj, f.name)
        return cls(values)


def _default_values(dataclass_type) -> dict:
    """A default-built instance's values (after its own __post_init__, as a caller's instance is); the
    declared defaults for a class that needs some value to be built (a data file, say)."""
    try:
        built = dataclass_type()
    except UsageError:
        built = None
    values = {}
    for f in dataclasses.fields(dataclass_type):
        if built is not None:
            values[f.name] = getattr(built, f.name)
        elif f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def given_or_inferred(given: GivenSettings | None, configs) -> GivenSettings:
    """`given` as parsed from a recipe file, or, for configs built in Python (None), what differs from the
    defaults (`GivenSettings.from_defaults`)."""
    return given if given is not None else GivenSettings.from_defaults(configs)


class ParsedConfig(NamedTuple):
    """What `parse_config` returns: the dataclass instances, and the settings given explicitly."""

    configs: tuple
    given: GivenSettings


def parse_config(
    dataclass_types, argv: list[str] | None = None, config_path: str | None = None
) -> ParsedConfig:
    """Build the dataclasses from `--config FILE.yaml` plus `--key value` overrides.

    Returns `ParsedConfig(configs, given)`: the instances in the order of `dataclass_types`, and the merged
    key/value mapping the recipe file and the command line set (written out as the resolved config by
    recipes, read by the checks).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise UsageError("--config needs a path to a recipe YAML file")
        config_path = argv[i + 1]
        argv = argv[:i] + argv[i + 2 :]
    values = load_yaml(config_path) if config_path else {}
    check_keys(values, dataclass_types, f"recipe file {config_path}")
    check_yaml_types(values, dataclass_types)
    check_keys(_cli_keys(argv), dataclass_types, "the command line")
    parser = HfArgumentParser(dataclass_types)
    parser.error = _raise_value_error  # one line naming the setting, not argparse's usage block and exit
    try:
        parsed = parser.parse_args_into_dataclasses(
            args=_to_argv(values) + argv, return_remaining_strings=False
        )
    except UsageError:
        raise
    except ValueError as error:  # TrainingArguments' own checks of a value or a combination of values
        message = " ".join(str(error).split()).rstrip(".")
        if message.startswith("Some specified arguments are not used"):  # a list given for a one-value key
            message = f"extra values {message.split(': ', 1)[-1]} for a setting that takes one value"
        raise UsageError(f"{message}; fix that setting in the recipe file or on the command line") from None
    given = dict(values)
    for key in _cli_keys(argv):
        for obj in parsed:
            if hasattr(obj, key):
                given[key] = getattr(obj, key)
    return ParsedConfig(tuple(parsed), GivenSettings(given))
