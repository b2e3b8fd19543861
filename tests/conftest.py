"""Shared fixtures: a tiny byte-level BPE tokenizer and tiny Llama models, built offline in seconds."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SENTENCES = [
    "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes",
    "A man is playing a guitar question: Nobody plays music. Yes or No? answer: No",
    "The doctor saw the lawyer question: The lawyer saw the doctor. True or False? answer: False",
    "The senator thanked the artist question: The artist was thanked. True or False? answer: True",
    "Two dogs run in the park ? Yes ? No ? True ? False",
    "premise hypothesis Question: Answer: entailment contradiction neutral",
]


def build_tokenizer(directory=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if directory is not None:
        fast.save_pretrained(directory)
    return fast


def build_model(vocab_size, seed=0, hidden_size=32, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=None, eos_token_id=0,
    )
    return LlamaForCausalLM(config).float()


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
