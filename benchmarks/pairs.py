"""The benchmarks' models and data: the (teacher, student) pairs speed.py times, the teacher
teacher_pass.py runs, and the MNLI rows and two-view batches they run on. Random-init models take the
published shapes; the embedded checkpoints load when their packages are installed.

    teacher, student, tokenizer, description = model_pair("opt-1.3b", shared)
    demonstrations, rows, pattern, data_dir = load_rows(16, 64)
"""

from __future__ import annotations

import copy
import random
from pathlib import Path

import torch

from distill_trainer import TwoViewCollator, build_views
from distill_trainer.errors import UsageError
from distill_trainer.memory.estimate import architecture_config
from distill_trainer.views.text import SEPARATOR

REPO = Path(__file__).resolve().parent.parent

PATTERN = "gpt3"
LABEL_WORDS = (" Yes", " No")
# OPT-350M's published shape (not shipped in distill_trainer/memory/architectures)
OPT_350M = dict(
    vocab_size=50272,
    hidden_size=1024,
    num_hidden_layers=24,
    ffn_dim=4096,
    num_attention_heads=16,
    word_embed_proj_dim=512,
    do_layer_norm_before=False,
    max_position_embeddings=2048,
    dropout=0.0,
    pad_token_id=1,
    bos_token_id=2,
    eos_token_id=2,
)
# SmolLM2-135M's published shape, for a random-init stand-in when the embedded model is not installed
SMOLLM2_135M = dict(
    vocab_size=49152,
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    max_position_embeddings=8192,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)


# ---------------------------------------------------------------------------- data


def load_rows(num_demonstrations: int, num_queries: int, seed: int = 0):
    """Demonstrations (rendered) and query rows: MNLI from the local data dir, else the test fixture slice."""
    from distill_trainer.nli.demonstrations import (
        balanced_subset,
        render_demonstrations,
        row_key,
        sample_demonstrations,
    )
    from distill_trainer.nli.patterns import get_pattern
    from distill_trainer.nli.tasks import get_task, load_split, resolve_data_dir

    task, pattern = get_task("mnli"), get_pattern(PATTERN, 2)
    data_dir = resolve_data_dir("auto") or REPO / "tests" / "data"
    pool = load_split(task, task.train_split, data_source="local", data_dir=str(data_dir))
    demos = sample_demonstrations(pool, 2, num_demonstrations, seed)
    rest = list(balanced_subset(pool, None, 2, seed + 1, exclude_keys={row_key(r) for r in demos}))
    random.Random(seed).shuffle(rest)
    # the small fixture slice may hold fewer rows than asked: repeating them times the same work
    queries = [rest[i % len(rest)] for i in range(num_queries)]
    return render_demonstrations(demos, pattern), queries, pattern, data_dir


def build_features(tokenizer, pattern, demonstrations: list[str], rows, teacher_tokenizer=None) -> list[dict]:
    """Two views per row; with a `teacher_tokenizer` (a teacher with another vocabulary) the teacher's
    view is tokenized with it, as `run_data.build_view_dataset` does."""
    block = SEPARATOR.join(demonstrations)
    features = []
    for row in rows:
        query, answer = pattern.query(row), pattern.answer(row["label"])
        views = build_views(tokenizer, query, answer, block)
        if teacher_tokenizer is not None:
            teacher = build_views(teacher_tokenizer, query, answer, block)
            for key in ("teacher_input_ids", "teacher_answer_positions", "teacher_prefix_length"):
                views[key] = teacher[key]
        features.append(views)
    return features


def batches(features, batch_size, pad_token_id, count, device="cpu"):
    """`count` left-padded batches cycling through the features (left padding lines the answers up at the end,
    which the naive full-sequence variant needs to slice teacher and student logits alike), on `device`."""
    collate = TwoViewCollator(pad_token_id, padding_side="left")
    out = []
    for i in range(count):
        start = (i * batch_size) % len(features)
        chunk = (features + features)[start : start + batch_size]
        out.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate(chunk).items()})
    return out


# ---------------------------------------------------------------------------- models


def fallback_tokenizer():
    """A byte-level BPE trained on the fixture text, for when no real tokenizer is available offline."""
    from distill_trainer.testing import build_tokenizer

    return build_tokenizer()


