import json
from collections import Counter
from pathlib import Path

import pytest

from distill_trainer.errors import UsageError
from distill_trainer.nli import tasks
from distill_trainer.nli.arguments import DataArguments
from distill_trainer.nli.data import prepare_data
from distill_trainer.nli.demonstrations import (
    DemonstrationSampler,
    balanced_subset,
    fit_demonstrations,
    per_subcase_subset,
    row_key,
    sample_demonstrations,
)
from distill_trainer.nli.patterns import get_pattern
from distill_trainer.nli.tasks import get_task, load_split
from distill_trainer.views.text import SEPARATOR

DATA = str(Path(__file__).parents[1] / "data")
ROW = {"premise": "The cat sat.", "hypothesis": "A cat sits.", "label": 0}


def raw_rows(name):
    return [json.loads(line) for line in open(Path(DATA) / name)]


def mnli_pool():
    return load_split(get_task("mnli"), "train", "local", DATA)


# ---------------------------------------------------------------- loading


def test_binary_mnli_drops_neutral_and_maps_contradiction_to_1():
    raw = raw_rows("mnli/train.jsonl")
    pool = mnli_pool()
    expected = [(r["premise"], 0 if r["label"] == 0 else 1) for r in raw if r["label"] != 1]
    assert [(r["premise"], r["label"]) for r in pool] == expected
    assert set(pool.column_names) == {"premise", "hypothesis", "label"}


def test_three_way_mnli_and_hans_keep_their_labels_and_columns():
    three = load_split(get_task("mnli_3way"), "validation_matched", "local", DATA)
    assert [r["label"] for r in three] == [r["label"] for r in raw_rows("mnli/validation_matched.jsonl")]
    hans = load_split(get_task("hans"), "validation", "local", DATA)
    assert {"heuristic", "subcase", "template"} <= set(hans.column_names)
    assert Counter(hans["heuristic"]) == {"lexical_overlap": 20, "subsequence": 20, "constituent": 20}
    assert set(hans["label"]) == {0, 1}


def test_data_dir_found_through_the_environment(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "REPO_ROOT", tmp_path / "repo")  # nothing next to the checkout
    monkeypatch.setenv(tasks.DATA_ENV, DATA)
    assert len(load_split(get_task("mnli"), "train", "local")) == 24


