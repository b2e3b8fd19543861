"""The real-teacher main job's paths on tiny models: a teacher with another tokenizer (label-word distillation
across vocabularies), a teacher on disk found through its output cache without being loaded, evaluation
results read back, the comparison's findings and its new methods."""

import json
import os

import pytest
import torch

from distill_trainer import ContextDistillationTrainer, DistillationConfig, TwoViewCollator
from distill_trainer.nli import eval_cache
from distill_trainer.nli.data import build_view_dataset, first_token_ids
from distill_trainer.nli.evaluation import score_label_words
from distill_trainer.nli.patterns import Pattern
from distill_trainer.report.findings import findings, paired_difference, recovered_gain
from distill_trainer.teacher.teacher import teacher_source_fingerprint
from distill_trainer.testing import build_model

PATTERN = Pattern("gpt3", "{premise} question: {hypothesis} Yes or No? answer:", (" Yes", " No"))
ROWS = [
    {"premise": p, "hypothesis": h, "label": y}
    for p, h, y in [
        ("The cat sat on the mat", "A cat is sitting.", 0),
        ("A man is playing a guitar", "Nobody plays music.", 1),
        ("The doctor saw the lawyer", "The lawyer saw the doctor.", 0),
        ("Two dogs run in the park", "Dogs sleep.", 1),
        ("The senator thanked the artist", "The artist was thanked.", 0),
        ("Kids play", "Nobody plays.", 1),
        ("A woman reads a book", "Someone reads.", 0),
        ("The sun is up", "It is night.", 1),
    ]
]
DEMOS = [
    "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes",
    "A man is playing a guitar question: Nobody plays music. Yes or No? answer: No",
]


class FixedDemonstrations:
    """What `DemonstrationSampler` gives the recipes, for fixed demonstrations."""

    def for_query(self, row):
        return DEMOS