def data_tokenizer(vocab_size: int = 8192):
    """A byte-level BPE trained on the MNLI pool's rendered rows: token counts near a real tokenizer's, for
    random-init OPT pairs on a machine without one (the fixture BPE's 400 tokens split words into pieces)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    demonstrations, rows, pattern, _ = load_rows(16, 512)
    texts = demonstrations + [pattern.query(row) + pattern.answer(row["label"]) for row in rows]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def embedded_smollm2():
    """(directory, tokenizer) of the embedded SmolLM2-135M, or None when its package is not installed."""
    try:
        from distill_trainer.models.loading import load_tokenizer, resolve_model_path

        path = resolve_model_path("embedded:smollm2-135m")
        return path, load_tokenizer(path)
    except (ImportError, OSError, UsageError) as error:  # the package (or the embedded loader) is missing
        print(
            f"[speed] embedded SmolLM2-135M unavailable ({type(error).__name__}: {error}); using random init"
        )
        return None


def random_model(kind: str, seed: int, vocab_size: int | None = None):
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, OPTConfig

    torch.manual_seed(seed)
    if kind in ("opt-125m", "opt-1.3b"):
        config = architecture_config(kind)
        config.dropout = 0.0  # timing only; and a teacher runs in eval mode anyway
        # fp32 like every other model here: the published config says float16, which CPUs run slowly
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if kind == "opt-350m":
        return AutoModelForCausalLM.from_config(OPTConfig(**OPT_350M), dtype=torch.float32)
    if kind == "smollm2-135m":
        return LlamaForCausalLM(LlamaConfig(**SMOLLM2_135M))
    if kind == "tiny":
        return LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab_size,
                hidden_size=64,
                intermediate_size=128,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=4096,
                pad_token_id=0,
            )
        )
    raise ValueError(kind)


# the real pairs: (teacher, student) embedded aliases
REAL_PAIRS = {
    "qwen-1.5b-0.5b": ("embedded:qwen2.5-coder-1.5b", "embedded:qwen2.5-coder-0.5b"),
    "qwen-1.5b-smollm2": ("embedded:qwen2.5-coder-1.5b", "embedded:smollm2-135m"),
}
PAIR_NAMES = "smollm2-135m, opt-125m, opt-350m, opt-1.3b, tiny, tiny-two-tokenizers, " + ", ".join(REAL_PAIRS)


def pair_with_tokenizers(name: str):
    """(teacher, student, student tokenizer, teacher tokenizer or None when the vocabularies are equal,
    description) of a pair that may tokenize differently; None for the other pairs (see `model_pair`)."""
    if name in REAL_PAIRS:
        return real_pair(name)
    if name == "tiny-two-tokenizers":  # the cross-tokenizer path in seconds (used by the tests)
        tokenizer, teacher_tokenizer = fallback_tokenizer(), data_tokenizer(1024)
        return (
            random_model("tiny", 1, len(teacher_tokenizer)),
            random_model("tiny", 0, len(tokenizer)),
            tokenizer,
            teacher_tokenizer,
            "tiny Llamas (random init) with two tokenizers, label-word KL",
        )
    return None


def real_pair(name: str):
    """(teacher, student, student tokenizer, teacher tokenizer or None when the vocabularies are equal,
    description) of a pair of embedded checkpoints, fp32."""
    from distill_trainer.models.loading import load_causal_lm, load_tokenizer

    teacher_name, student_name = REAL_PAIRS[name]
    tokenizer, teacher_tokenizer = load_tokenizer(student_name), load_tokenizer(teacher_name)
    same = teacher_tokenizer.get_vocab() == tokenizer.get_vocab()
    kind = "one tokenizer, full-vocabulary KL" if same else "two tokenizers, label-word KL"
    description = (
        f"{teacher_name.split(':')[1]} teacher -> {student_name.split(':')[1]} student (embedded, real "
        f"weights; {kind})"
    )
    return (
        load_causal_lm(teacher_name),
        load_causal_lm(student_name),
        tokenizer,
        None if same else teacher_tokenizer,
        description,
    )


def model_pair(name: str, shared: dict):
    """(teacher, student, tokenizer, description) for one benchmark row group."""
    from transformers import AutoModelForCausalLM

    if name == "tiny":
        tokenizer = fallback_tokenizer()
        return (
            random_model("tiny", 1, len(tokenizer)),
            random_model("tiny", 0, len(tokenizer)),
            tokenizer,
            "tiny Llama (random init, 2 layers x 64)",
        )
    if "embedded" not in shared:
        shared["embedded"] = embedded_smollm2()
    embedded = shared["embedded"]
    tokenizer = embedded[1] if embedded else fallback_tokenizer()
    tokenizer_note = "SmolLM2 tokenizer" if embedded else "fixture BPE tokenizer"
    if name == "smollm2-135m":
        if embedded:
            teacher = AutoModelForCausalLM.from_pretrained(embedded[0], dtype=torch.float32)
            return (
                teacher,
                copy.deepcopy(teacher),
                tokenizer,
                "SmolLM2-135M-Instruct (embedded, real weights); teacher = student",
            )
        return (
            random_model("smollm2-135m", 1),
            random_model("smollm2-135m", 0),
            tokenizer,
            f"SmolLM2-135M architecture (random init; {tokenizer_note})",
        )
    if name == "opt-1.3b":  # the paper's pair
        if not embedded:
            tokenizer, tokenizer_note = data_tokenizer(), "BPE trained on the query pool"
        return (
            random_model("opt-1.3b", 1),
            random_model("opt-125m", 0),
            tokenizer,
            f"OPT-1.3B teacher -> OPT-125M student, the paper's sizes (random init; {tokenizer_note})",
        )
    if name == "opt-125m":
        return (
            random_model("opt-125m", 1),
            random_model("opt-125m", 0),
            tokenizer,
            f"OPT-125M teacher and student (random init; {tokenizer_note})",
        )
    if name == "opt-350m":
        return (
            random_model("opt-350m", 1),
            random_model("opt-125m", 0),
            tokenizer,
            f"OPT-350M teacher -> OPT-125M student (random init; {tokenizer_note})",
        )
    raise SystemExit(f"unknown model pair {name!r}; choose from {PAIR_NAMES}")


def load_teacher(name: str, quick: bool):
    if quick:
        from distill_trainer.testing import build_model, build_tokenizer

        tokenizer = build_tokenizer()
        return build_model(len(tokenizer), seed=0, hidden_size=64), tokenizer, "tiny Llama (random init)"
    from distill_trainer.models.loading import load_causal_lm, load_tokenizer

    return load_causal_lm(name), load_tokenizer(name), name