def test_missing_local_source_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setattr(tasks, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv(tasks.DATA_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(
        UsageError, match=r"no local data directory found \(looked in: .*nowhere, .*repo/data;"
    ):
        load_split(get_task("mnli"), "train", "local")


def test_the_repository_ships_its_data_and_auto_reads_it_without_the_hub(monkeypatch):
    """A clone with nothing beside it: data/ in the checkout is found first, and the Hub is never asked."""
    monkeypatch.delenv(tasks.DATA_ENV, raising=False)
    assert tasks.resolve_data_dir("auto") == tasks.REPO_ROOT / "data"
    monkeypatch.setattr(tasks, "_load_hub", lambda *a, **k: pytest.fail("the Hub was asked"))
    hans = load_split(get_task("hans"), "validation", "auto")
    assert len(hans) == 30_000 and len(set(hans["subcase"])) == 30
    assert len(load_split(get_task("mnli"), "train", "auto")) > 2_000
    assert len(load_split(get_task("mnli"), "validation_matched", "auto")) > 2_000


def test_no_local_copy_and_no_hub_fails_at_once_naming_the_fix(monkeypatch, tmp_path):
    import datasets

    monkeypatch.setattr(tasks, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.delenv(tasks.DATA_ENV, raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("a download was tried"))
    with pytest.raises(UsageError, match=r"HF_DATASETS_OFFLINE is set\); no local copy .* set data_dir"):
        load_split(get_task("mnli"), "train", "auto")


def test_an_unreachable_hub_is_named_without_a_download(monkeypatch):
    import socket

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid:9")

    def refuse(*args, **kwargs):
        raise ConnectionRefusedError

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert tasks.hub_unreachable_reason() == "hub.invalid cannot be reached (ConnectionRefusedError)"


def test_data_dir_that_does_not_exist(tmp_path):
    with pytest.raises(UsageError, match="data_dir .*missing does not exist"):
        load_split(get_task("mnli"), "train", "local", str(tmp_path / "missing"))


def test_dataset_missing_a_column(tmp_path):
    (tmp_path / "mnli").mkdir()
    (tmp_path / "mnli" / "train.jsonl").write_text(json.dumps({"premise": "a", "label": 0}) + "\n")
    with pytest.raises(UsageError, match=r"lacks column\(s\) \['hypothesis'\]"):
        load_split(get_task("mnli"), "train", "local", str(tmp_path))


def test_hans_needs_its_heuristic_columns(tmp_path):
    (tmp_path / "hans").mkdir()
    (tmp_path / "hans" / "validation.jsonl").write_text(json.dumps(ROW) + "\n")
    with pytest.raises(UsageError, match="heuristic"):
        load_split(get_task("hans"), "validation", "local", str(tmp_path))


# ---------------------------------------------------------------- patterns and arguments


@pytest.mark.parametrize(
    "name,query,words",
    [
        ("minimal", "The cat sat. A cat sits. ?", (" Yes", " No")),
        ("gpt3", "The cat sat. question: A cat sits. Yes or No? answer:", (" Yes", " No")),
        ("eval_harness", "The cat sat.\nQuestion: A cat sits. True or False?\nAnswer:", (" True", " False")),
    ],
)
def test_named_patterns(name, query, words):
    pattern = get_pattern(name, 2)
    assert pattern.query(ROW) == query and pattern.label_words == words
    assert pattern.demonstration(ROW) == query + words[0]


def test_custom_template_and_label_words():
    pattern = get_pattern("custom", 2, "P: {premise} H: {hypothesis} {json-ish}", [" y", " n"])
    assert pattern.query(ROW) == "P: The cat sat. H: A cat sits. {json-ish}"
    assert pattern.answer(1) == " n"
    assert get_pattern("gpt3", 2, label_words=[" true", " false"]).label_words == (" true", " false")


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"task": "snli"}, "unknown task 'snli'; choose one of: mnli, mnli_3way, hans"),
        ({"pattern": "minimall"}, "unknown pattern 'minimall'"),
        (
            {"pattern": "custom", "template": "{premise} ?", "label_words": [" Yes", " No"]},
            "lacks {hypothesis}",
        ),
        (
            {"pattern": "custom", "template": "{hypothesis} ?", "label_words": [" Yes", " No"]},
            "lacks {premise}",
        ),
        ({"pattern": "custom", "label_words": [" Yes", " No"]}, "needs both template"),
        ({"template": "{premise} {hypothesis}"}, "only read with pattern: custom"),
        ({"label_words": [" Yes", " No", " Maybe"]}, "3 words .* the task has 2 labels"),
        ({"label_words": [" Yes", " Yes"]}, "repeat a word"),
        ({"eval_tasks": ["mnli", "hanz"]}, "unknown task 'hanz'"),
        ({"task": "mnli_3way", "eval_tasks": ["hans"]}, "has 2 labels but task 'mnli_3way' has 3"),
        ({"data_source": "web"}, "data_source='web' is not valid"),
        ({"k": -1}, "k must be >= 0"),
        ({"hans_per_subcase": 0}, "hans_per_subcase must be >= 1"),
    ],
)
def test_bad_data_arguments(overrides, message):
    with pytest.raises(UsageError, match=message):
        DataArguments(**overrides)


def test_data_arguments_default_eval_task_is_the_task():
    assert DataArguments(task="mnli_3way").eval_tasks == ["mnli_3way"]
    assert DataArguments(task="mnli_3way").get_pattern().label_words == (" Yes", " Maybe", " No")


# ---------------------------------------------------------------- subsets and demonstrations


def test_balanced_subset_and_per_subcase_subset():
    pool = mnli_pool()
    subset = balanced_subset(pool, 10, 2, seed=3)
    assert Counter(subset["label"]) == {0: 5, 1: 5}
    assert balanced_subset(pool, 10, 2, seed=3)["premise"] == subset["premise"]
    with pytest.raises(UsageError, match="asked for 30 .* only 24"):
        balanced_subset(pool, 30, 2, seed=0)
    hans = load_split(get_task("hans"), "validation", "local", DATA)
    one_each = per_subcase_subset(hans, 1, seed=0)
    assert len(one_each) == 30 and len(set(one_each["subcase"])) == 30


@pytest.mark.parametrize("k,counts", [(4, [{0: 2, 1: 2}]), (5, [{0: 3, 1: 2}, {0: 2, 1: 3}])])
def test_demonstrations_are_class_balanced(k, counts):
    demos = sample_demonstrations(mnli_pool(), 2, k, seed=1)
    assert len(demos) == k and dict(Counter(d["label"] for d in demos)) in counts


def test_same_seed_same_prompts_other_seed_other_prompts():
    pool, pattern = mnli_pool(), get_pattern("minimal", 2)
    first = DemonstrationSampler(pool, pattern, 2, k=4, seed=7).for_query(ROW)
    assert DemonstrationSampler(pool, pattern, 2, k=4, seed=7).for_query(ROW) == first
    assert DemonstrationSampler(pool, pattern, 2, k=4, seed=8).for_query(ROW) != first
    resampled = DemonstrationSampler(pool, pattern, 2, k=4, seed=7, resample=True)
    assert resampled.for_query(pool[0]) == DemonstrationSampler(pool, pattern, 2, 4, 7, True).for_query(
        pool[0]
    )
    assert resampled.for_query(pool[0]) != resampled.for_query(pool[1])  # a fresh draw per query


