"""Tiny chat models on disk, shared by the reply recipes' tests: a student and a wider teacher that read
the same chat tokenizer, and a teacher that reads another one."""

import pytest

from distill_trainer.testing import build_chat_tokenizer, build_metaspace_tokenizer, build_model


@pytest.fixture(scope="session")
def chat_dirs(tmp_path_factory):
    tokenizer = build_chat_tokenizer()
    root = tmp_path_factory.mktemp("chat-models")
    dirs = {}
    for name, seed, width in (("student", 0, 32), ("teacher", 1, 48)):
        build_model(len(tokenizer), seed=seed, hidden_size=width).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
        dirs[name] = str(root / name)
    return dirs


@pytest.fixture(scope="session")
def other_teacher(tmp_path_factory):
    """A tiny chat teacher on disk whose tokenizer splits text differently from the student's."""
    tokenizer = build_chat_tokenizer(tokenizer=build_metaspace_tokenizer())
    directory = tmp_path_factory.mktemp("other-teacher")
    build_model(len(tokenizer), seed=1, hidden_size=48).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)
