"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny Llama models, built offline in seconds."""

from __future__ import annotations

import os

import pytest

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