def test_demonstrations_never_include_the_query():
    pool, pattern = mnli_pool(), get_pattern("minimal", 2)
    # 12 rows per label and k=22 leave one spare row per label: the query must be the one left out
    sampler = DemonstrationSampler(pool, pattern, 2, k=22, seed=0, resample=True)
    for row in pool:
        demos = sampler.for_query(row)
        assert len(demos) == 22 and pattern.demonstration(row) not in demos
    excluded = {row_key(r) for r in pool.select(range(6))}
    fixed = DemonstrationSampler(pool, pattern, 2, k=12, seed=0, exclude_keys=excluded)
    assert not excluded & fixed.fixed_keys and len(fixed.fixed_keys) == 12


def test_k_larger_than_the_pool_allows_per_class():
    with pytest.raises(UsageError, match="need 13 of label 0 but only 12 are available"):
        sample_demonstrations(mnli_pool(), 2, 26, seed=0)


def test_prepare_data_keeps_demonstrations_training_and_evaluation_apart():
    args = DataArguments(
        task="mnli",
        eval_tasks=["mnli", "hans"],
        data_dir=DATA,
        k=4,
        num_train_examples=10,
        hans_per_subcase=1,
        num_eval_examples=8,
    )
    data = prepare_data(args)
    train_keys = {row_key(r) for r in data.train_rows}
    eval_keys = {row_key(r) for rows in data.eval_sets.values() for r in rows}
    assert len(train_keys) == 10 and Counter(data.train_rows["label"]) == {0: 5, 1: 5}
    assert len(data.sampler.fixed) == 4 and not train_keys & data.sampler.fixed_keys
    assert not (train_keys | data.sampler.fixed_keys) & eval_keys
    assert len(data.eval_sets["mnli"]) == 8 and len(data.eval_sets["hans"]) == 30
    # the same arguments give the same rows (pattern-based fine-tuning and distillation train alike)
    assert prepare_data(args).train_rows["premise"] == data.train_rows["premise"]


def test_hans_cannot_be_the_training_task():
    with pytest.raises(UsageError, match="task 'hans' has no training split"):
        prepare_data(DataArguments(task="hans", data_dir=DATA))


# ---------------------------------------------------------------- length guard


def test_length_guard_fails_with_the_lengths_or_drops(tokenizer):
    pattern = get_pattern("minimal", 2)
    demos = [pattern.demonstration(r) for r in mnli_pool().select(range(4))]
    query, answer = pattern.query(ROW), " Yes"
    full = len(tokenizer(SEPARATOR.join(demos) + SEPARATOR + query + answer)["input_ids"])
    assert fit_demonstrations(tokenizer, demos, query, answer, max_length=full + 50) == demos
    with pytest.raises(UsageError, match=r"the prompt is \d+ tokens \(4 demonstrations: .*max_length=40"):
        fit_demonstrations(tokenizer, demos, query, answer, max_length=40)
    kept = fit_demonstrations(tokenizer, demos, query, answer, max_length=full - 5, drop=True)
    assert 0 < len(kept) < 4 and kept == demos[: len(kept)]
    with pytest.raises(UsageError, match="queries are never truncated"):
        fit_demonstrations(tokenizer, demos, query, answer, max_length=3, drop=True)


def test_two_view_dataset_for_a_teacher_with_another_tokenizer(tokenizer):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from distill_trainer.nli.data import build_view_dataset

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        ["The cat sat ? Yes", "A dog ran ? No"] * 20,
        trainer=trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    other = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>")
    pool, pattern = mnli_pool(), get_pattern("minimal", 2)
    sampler = DemonstrationSampler(pool, pattern, 2, k=2, seed=0)
    rows = pool.select(range(4))
    views = build_view_dataset(tokenizer, rows, pattern, sampler, teacher_tokenizer=other)
    for row, view in zip(rows, views):
        answer = pattern.answer(row["label"])
        student_answer = tokenizer(answer, add_special_tokens=False)["input_ids"]
        teacher_answer = other(answer, add_special_tokens=False)["input_ids"]
        assert view["answer_ids"] == student_answer
        first = view["answer_positions"][0] + 1
        assert view["input_ids"][first:] == student_answer
        first = view["teacher_answer_positions"][0] + 1
        assert view["teacher_input_ids"][first:] == teacher_answer
        prompt = SEPARATOR.join(sampler.fixed) + SEPARATOR + pattern.query(row)
        assert other.decode(view["teacher_input_ids"][:first]) == prompt
    student_only = build_view_dataset(tokenizer, rows, pattern)
    assert "teacher_input_ids" not in student_only.column_names