@pytest.fixture(scope="module")
def other_tokenizer():
    """A tokenizer with another vocabulary (size and merges), as a Qwen teacher has against a SmolLM2
    student."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [f"{d} {r['premise']} {r['hypothesis']}" for d in DEMOS for r in ROWS] * 20
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(text, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>")


def _cross_trainer(tmp_path, tokenizer, other_tokenizer, teacher, **overrides):
    dataset = build_view_dataset(
        tokenizer, ROWS, PATTERN, FixedDemonstrations(), teacher_tokenizer=other_tokenizer
    )
    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        distill_vocab="label_words",
        alpha=1.0,
        temperature=1.0,
        teacher_cache_dir=str(tmp_path / "cache"),
    )
    values.update(overrides)
    return ContextDistillationTrainer(
        model=build_model(len(tokenizer), seed=0),
        teacher=teacher,
        args=DistillationConfig(**values),
        train_dataset=dataset,
        data_collator=TwoViewCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        label_token_ids=first_token_ids(tokenizer, PATTERN),
        teacher_tokenizer=other_tokenizer,
        teacher_label_token_ids=first_token_ids(other_tokenizer, PATTERN),
    )


# ---- a teacher with another tokenizer ----


@pytest.mark.integration
def test_label_word_distillation_across_vocabularies(tmp_path, tokenizer, other_tokenizer):
    assert tokenizer.get_vocab() != other_tokenizer.get_vocab()
    teacher = build_model(len(other_tokenizer), seed=3, hidden_size=48).eval()
    cached = _cross_trainer(tmp_path, tokenizer, other_tokenizer, teacher, teacher_output_cache=True)
    # the cached distribution is the teacher's own label-word distribution, read with its own tokenizer
    queries = [PATTERN.query(row) for row in ROWS]
    scores = score_label_words(
        teacher, other_tokenizer, queries, PATTERN.label_words, "\n\n".join(DEMOS), progress=False
    )
    stored = torch.tensor(cached.train_dataset["teacher_label_logprobs"])
    torch.testing.assert_close(stored, torch.log_softmax(scores.logprobs, -1), atol=1e-5, rtol=0)
    cached.train()
    live = _cross_trainer(tmp_path, tokenizer, other_tokenizer, teacher)
    live.train()
    kd = [[log["kd_loss"] for log in t.state.log_history if "kd_loss" in log] for t in (cached, live)]
    assert len(kd[0]) == 4 and all(abs(a - b) <= 1e-5 for a, b in zip(*kd))
    assert kd[0][-1] < kd[0][0]  # the student moves toward the teacher


def test_full_vocabulary_distillation_across_vocabularies_is_refused(tmp_path, tokenizer, other_tokenizer):
    from distill_trainer.errors import UsageError

    teacher = build_model(len(other_tokenizer), seed=3)
    with pytest.raises(UsageError, match="label_words"):
        _cross_trainer(tmp_path, tokenizer, other_tokenizer, teacher, distill_vocab="full")


# ---- a teacher on disk is not loaded when its outputs are cached ----


@pytest.fixture
def teacher_dir(tmp_path, other_tokenizer):
    directory = tmp_path / "teacher"
    build_model(len(other_tokenizer), seed=3, hidden_size=48).save_pretrained(directory)
    other_tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.integration
def test_a_cached_teacher_is_not_loaded_again(tmp_path, tokenizer, other_tokenizer, teacher_dir, monkeypatch):
    first = _cross_trainer(tmp_path, tokenizer, other_tokenizer, str(teacher_dir), teacher_output_cache=True)
    assert first.teacher_output_cache_info["train"]["reused"] is False

    def no_loading(*args, **kwargs):
        raise AssertionError("the teacher was loaded although its outputs are cached")

    monkeypatch.setattr("distill_trainer.teacher.teacher.load_causal_lm", no_loading)
    second = _cross_trainer(tmp_path, tokenizer, other_tokenizer, str(teacher_dir), teacher_output_cache=True)
    assert second.teacher_output_cache_info["train"]["reused"] is True
    assert second.train_dataset["teacher_label_logprobs"] == first.train_dataset["teacher_label_logprobs"]
    second.train()
    assert any("kd_loss" in log for log in second.state.log_history)


def test_the_teacher_identity_follows_its_files(teacher_dir):
    before = teacher_source_fingerprint(str(teacher_dir))
    assert before == teacher_source_fingerprint(str(teacher_dir))
    assert before != teacher_source_fingerprint(str(teacher_dir), quantization="8bit")
    weights = teacher_dir / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # rewritten
    assert teacher_source_fingerprint(str(teacher_dir)) != before
    assert teacher_source_fingerprint("no/such-folder-or-hub-id") is None


# ---- evaluation results read back ----


def test_evaluation_cache_round_trip_and_checksum(tmp_path, caplog):
    key = eval_cache.evaluation_key("model-a", task="mnli", rows=[{"premise": "p"}])
    assert key != eval_cache.evaluation_key("model-b", task="mnli", rows=[{"premise": "p"}])
    assert eval_cache.load_evaluation(key, tmp_path) is None
    path = eval_cache.store_evaluation(key, {"accuracy": 0.5}, [{"prediction": 1}], tmp_path)
    assert eval_cache.load_evaluation(key, tmp_path) == ({"accuracy": 0.5}, [{"prediction": 1}])
    record = json.loads(path.read_text())
    record["payload"]["metrics"]["accuracy"] = 0.9  # edited by hand: no longer what was computed
    path.write_text(json.dumps(record))
    with caplog.at_level("WARNING"):
        assert eval_cache.load_evaluation(key, tmp_path) is None
    assert "checksum" in caplog.text


@pytest.mark.integration
def test_icl_eval_of_a_model_on_disk_is_read_back_without_loading_it(tmp_path, tiny_dirs, monkeypatch):
    from helpers import cli_args, load_recipe

    monkeypatch.setenv("DISTILL_TRAINER_CACHE", str(tmp_path / "cache"))
    recipe = load_recipe("icl_eval")
    argv = cli_args(
        model_name_or_path=tiny_dirs["teacher"], task="mnli", eval_tasks=["mnli", "hans"], pattern="gpt3", k=2
    )
    first = recipe.main([*argv, "--output_dir", str(tmp_path / "first")])
    monkeypatch.setattr(
        recipe, "load_causal_lm", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded"))
    )
    second = recipe.main([*argv, "--output_dir", str(tmp_path / "second")])
    assert second["eval"] == first["eval"]
    assert second["parameters"] == first["parameters"]
    # no model ran the second time: its row says so and claims no memory for the method
    assert not first["scores_read_back"] and second["scores_read_back"]
    from distill_trainer.report.tables import load_method_result

    measured = load_method_result("icl", tmp_path / "first", None, 1.0)
    read_back = load_method_result("icl", tmp_path / "second", None, 1.0)
    assert measured["needed_memory_mib"] is not None and read_back["needed_memory_mib"] is None
    assert read_back["peak_memory_mib"] is None and read_back["eval"] == measured["eval"]
    # other demonstrations are another evaluation: it is computed, so the model is loaded
    with pytest.raises(AssertionError, match="loaded"):
        recipe.main([*argv, "--demonstration_seed", "7", "--output_dir", str(tmp_path / "third")])


# ---- findings ----


def _row(method, correct, margins=None, labels=None):
    labels = labels or [i % 2 for i in range(len(correct))]
    margins = margins or [
        (1.0 if label == 0 else -1.0) * (1 if ok else -1) for ok, label in zip(correct, labels)
    ]
    records = [
        {"label": label, "prediction": label if ok else 1 - label, "margin": m}
        for ok, label, m in zip(correct, labels, margins)
    ]
    return {"method": method, "records": {"mnli": records, "hans": records}, "peak_memory_mib": 1024.0}


def test_recovered_gain_and_paired_differences():
    n = 200
    teacher = _row("icl_teacher", [i % 10 < 9 for i in range(n)])  # 90%
    zero_shot = _row("zero_shot", [i % 10 < 5 for i in range(n)])  # 50%
    cd = _row("cd_full", [i % 10 < 7 for i in range(n)])  # 70%: half of the gain
    point, (low, high) = recovered_gain(cd, teacher, zero_shot)
    assert point == pytest.approx(0.5) and low < 0.5 < high
    difference, (low, high) = paired_difference(cd, zero_shot, "mnli", "accuracy")
    assert difference == pytest.approx(0.2) and 0 < low < high
    auc_difference, _ = paired_difference(cd, cd, "mnli", "auc")
    assert auc_difference == 0
    sentences = findings(
        [teacher, zero_shot, cd, _row("pbft_full", [i % 10 < 8 for i in range(n)])],
        {"name": "full fine-tuning of the teacher", "peak_mib": 4096.0, "source": "analytic"},
    )
    text = "\n".join(sentences)
    assert "cd_full recovers 50%" in text
    assert "On MNLI, cd_full against pbft_full: accuracy -10.0 points" in text and "PBFT better" in text
    assert "75% below full fine-tuning of the teacher" in text


def test_no_share_of_a_gain_that_does_not_exist():
    equal = [i % 2 == 0 for i in range(50)]
    assert (
        recovered_gain(_row("cd_lora", equal), _row("icl_teacher", equal), _row("zero_shot", equal)) is None
    )
    assert (
        "no share"
        in findings([_row("icl_teacher", equal), _row("zero_shot", equal), _row("cd_lora", equal)])[0]
    )


# ---- the comparison's new methods ----


def test_compare_plans_the_new_methods(tmp_path):
    from distill_trainer import DataArguments, StudentArguments
    from distill_trainer.run.comparison_arguments import DEFAULT_METHODS, CompareArguments
    from distill_trainer.run.comparison_methods import method_config
    from distill_trainer.training.parsing import GivenSettings

    student_args = StudentArguments(model_name_or_path="student-dir")
    data_args = DataArguments(task="mnli", eval_tasks=["mnli", "hans"], pattern="gpt3", k=2)
    config = DistillationConfig(
        output_dir=str(tmp_path), teacher_model_name_or_path="teacher-dir", use_cpu=True
    )
    given = GivenSettings({"teacher_model_name_or_path": "teacher-dir", "num_train_epochs": 3})
    options = CompareArguments(methods=["icl_student", "cd_bitfit", "pbft_teacher_lora"])
    recipe, icl = method_config(
        "icl_student", student_args, data_args, options, config, tmp_path / "a", given
    )
    assert recipe == "icl_eval" and icl["model_name_or_path"] == "student-dir" and icl["k"] == 2
    recipe, bitfit = method_config(
        "cd_bitfit", student_args, data_args, options, config, tmp_path / "b", given
    )
    assert recipe == "context_distill" and bitfit["student_mode"] == "bitfit"
    assert bitfit["learning_rate"] == options.bitfit_learning_rate
    assert bitfit["teacher_model_name_or_path"] == "teacher-dir"
    recipe, reference = method_config(
        "pbft_teacher_lora", student_args, data_args, options, config, tmp_path / "c", given
    )
    assert recipe == "pattern_finetune" and reference["model_name_or_path"] == "teacher-dir"
    assert reference["student_mode"] == "lora" and reference["max_steps"] == options.memory_only_steps
    assert reference["evaluate_after_training"] is False
    assert "pbft_teacher_lora" not in DEFAULT_METHODS


# ---- BitFit on an architecture without biases ----


def test_bitfit_adds_zero_biases_that_alone_train_and_survive_a_save(tmp_path, tiny_dirs, tokenizer):
    from distill_trainer.models.loading import load_causal_lm, prepare_student

    plain = load_causal_lm(tiny_dirs["student"]).eval()
    assert not any(name.endswith(".bias") for name, _ in plain.named_parameters())
    student = prepare_student(load_causal_lm(tiny_dirs["student"], add_biases=True), "bitfit")
    biases = {name for name, p in student.named_parameters() if p.requires_grad}
    assert biases and all(name.endswith(".bias") for name in biases)
    ids = torch.tensor([tokenizer("The cat sat on the mat")["input_ids"]])
    with torch.no_grad():  # zero biases: the same function as before
        torch.testing.assert_close(student.eval()(ids).logits, plain(ids).logits, atol=1e-6, rtol=0)
    before = {name: p.detach().clone() for name, p in student.named_parameters()}
    student.train()
    student(ids, labels=ids).loss.backward()
    torch.optim.SGD([p for p in student.parameters() if p.requires_grad], lr=0.1).step()
    changed = {name for name, p in student.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= biases
    student.save_pretrained(tmp_path / "bitfit")
    again = load_causal_lm(str(tmp_path / "bitfit")).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, student.eval()(ids).logits, atol=1e-6, rtol=0)


def test_bitfit_is_refused_where_no_bias_can_be_added():
    from transformers import MistralConfig

    from distill_trainer import StudentArguments
    from distill_trainer.errors import UsageError
    from distill_trainer.run.validate_models import check_student_mode

    config = MistralConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    with pytest.raises(UsageError, match="bitfit trains biases only, and this mistral model has none; use"):
        check_student_mode(StudentArguments(model_name_or_path="x", student_mode="bitfit"), config)
    # a Llama-family config has switches for its biases: BitFit adds them, so validate lets it through
    from transformers import LlamaConfig

    check_student_mode(
        StudentArguments(model_name_or_path="x", student_mode="bitfit"),
        LlamaConfig(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
    )


# ---- choosing the prompt on dev rows ----


@pytest.mark.integration
def test_select_prompt_scores_candidates_on_dev_rows_that_no_candidate_or_eval_set_uses(tmp_path, tiny_dirs):
    from helpers import DATA, cli_args

    from distill_trainer.nli.tasks import get_task, load_split
    from recipes import select_prompt

    out = tmp_path / "selection"
    results = select_prompt.main(
        cli_args(
            model_name_or_path=tiny_dirs["student"],
            teacher_model_name_or_path=tiny_dirs["teacher"],
            task="mnli",
            eval_tasks=["mnli", "hans"],
            num_eval_examples=4,
            hans_per_subcase=1,
            candidate_ks=2,
            candidate_seeds=[0, 1],
            dev_examples=6,
            output_dir=out,
        )
    )
    assert [(r["k"], r["seed"]) for r in results] == [(2, 0), (2, 1)]
    dev = [json.loads(line) for line in (out / "dev.jsonl").read_text().splitlines()]
    assert len(dev) == 6 and all(r["n"] == 6 for r in results)
    # pinned ids reproduce each candidate's prompt, and no dev row is a demonstration
    pool = load_split(get_task("mnli"), "train", "local", DATA, keep_idx=True)
    by_idx = {row["idx"]: row for row in pool}
    dev_keys = {(r["premise"], r["hypothesis"]) for r in dev}
    for result in results:
        demos = [by_idx[i] for i in result["demonstration_ids"]]
        assert not dev_keys & {(d["premise"], d["hypothesis"]) for d in demos}
    table = (out / "selection.md").read_text()
    assert table.count("| gpt3 | 2 |") == 2
    assert json.loads((out / "selection.json").read_text())["dev_examples"] == 6


def test_a_lora_student_starts_from_the_same_adapters_for_the_same_seed(tiny_dirs):
    from distill_trainer import StudentArguments
    from distill_trainer.run.runner import load_student

    args = StudentArguments(model_name_or_path=tiny_dirs["student"], student_mode="lora", lora_r=4)

    def adapters(seed, before):
        torch.manual_seed(before)  # whatever ran earlier in the process left the generator here
        model = load_student(args, seed=seed)
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}

    first, again, other = adapters(0, before=1), adapters(0, before=2), adapters(1, before=1)
    assert first and all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], other[n]) for n in first)
