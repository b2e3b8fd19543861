"""Tiny models for tests and benchmarks, built offline in seconds: a byte-level BPE tokenizer trained on a
few NLI-shaped sentences and small random Llama models. Not used by the library itself; it lives in the
package so that tests and benchmarks import it the same way, without path manipulation (needs the
`tokenizers` package, a dev extra).
"""

from __future__ import annotations

import torch

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


def build_metaspace_tokenizer(directory=None, vocab_size=300):
    """A tokenizer of another family than `build_tokenizer`'s, on the same sentences: SentencePiece-style
    ("▁" marks a word start, unknown characters become <unk>) with fewer merges, so it splits the same
    text differently and spells its tokens in another convention (a teacher with another tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "</s>"])
    tok.train_from_iterator(SENTENCES * 50, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    if directory is not None:
        fast.save_pretrained(directory)
    return fast


def build_model(vocab_size, seed=0, hidden_size=32, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=0,
    )
    return LlamaForCausalLM(config).float()


# ChatML, as SmolLM2's and Qwen's templates write it, with a default system message like theirs
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a tiny model.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_chat_tokenizer(directory=None, tokenizer=None):
    """`tokenizer` (default: `build_tokenizer()`) with ChatML's two special tokens and chat template (ids
    400 and 401 for the default)."""
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML_TEMPLATE
    if directory is not None:
        tokenizer.save_pretrained(directory)
    return tokenizer
