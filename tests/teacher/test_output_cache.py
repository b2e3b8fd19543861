"""Teacher prefix KV cache, teacher output cache, and the sparse (top-k) distillation loss."""

import copy
import sys

import helpers
import pytest
import torch
from datasets import Dataset

from distill_trainer import (
    ContextDistillationTrainer,
    DistillationConfig,
    TwoViewCollator,
    build_views,
    code_digest,
)
from distill_trainer.errors import UsageError
from distill_trainer.models.answer_logits import answer_logits
from distill_trainer.models.loading import load_causal_lm, prepare_student
from distill_trainer.teacher.output_cache import load_or_build_teacher_outputs, teacher_output_cache_key
from distill_trainer.teacher.prefix_cache import PrefixCachedModel
from distill_trainer.training.losses import LOSS_KINDS, distillation_loss, sparse_distillation_loss

DEMOS = (
    "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes\n\n"
    "A man is playing a guitar question: Nobody plays music. Yes or No? answer: No"
)
OTHER_DEMOS = "Two dogs run in the park question: Dogs run. Yes or No? answer: Yes"
ROWS = [
    ("The doctor saw the lawyer question: The lawyer saw the doctor. Yes or No? answer:", " Yes"),
    ("Two dogs ? answer:", " No"),
    ("The senator thanked the artist question: Nobody was thanked. Yes or No? answer:", " No question: Yes"),
    ("A cat is sitting question: The mat is red. Yes or No? answer:", " Yes"),
]
GPT3 = "{premise} question: {hypothesis} Yes or No? answer:"
LOSSES, PREFIX_CACHE = "distill_trainer/training/losses.py", "distill_trainer/teacher/prefix_cache.py"
MINIMAL = "{premise} {hypothesis} ?"


def views(tokenizer, demos=DEMOS, rows=ROWS):
    return [build_views(tokenizer, q, a, demos) for q, a in rows]


def tiny_opt(vocab_size):
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(2)  # OPT: learned positions with an offset, unlike Llama's rotary ones
    config = OPTConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        word_embed_proj_dim=32,
        max_position_embeddings=512,
        pad_token_id=0,
        dropout=0.0,
    )
    return OPTForCausalLM(config).eval()


def cached_vs_full(model, batch):
    full = answer_logits(
        model, batch["teacher_input_ids"], batch["teacher_attention_mask"], batch["teacher_answer_positions"]
    ).detach()
    cached = PrefixCachedModel(model, batch["teacher_prefix_ids"])
    got = cached.answer_logits(
        batch["teacher_suffix_input_ids"],
        batch["teacher_suffix_attention_mask"],
        batch["teacher_suffix_answer_positions"],
    )
    return got, full, cached


