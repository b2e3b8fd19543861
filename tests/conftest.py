"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny Llama models, built offline in seconds."""

from __future__ import annotations

import os

import pytest

from distill_trainer.models import embedded
from distill_trainer.models.embedded import EmbeddedModel
from distill_trainer.run import interrupt
from distill_trainer.testing import build_model, build_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory, tokenizer):
    """A saved tiny student and a (differently seeded, wider) tiny teacher, loadable by path."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, seed, width in (("student", 0, 32), ("teacher", 1, 48)):
        directory = root / name
        build_model(len(tokenizer), seed=seed, hidden_size=width).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        dirs[name] = str(directory)
    return dirs


@pytest.fixture
def student(tokenizer):
    return build_model(len(tokenizer), seed=0)


@pytest.fixture
def teacher(tokenizer):
    return build_model(len(tokenizer), seed=1, hidden_size=48)


@pytest.fixture
def fake_alias(tmp_path, monkeypatch, tokenizer):
    """`embedded:fake`: a two-chunk 'GGUF' in an importable package; dequantizing gives the tiny model."""
    package = tmp_path / "site" / "fake_gguf_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('must never be imported')\n")
    (package / "model.part0").write_bytes(b"GGUF" + b"\0" * 60)
    (package / "model.part1").write_bytes(b"\1" * 64)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(
        embedded.EMBEDDED_MODELS,
        "fake",
        EmbeddedModel(
            description="a fake",
            distribution="fake-gguf-pkg",
            install="pip install fake-gguf-pkg",
            chunks=(("fake_gguf_pkg", "model.part0"), ("fake_gguf_pkg", "model.part1")),
            gguf_name="fake.gguf",
            expected_seconds=1,
        ),
    )
    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_dequantize(gguf_path):
        calls.append(gguf_path.read_bytes())
        return build_model(len(tokenizer)), tokenizer

    monkeypatch.setattr(embedded, "_dequantize", fake_dequantize)
    return {"package": package, "cache": tmp_path / "cache" / "embedded", "calls": calls}


@pytest.fixture(autouse=True)
def _tests_go_on_after_a_handled_ctrl_c():
    """A test that catches `interruptible`'s exit goes on, and so does the session: pytest's exit status
    must not become the 130 that `quiet_start` gives a program stopped by Ctrl-C (its exit handler is
    registered here too, by the recipes the tests import)."""
    yield
    interrupt.clear_ctrl_c()
