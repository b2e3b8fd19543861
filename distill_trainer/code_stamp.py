"""Published tables that say which code made them, and the tables the current code no longer reproduces.

    text = stamp_markdown(text, record)          # a visible line + the record in an HTML comment
    data["code"] = stamp_json(record)            # the same record in a JSON result
    for path, why in stale_tables("docs/results"):   # `distill-trainer stale-results docs/results`
        print(path, why)

`record` is `code_digest.code_record(scripts)`: the digest of the scripts that wrote the table, of the code
they import and of the numeric packages' versions, the digest a comparison's method reuse keys on. A table
carries it inside its own file (a copied report.md keeps it), with each file's hash cut to 16 hex digits,
enough to say which files changed since. A table is stale when the current code, with the scripts it names,
gives another digest; a table with no record is listed too: nothing says which code made it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from distill_trainer.code_digest import code_changes, code_record

MARK = "code-record"
_COMMENT = re.compile(r"<!-- " + MARK + r" (\{.*?\}) -->", re.DOTALL)
SHORT = 16  # hex digits kept of each file's sha256
TABLE_SUFFIXES = (".md", ".json")  # what a results folder publishes as tables (.jsonl, plots: no)


def _short(files: dict) -> dict:
    return {name: digest[:SHORT] for name, digest in files.items()}


def stamp_json(record: dict) -> dict:
    """The part of `record` a table keeps: the digest, packages, and every file's shortened hash."""
    return {
        "digest": record["digest"],
        "entry": record["entry"],
        "packages": record["packages"],
        "scripts": _short(record["scripts"]),
        "library": _short(record["library"]),
    }


def stamp_line(record: dict) -> str:
    """One line for a reader: the digest and what it covers."""
    packages = ", ".join(
        f"{k} {v}" for k, v in record["packages"].items() if v and k in ("torch", "transformers")
    )
    scripts = ", ".join(record["entry"]) or "no script"
    return (
        f"Made by code `{record['digest'][:12]}` ({scripts} and the code they import; {packages}); "
        "`distill-trainer stale-results` lists the tables the current code would no longer reproduce."
    )


def stamp_markdown(text: str, record: dict) -> str:
    """`text` with the stamp line and the machine-readable record at its end (an earlier stamp replaced)."""
    text = _COMMENT.sub("", text).rstrip("\n")
    text = "\n".join(line for line in text.splitlines() if not line.startswith("Made by code `"))
    comment = f"<!-- {MARK} {json.dumps(stamp_json(record), sort_keys=True)} -->"
    return f"{text.rstrip()}\n\n{stamp_line(record)}\n{comment}\n"


def read_stamp(path) -> dict | None:
    """The record a published table holds, or None."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError:
            return None
        record = data.get("code") if isinstance(data, dict) else None
        return record if isinstance(record, dict) and "digest" in record else None
    match = _COMMENT.search(text)
    return json.loads(match.group(1)) if match else None


def staleness(record: dict | None) -> list[str]:
    """Why a table with this record would come out otherwise with the current code (empty: it would not)."""
    if record is None:
        return ["no code digest recorded"]
    now = code_record(record.get("entry", list(record.get("scripts", {}))))
    if now["digest"] == record["digest"]:
        return []
    return code_changes(record, stamp_json(now) | {"digest": now["digest"]})


def stale_tables(root) -> list[tuple[Path, list[str]]]:
    """Every table under `root` that the current code would not reproduce, with why."""
    found = []
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and path.suffix in TABLE_SUFFIXES:
            why = staleness(read_stamp(path))
            if why:
                found.append((path, why))
    return found