# ---- prefix KV cache ----


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("architecture", ["llama", "opt"])
def test_prefix_cached_logits_equal_full_teacher(tokenizer, teacher, side, architecture):
    model = teacher.eval() if architecture == "llama" else tiny_opt(len(tokenizer))
    batch = TwoViewCollator(tokenizer.pad_token_id, padding_side=side)(views(tokenizer))
    assert batch["teacher_suffix_attention_mask"].sum(1).unique().numel() > 1  # the batch really is padded
    got, full, cached = cached_vs_full(model, batch)
    mask = batch["answer_mask"]
    assert got.shape == full.shape
    assert (got - full)[mask].abs().max() <= 1e-4
    # the stored prefix must survive a forward: a second batch (other rows, other size) is still exact
    before = [layer.keys.clone() for layer in cached._prefix_cache.layers]
    small = TwoViewCollator(tokenizer.pad_token_id, padding_side=side)(views(tokenizer)[2:])
    again = cached.answer_logits(
        small["teacher_suffix_input_ids"],
        small["teacher_suffix_attention_mask"],
        small["teacher_suffix_answer_positions"],
    )
    assert all(torch.equal(b, layer.keys) for b, layer in zip(before, cached._prefix_cache.layers))
    assert (again - full[2:])[mask[2:]].abs().max() <= 1e-4


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("architecture", ["llama", "opt"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("pack_tokens", [512, 20])  # 20: one query per packed row or two, several rows
def test_packed_suffixes_give_the_padded_logits(
    tokenizer, teacher, side, architecture, attention, pack_tokens, monkeypatch
):
    from distill_trainer.teacher import prefix_cache

    monkeypatch.setattr(prefix_cache, "PACK_TOKENS", pack_tokens)
    model = teacher.eval() if architecture == "llama" else tiny_opt(len(tokenizer))
    model.set_attn_implementation(attention)
    batch = TwoViewCollator(tokenizer.pad_token_id, padding_side=side)(views(tokenizer))
    _, full, cached = cached_vs_full(model, batch)
    assert cached.can_pack()
    packed = cached.answer_logits(
        batch["teacher_suffix_input_ids"],
        batch["teacher_suffix_attention_mask"],
        batch["teacher_suffix_answer_positions"],
        pack=True,
    )
    mask = batch["answer_mask"]
    assert packed.shape == full.shape
    assert (packed - full)[mask].abs().max() <= 1e-4


def test_prefix_cached_logits_with_8bit_teacher(tokenizer, tiny_dirs):
    pytest.importorskip("bitsandbytes")
    from distill_trainer.models.cpu_quantized import Int8Linear

    model = load_causal_lm(tiny_dirs["teacher"], quantization="8bit")
    # on a GPU bitsandbytes quantizes; on the CPU the library's int8 layers (per-token activation scales, so
    # a token's logits do not depend on the other tokens of its forward)
    assert (
        model.is_loaded_in_8bit
        if torch.cuda.is_available()
        else isinstance(model.model.layers[0].mlp.up_proj, Int8Linear)
    )
    batch = TwoViewCollator(tokenizer.pad_token_id)(views(tokenizer))
    got, full, _ = cached_vs_full(model, batch)
    assert (got - full)[batch["answer_mask"]].abs().max() <= 1e-4


def test_prefix_cache_scores_a_query_at_its_last_token(tokenizer, teacher):
    """The ICL-evaluation use: suffix = query only, one position (the query's last token) per row."""
    feats = views(tokenizer)
    prefix_length = feats[0]["teacher_prefix_length"]
    prefix = feats[0]["teacher_input_ids"][:prefix_length]
    queries = [f["teacher_input_ids"][prefix_length : f["teacher_answer_positions"][0] + 1] for f in feats]
    width = max(map(len, queries))
    ids = torch.zeros(len(queries), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, q in enumerate(queries):  # left padding, as an evaluation loop would do
        ids[row, width - len(q) :], mask[row, width - len(q) :] = torch.tensor(q), 1
    got = PrefixCachedModel(teacher.eval(), prefix).answer_logits(
        ids, mask, torch.full((len(queries), 1), width - 1)
    )
    for row, q in enumerate(queries):
        full = teacher(torch.tensor([prefix + q])).logits[0, -1]
        assert (got[row, 0] - full).abs().max() <= 1e-4


def test_icl_scoring_with_and_without_the_prefix_cache_agree(tokenizer, teacher):
    from distill_trainer.nli.evaluation import score_label_words

    queries = [q for q, _ in ROWS]
    kwargs = dict(demonstrations=DEMOS, batch_size=3, progress=False)
    for words in ([" Yes", " No"], [" Yes", " No question: Yes"]):  # one-token and multi-token label words
        cached = score_label_words(teacher, tokenizer, queries, words, prefix_cache=True, **kwargs)
        full = score_label_words(teacher, tokenizer, queries, words, prefix_cache=False, **kwargs)
        assert (cached.logprobs - full.logprobs).abs().max() <= 1e-4
        assert torch.equal(cached.vocab_argmax, full.vocab_argmax)


def test_collator_shares_the_prefix_only_when_the_demonstrations_are_shared(tokenizer):
    collate = TwoViewCollator(tokenizer.pad_token_id)
    batch = collate(views(tokenizer))
    prefix = batch["teacher_prefix_ids"]
    assert (prefix == prefix[:1]).all() and prefix.shape[1] == views(tokenizer)[0]["teacher_prefix_length"]
    for row, f in enumerate(views(tokenizer)):
        n = int(batch["teacher_suffix_attention_mask"][row].sum())
        assert (
            batch["teacher_suffix_input_ids"][row, :n].tolist() == f["teacher_input_ids"][prefix.shape[1] :]
        )
    mixed = collate(views(tokenizer)[:2] + views(tokenizer, demos=OTHER_DEMOS)[2:])
    assert "teacher_prefix_ids" not in mixed and "teacher_input_ids" in mixed
    with pytest.raises(UsageError, match="rows of teacher_prefix_ids differ"):
        PrefixCachedModel(None, torch.tensor([[1, 2], [1, 3]]))


def make_args(tmp_path, **overrides):
    """helpers.make_args with the teacher output cache in the test's own folder."""
    return helpers.make_args(tmp_path, **{"teacher_cache_dir": str(tmp_path / "cache"), **overrides})


def label_ids(tokenizer):
    return [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in (" Yes", " No")]


def make_trainer(tmp_path, student, teacher, tokenizer, dataset=None, **overrides):
    return ContextDistillationTrainer(
        model=student,
        teacher=teacher,
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else Dataset.from_list(views(tokenizer) * 2),
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        label_token_ids=label_ids(tokenizer),
    )


@pytest.mark.parametrize("self_teacher", [False, True])
def test_trainer_uses_the_prefix_cache_with_the_same_logits(
    tmp_path, tokenizer, student, teacher, self_teacher
):
    if self_teacher:
        student = prepare_student(student, "lora", lora_r=4, lora_target_modules=["q_proj", "v_proj"])
        with torch.no_grad():  # adapters that change the outputs: the cached prefix must be the base model's
            for name, p in student.named_parameters():
                if "lora_B" in name:
                    p.normal_()
        teacher = "self"
    batch = TwoViewCollator(tokenizer.pad_token_id)(views(tokenizer))
    cached = make_trainer(tmp_path, student, teacher, tokenizer)
    uncached = make_trainer(tmp_path, student, teacher, tokenizer, teacher_prefix_cache=False)
    got = cached.teacher_answer_logits(batch)
    expected = uncached.teacher_answer_logits(batch)
    assert cached.teacher.runner.prefix_teacher is not None
    assert uncached.teacher.runner.prefix_teacher is None
    assert (got - expected)[batch["answer_mask"]].abs().max() <= 1e-4


# ---- sparse loss against a top-k teacher ----


@pytest.mark.parametrize("kind", LOSS_KINDS)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_loss_with_full_support_equals_dense(kind, temperature):
    torch.manual_seed(0)
    student = torch.randn(3, 2, 50, requires_grad=True)
    teacher = torch.randn(3, 2, 50) * 3
    mask = torch.tensor([[True, True], [False, True], [True, True]])
    logprobs = torch.log_softmax(teacher / temperature, -1)
    top, ids = logprobs.topk(50, -1)  # k = vocabulary: sorted order, no tail
    sparse = sparse_distillation_loss(
        student, top, ids, None, mask, kind=kind, temperature=temperature, beta=0.3
    )
    dense = distillation_loss(student, teacher, mask, kind=kind, temperature=temperature, beta=0.3)
    assert abs(float(sparse.detach()) - float(dense.detach())) <= 1e-5
    (grad_sparse,) = torch.autograd.grad(sparse, student)
    (grad_dense,) = torch.autograd.grad(dense, student)
    assert (grad_sparse - grad_dense).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_sparse_loss_with_a_tail_is_a_finite_lower_bound(kind):
    torch.manual_seed(1)
    student = torch.randn(4, 1, 40, requires_grad=True)
    teacher = torch.randn(4, 1, 40) * 4
    logprobs = torch.log_softmax(teacher, -1)
    top, ids = logprobs.topk(5, -1)
    tail = logprobs.scatter(-1, ids, float("-inf")).logsumexp(-1)
    sparse = sparse_distillation_loss(student, top, ids, tail, kind=kind)
    dense = distillation_loss(student, teacher, kind=kind)
    # coarsening both distributions to (k tokens + rest) can only lose divergence
    assert 0 < float(sparse.detach()) <= float(dense.detach()) + 1e-6
    sparse.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    # a teacher tail that underflowed to zero mass stays finite
    zero_tail = torch.full_like(tail, float("-inf"))
    student.grad = None
    sparse_distillation_loss(student, top, ids, zero_tail, kind="forward_kl").backward()
    assert torch.isfinite(student.grad).all()


# ---- teacher output cache ----


def _kd_and_ce(trainer):
    history = trainer.state.log_history
    return [(log["kd_loss"], log["ce_loss"]) for log in history if "kd_loss" in log]


@pytest.mark.integration
@pytest.mark.parametrize("distill_vocab", ["label_words", "full"])
def test_training_from_the_output_cache_matches_the_live_teacher(
    tmp_path, tokenizer, student, teacher, distill_vocab
):
    # k = all label words (label_words) or the whole vocabulary (full): the cache is exact
    options = dict(
        distill_vocab=distill_vocab, alpha=0.5, temperature=2.0, teacher_cache_top_k=len(tokenizer) + 10
    )
    live = make_trainer(tmp_path, copy.deepcopy(student), teacher, tokenizer, **options)
    live.train()
    cached = make_trainer(
        tmp_path,
        copy.deepcopy(student),
        copy.deepcopy(teacher),
        tokenizer,
        teacher_output_cache=True,
        **options,
    )
    assert cached.teacher is None  # trains without the teacher in memory
    assert "teacher_topk_ids" in cached.train_dataset.column_names or distill_vocab == "label_words"
    cached.train()
    live_losses, cached_losses = _kd_and_ce(live), _kd_and_ce(cached)
    assert len(live_losses) == len(cached_losses) == 4
    for (kd_live, ce_live), (kd_cached, ce_cached) in zip(live_losses, cached_losses):
        assert abs(kd_live - kd_cached) <= 1e-5 and abs(ce_live - ce_cached) <= 1e-5
    assert live_losses[0][0] != live_losses[-1][0]  # the losses moved, so matching them means something


@pytest.mark.integration
def test_output_cache_is_reused_when_the_key_matches_and_rebuilt_when_not(
    tmp_path, tokenizer, student, teacher
):
    collator = TwoViewCollator(tokenizer.pad_token_id)
    dataset = Dataset.from_list(views(tokenizer))
    options = dict(distill_vocab="full", temperature=1.0, top_k=8, cache_dir=tmp_path / "cache", batch_size=3)
    built, path, reused = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    assert not reused and len(built) == len(dataset)
    assert [len(x) for x in built["teacher_topk_ids"]] == [len(f["answer_ids"]) for f in views(tokenizer)]
    assert all(len(x) == 8 for row in built["teacher_topk_logprobs"] for x in row)

    def no_teacher(batch):
        raise AssertionError("the teacher ran although the cache matched")

    again, again_path, reused = load_or_build_teacher_outputs(
        teacher, dataset, collator, logits_fn=no_teacher, **options
    )
    assert reused and again_path == path and again["teacher_topk_logprobs"] == built["teacher_topk_logprobs"]
    # the top-k + tail are a distribution: their masses sum to one
    row = (
        torch.tensor(built["teacher_topk_logprobs"][0]).exp().sum(-1)
        + torch.tensor(built["teacher_tail_logprob"][0]).exp()
    )
    assert torch.allclose(row, torch.ones_like(row), atol=1e-5)
    _, other_path, reused = load_or_build_teacher_outputs(
        teacher, dataset, collator, **{**options, "temperature": 2.0}
    )
    assert not reused and other_path != path
    # a dataset carrying the outputs trains with no teacher at all
    trainer = make_trainer(tmp_path, student, None, tokenizer, dataset=built, max_steps=1)
    trainer.train()
    assert trainer.teacher is None and any("kd_loss" in log for log in trainer.state.log_history)
    # a half-written cache (no key file) is never trusted
    (path / "teacher_cache_key.json").unlink()
    _, _, reused = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    assert not reused


def test_cache_key_changes_with_demonstrations_teacher_pattern_and_code(tokenizer, teacher, monkeypatch):
    def key(model=teacher, demos=DEMOS, template=GPT3, **options):
        rows = [
            (template.format(premise=p, hypothesis="It is so."), a)
            for p, a in (("The cat sat on the mat", " Yes"), ("A man plays a guitar", " No"))
        ]
        dataset = Dataset.from_list(views(tokenizer, demos=demos, rows=rows))
        settings = dict(distill_vocab="full", temperature=1.0, top_k=8, label_token_ids=None) | options
        return teacher_output_cache_key(model, dataset, **settings)[0]

    base = key()
    assert key() == base  # deterministic
    retrained = copy.deepcopy(teacher)
    with torch.no_grad():
        retrained.lm_head.weight[0, 0] += 1e-3
    assert key(model=retrained) != base
    assert key(demos=OTHER_DEMOS) != base
    assert key(template=MINIMAL) != base
    assert key(temperature=2.0) != base and key(top_k=16) != base
    assert key(distill_vocab="label_words", label_token_ids=label_ids(tokenizer)) != base
    # the code that computes the outputs, and the numeric packages' versions; not the loss that reads them
    files, versions = dict(code_digest.library_files()), code_digest.package_versions()
    monkeypatch.setattr(code_digest, "library_files", lambda: {**files, LOSSES: "0" * 64})
    assert key() == base
    monkeypatch.setattr(code_digest, "library_files", lambda: {**files, PREFIX_CACHE: "0" * 64})
    assert key() != base
    monkeypatch.setattr(code_digest, "library_files", lambda: files)
    monkeypatch.setattr(code_digest, "package_versions", lambda: {**versions, "torch": "9.9"})
    assert key() != base


def another_students_view(dataset):
    """The same teacher views beside another student's: its own query and answer tokens (ids shifted, as
    another tokenizer would spell them)."""
    return dataset.map(
        lambda row: {
            "input_ids": [i + 1 for i in row["input_ids"]],
            "answer_ids": [i + 1 for i in row["answer_ids"]],
        }
    )


def test_label_word_outputs_are_shared_by_students_with_other_tokenizers(tmp_path, tokenizer, teacher):
    """The label-word distribution is read from the teacher's view alone: a second student (other answer
    tokens) finds the first one's cache, and gets its own views back with the teacher's columns."""
    collator = TwoViewCollator(tokenizer.pad_token_id)
    first = Dataset.from_list(views(tokenizer))
    second = another_students_view(first)
    options = dict(
        distill_vocab="label_words",
        temperature=1.0,
        label_token_ids=label_ids(tokenizer),
        cache_dir=tmp_path / "cache",
    )
    built, path, reused = load_or_build_teacher_outputs(teacher, first, collator, **options)
    assert not reused

    def no_teacher(batch):
        raise AssertionError("the teacher ran again for the second student")

    shared, shared_path, reused = load_or_build_teacher_outputs(
        teacher, second, collator, logits_fn=no_teacher, **options
    )
    assert reused and shared_path == path
    assert shared["teacher_label_logprobs"] == built["teacher_label_logprobs"]
    # the second student's own tokens, never the first one's stored beside the teacher's outputs
    assert shared["input_ids"] == second["input_ids"] != first["input_ids"]
    assert shared["answer_ids"] == second["answer_ids"]
    # per-answer-token outputs follow the answer tokens: there, another student's answers are another key
    full = dict(distill_vocab="full", temperature=1.0, top_k=8, label_token_ids=None)
    assert (
        teacher_output_cache_key(teacher, first, **full)[0]
        != teacher_output_cache_key(teacher, second, **full)[0]
    )


def test_output_cache_rejects_what_it_cannot_use(tmp_path, tokenizer, teacher):
    collator = TwoViewCollator(tokenizer.pad_token_id)
    with pytest.raises(UsageError, match="datasets.Dataset"):
        load_or_build_teacher_outputs(teacher, views(tokenizer), collator, cache_dir=tmp_path)
    with pytest.raises(UsageError, match="needs label_token_ids"):
        load_or_build_teacher_outputs(
            teacher,
            Dataset.from_list(views(tokenizer)),
            collator,
            distill_vocab="label_words",
            cache_dir=tmp_path,
        )
    with pytest.raises(UsageError, match="teacher_cache_top_k"):
        DistillationConfig(output_dir=str(tmp_path), teacher_cache_top_k=0)


# ---- a damaged teacher output cache is rebuilt, with one warning naming it ----


def _corrupt_values(path, column):
    """Rewrite the cache's Arrow data with log-probabilities shifted above 0, and make its key record's
    file sizes and checksums match again: only the value invariants can tell."""
    import json

    from datasets import load_from_disk

    from distill_trainer.integrity import file_records
    from distill_trainer.teacher.store import KEY_FILE

    dataset = load_from_disk(str(path))
    shifted = [
        [[x + 5.0 for x in token] for token in row] if isinstance(row[0], list) else [x + 5.0 for x in row]
        for row in dataset[column]
    ]
    damaged = dataset.remove_columns(column).add_column(column, shifted, feature=dataset.features[column])
    record = json.loads((path / KEY_FILE).read_text())
    tmp = path.with_name(path.name + "-rewritten")
    damaged.save_to_disk(str(tmp))
    for name in [p for p in path.iterdir() if p.name != KEY_FILE]:
        name.unlink()
    for name in tmp.iterdir():
        name.rename(path / name.name)
    tmp.rmdir()
    record["files"] = file_records(path, skip=(KEY_FILE,))
    (path / KEY_FILE).write_text(json.dumps(record))


@pytest.mark.parametrize("damage", ["truncated", "values"])
def test_a_damaged_output_cache_is_rebuilt_with_one_warning(tmp_path, tokenizer, teacher, damage, caplog):
    collator = TwoViewCollator(tokenizer.pad_token_id)
    dataset = Dataset.from_list(views(tokenizer))
    options = dict(distill_vocab="full", temperature=1.0, top_k=8, cache_dir=tmp_path / "cache", batch_size=4)
    built, path, _ = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    expected = built["teacher_topk_logprobs"]
    del built  # memory-mapped: this process must not read a file cut under it
    if (
        damage == "truncated"
    ):  # a copy cut in half replaces the file, as a full disk or a killed copy leaves it
        arrow = next(path.glob("*.arrow"))
        cut = arrow.with_suffix(".cut")
        cut.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
        cut.replace(arrow)
    else:
        _corrupt_values(path, "teacher_topk_logprobs")
    caplog.set_level("WARNING", logger="distill_trainer")
    rebuilt, again_path, reused = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(path) in warnings[0] and "rebuilding it" in warnings[0], warnings
    assert (
        ("bytes" in warnings[0])
        if damage == "truncated"
        else ("not 1" in warnings[0] or "above 0" in warnings[0])
    )
    assert not reused and again_path == path
    assert rebuilt["teacher_topk_logprobs"] == expected  # the teacher's numbers again
    _, _, reused = load_or_build_teacher_outputs(teacher, dataset, collator, **options)  # and now trusted
    assert reused


def test_label_word_cache_with_mass_not_one_is_rebuilt(tmp_path, tokenizer, teacher, caplog):
    collator = TwoViewCollator(tokenizer.pad_token_id)
    dataset = Dataset.from_list(views(tokenizer))
    options = dict(
        distill_vocab="label_words",
        temperature=1.0,
        label_token_ids=label_ids(tokenizer),
        cache_dir=tmp_path / "cache",
        batch_size=4,
    )
    _, path, _ = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    from datasets import load_from_disk

    from distill_trainer.teacher.store import values_problem

    assert values_problem(load_from_disk(str(path))) is None
    _corrupt_values(path, "teacher_label_logprobs")
    caplog.set_level("WARNING", logger="distill_trainer")
    _, _, reused = load_or_build_teacher_outputs(teacher, dataset, collator, **options)
    assert not reused and "damaged" in caplog.text and str(path) in caplog.text


@pytest.mark.parametrize("pack, packs", [(None, True), (True, True), (False, False)])
def test_teacher_runner_packs_on_cpu_by_default(tokenizer, teacher, monkeypatch, pack, packs):
    from distill_trainer.teacher.prefix_cache import TeacherAnswerLogits

    calls = []
    original = PrefixCachedModel._packed_answer_logits

    def spy(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(PrefixCachedModel, "_packed_answer_logits", spy)
    batch = TwoViewCollator(tokenizer.pad_token_id)(views(tokenizer))
    logits = TeacherAnswerLogits(pack=pack)(teacher.eval(), batch)
    _, full, _ = cached_vs_full(teacher, batch)
    assert bool(calls) == packs
    assert (logits - full)[batch["answer_mask"]].abs().max() <= 1e-4


def test_the_heap_is_trimmed_once_a_loaded_teacher_is_dropped(
    tmp_path, tokenizer, student, teacher, monkeypatch
):
    from distill_trainer.memory import peak as memory
    from distill_trainer.training import teacher_outputs as teacher_outputs_mixin

    # on Linux (glibc) the trim really runs; elsewhere it reports that it could not
    assert memory.release_freed_memory() is (sys.platform.startswith("linux"))
    calls = []
    monkeypatch.setattr(teacher_outputs_mixin, "release_freed_memory", lambda: calls.append(1))
    options = dict(distill_vocab="label_words", teacher_output_cache=True)
    make_trainer(tmp_path, copy.deepcopy(student), teacher, tokenizer, **options)
    assert calls == [1]  # a teacher model was held and dropped
    # a "self" teacher is the student itself: nothing was dropped, nothing to hand back
    lora = prepare_student(copy.deepcopy(student), "lora", lora_r=2)
    itself = make_trainer(tmp_path / "self", lora, "self", tokenizer, **options)
    assert itself.teacher_from_cache and calls == [1]
