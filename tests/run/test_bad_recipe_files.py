"""Bad inputs, recipe files (the catalogue's rules are in bad_inputs.py): unknown keys, syntax, types and
ranges; tasks, patterns and label words; what each recipe reads; values that parse but are wrong; models
and training settings."""

from __future__ import annotations

import pytest
from bad_inputs import (
    DIVERGES,
    TEACHER,
    Case,
    check_bad_input,
    encoder_model,
    raw_recipe,
    teacher_with_other_vocabulary,
    without_bitsandbytes,
)

CASES = [
    # ---- recipe files: keys, syntax, types, ranges
    Case(
        "misspelled-key",
        "icl_eval",
        {"temprature": 2.0},
        problem="unknown key 'temprature' in recipe file",
        fix="did you mean 'temperature'",
    ),
    Case(
        "invalid-yaml",
        "icl_eval",
        setup=raw_recipe("k: [2\n"),
        problem="is not valid YAML",
        fix="fix the syntax",
    ),
    Case(
        "yaml-not-a-mapping",
        "icl_eval",
        setup=raw_recipe("- k\n- 2\n"),
        problem="must be a mapping",
        fix="of key: value",
    ),
    Case(
        "int-given-a-float",
        "icl_eval",
        {"k": 2.5},
        problem=r"k: invalid int value: '2\.5'",
        fix="fix the value",
    ),
    Case(
        "bool-given-a-word",
        "icl_eval",
        {"resample_demonstrations": "sometimes"},
        problem="resample_demonstrations: Truthy value expected",
        fix="fix the value",
    ),
    Case(
        "list-for-one-value",
        "pattern_finetune",
        {"learning_rate": [0.1, 0.2]},
        problem="extra values",
        fix="takes one value",
    ),
    Case(
        "alpha-out-of-range",
        "context_distill",
        {**TEACHER, "alpha": 1.5},
        problem=r"alpha must be in \[0, 1\]",
        fix="1 = distillation only",
    ),
    Case(
        "unknown-loss",
        "context_distill",
        {**TEACHER, "loss": "kl"},
        problem="loss='kl' is not valid",
        fix="choose one of: forward_kl",
    ),
    Case(
        "unknown-scheduler",
        "pattern_finetune",
        {"lr_scheduler_type": "cosinus"},
        problem="lr_scheduler_type: invalid choice: 'cosinus'",
        fix="fix the value",
    ),
    Case(
        "negative-learning-rate",
        "pattern_finetune",
        {"learning_rate": -0.001},
        problem="learning_rate must be > 0",
        fix="set a positive value",
    ),
    Case(
        "learning-rate-that-diverges",
        "pattern_finetune",
        {"learning_rate": 5},
        problem="diverges at once",
        fix="use a value like 1e-5",
    ),
    Case(
        "zero-epochs",
        "pattern_finetune",
        {"max_steps": -1, "num_train_epochs": 0},
        problem="trains nothing",
        fix="set num_train_epochs > 0 or max_steps >= 1",
    ),
    # ---- recipe files: tasks, patterns, label words, demonstrations, lengths
    Case(
        "unknown-task", "icl_eval", {"task": "snli"}, problem="unknown task 'snli'", fix="choose one of: mnli"
    ),
    Case(
        "unknown-pattern",
        "icl_eval",
        {"pattern": "minimall"},
        problem="unknown pattern 'minimall'",
        fix="choose one of",
    ),
    Case(
        "template-without-hypothesis",
        "icl_eval",
        {"pattern": "custom", "template": "{premise} ?", "label_words": [" Yes", " No"]},
        problem=r"lacks \{hypothesis\}",
        fix=r"must contain both \{premise\} and \{hypothesis\}",
    ),
    Case(
        "label-words-collide",
        "icl_eval",
        {"label_words": [" Yes", " Yes question"]},
        problem="collide after tokenization",
        fix="choose words whose first tokens differ",
    ),
    Case(
        "one-label-word-for-two-labels",
        "icl_eval",
        {"label_words": [" Yes"]},
        problem="label_words has 1 words",
        fix="give one word per label",
    ),
    Case(
        "eval-task-with-other-labels",
        "icl_eval",
        {"task": "mnli_3way", "eval_tasks": ["hans"]},
        problem="eval task 'hans' has 2 labels",
        fix="evaluate on tasks with the same labels",
    ),
    Case(
        "more-demonstrations-than-the-pool",
        "icl_eval",
        {"k": 40},
        problem="need 20 of label 0 but only 12 are available",
        fix="ask for fewer or use a larger pool",
    ),
    Case(
        "prompt-longer-than-max-length",
        "icl_eval",
        {"max_length": 90},
        problem=r"the prompt is \d+ tokens \(2 demonstrations.* max_length=90",
        fix="lower k, raise max_length, or set drop_demonstrations_to_fit",
    ),
    Case(
        "query-longer-than-max-length",
        "icl_eval",
        {"max_length": 20},
        problem=r"a query with its answer is \d+ tokens, more than max_length=20",
        fix="raise max_length",
    ),
    # ---- recipe files: what each recipe reads
    Case(
        "teacher-in-pattern-finetune",
        "pattern_finetune",
        {"teacher_model_name_or_path": "t"},
        problem="reads no teacher",
        fix="remove teacher_model_name_or_path",
    ),
    Case(
        "alpha-in-pattern-finetune",
        "pattern_finetune",
        {"alpha": 0.5},
        problem="uses alpha=0",
        fix="remove alpha",
    ),
    Case(
        "distillation-without-teacher",
        "context_distill",
        problem="needs teacher_model_name_or_path",
        fix="run recipes/pattern_finetune.py",
    ),
    Case(
        "self-teacher-without-lora",
        "context_distill",
        {"teacher_model_name_or_path": "self"},
        problem="teacher 'self' is the student's base model",
        fix="needs student_mode: lora",
    ),
    Case(
        "distillation-with-alpha-0",
        "context_distill",
        {**TEACHER, "alpha": 0},
        problem="never reads the teacher",
        fix="set alpha > 0",
    ),
    Case(
        "teacher-setting-in-icl",
        "icl_eval",
        {"teacher_quantization": "8bit"},
        problem="teacher_quantization would be ignored",
        fix="set model_name_or_path to it",
    ),
    Case(
        "quantized-self-teacher",
        "context_distill",
        {"teacher_model_name_or_path": "self", "student_mode": "lora", "teacher_quantization": "8bit"},
        problem="cannot apply to teacher 'self'",
        fix="remove teacher_quantization",
    ),
    Case(
        "quantization-without-bitsandbytes",
        "context_distill",
        {**TEACHER, "teacher_quantization": "8bit"},
        setup=without_bitsandbytes,
        problem="needs bitsandbytes, which is not installed",
        fix=r"pip install 'distill-trainer\[quant\]'",
    ),
    # ---- values that parse but are wrong (class 3)
    Case(
        "label-words-read-as-booleans",
        "icl_eval",
        {"label_words": [True, False]},
        problem=r"label_words: YAML read an unquoted yes/no.*\(\[True, False\]\)",
        fix=r"quote the text, e\.g\.",
    ),
    Case(
        "pattern-read-as-a-boolean",
        "icl_eval",
        {"pattern": False},
        problem=r"pattern: YAML read .*\(False\)",
        fix="pattern: 'no'",
    ),
    Case(
        "negative-seed",
        "pattern_finetune",
        {"seed": -1},
        problem="seed must be >= 0, got -1",
        fix="fix it in the recipe file",
    ),
    Case(
        "negative-data-seed",
        "pattern_finetune",
        {"data_seed": -3},
        problem="data_seed must be >= 0, got -3",
        fix="or on the command line",
    ),
    Case(
        "eval-batch-size-0",
        "icl_eval",
        {"per_device_eval_batch_size": 0},
        problem="per_device_eval_batch_size must be >= 1, got 0",
        fix="fix it in the recipe",
    ),
    Case(
        "negative-demonstration-seed",
        "icl_eval",
        {"demonstration_seed": -1},
        problem="demonstration_seed must be >= 0",
        fix="got -1",
    ),
    Case(
        "lora-alpha-0",
        "pattern_finetune",
        {"student_mode": "lora", "lora_alpha": 0},
        problem="lora_alpha must be > 0",
        fix="lora_alpha / lora_r",
    ),
    # ---- models
    Case(
        "no-model",
        "icl_eval",
        {"model_name_or_path": None},
        problem="no model given",
        fix="set model_name_or_path",
    ),
    Case(
        "student-path-missing",
        "pattern_finetune",
        {"model_name_or_path": "no/such/model"},
        problem="cannot load the tokenizer of student 'no/such/model'",
        fix="give a local model directory",
    ),
    Case(
        "unknown-embedded-alias",
        "icl_eval",
        {"model_name_or_path": "embedded:nope"},
        problem="unknown embedded model 'embedded:nope'",
        fix="known: embedded:smollm2-135m",
    ),
    Case(
        "not-a-causal-lm",
        "pattern_finetune",
        setup=encoder_model,
        problem="is a distilbert model, not a causal language",
        fix="give a decoder-only LM",
    ),
    Case(
        "lora-target-absent",
        "pattern_finetune",
        {"student_mode": "lora", "lora_target_modules": ["c_attn"]},
        problem=r"lora_target_modules \['c_attn'\] are not modules of this model",
        fix="set lora_target_modules to some of its linear layers: .*q_proj",
    ),
    Case(
        "teacher-with-another-vocabulary",
        "context_distill",
        setup=teacher_with_other_vocabulary,
        problem=r"vocabularies differ \(teacher 5\d\d logits",
        fix="set distill_vocab: label_words",
    ),
    # ---- training
    Case(
        "loss-becomes-nan",
        "context_distill",
        DIVERGES,
        problem="the loss is nan at step 2",
        fix="last good checkpoint: .*checkpoint-1.*Lower the learning rate",
        leaves="checkpoint",
    ),
    Case(
        "loss-becomes-nan-before-a-checkpoint",
        "context_distill",
        {**DIVERGES, "save_strategy": "no"},
        problem="the loss is nan at step 2",
        fix=r"last good checkpoint: none\). Lower the learning rate",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch):
    check_bad_input(case, tmp_path, tiny_dirs, capsys, monkeypatch)
