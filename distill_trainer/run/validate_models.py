"""Step 6 of the validate step (validate.py): the models, from their tokenizers and configs only, never
their weights: label words, teacher/student vocabularies, the student mode on a weightless copy, and
every prompt against the model's position limit.
"""

from __future__ import annotations

from distill_trainer.errors import UsageError
from distill_trainer.models.loading import (
    bias_switches_to_add,
    check_lora_target_modules,
    check_vocabulary_sizes_and_tokens,
    resolve_model_path,
)
from distill_trainer.nli.data import NLIData, first_token_ids, model_max_length
from distill_trainer.nli.demonstrations import fit_demonstrations
from distill_trainer.teacher.teacher import is_self

EMBEDDED_HINT = (
    "give a local model directory, an embedded alias such as embedded:smollm2-135m, or a Hub id "
    "with network access"
)


def _load(what: str, role: str, name: str, loader):
    try:
        return loader(resolve_model_path(name))
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:
        reason = " ".join(str(error).split()).split(". ")[0][:200]  # the first sentence says what went wrong
        raise UsageError(
            f"cannot load the {what} of {role} {name!r} ({type(error).__name__}: {reason}); {EMBEDDED_HINT}"
        ) from None


def load_tokenizer_checked(role: str, name: str):
    from distill_trainer.models.loading import load_tokenizer

    return _load("tokenizer", role, name, lambda _: load_tokenizer(name))


def load_config_checked(role: str, name: str):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_config = _load("config", role, name, AutoConfig.from_pretrained)
    if type(model_config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UsageError(
            f"{role} {name!r} is a {model_config.model_type} model, not a causal language model; "
            "give a decoder-only LM (Llama, OPT, SmolLM2, Gemma, ...)"
        )
    return model_config


def weightless_model(model_config):
    """The model built on the `meta` device: its modules and parameter names, no memory for weights."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(model_config)


def check_student_mode(student_args, model_config) -> None:
    if student_args.student_mode == "lora":
        check_lora_target_modules(weightless_model(model_config), student_args.lora_target_modules)
    elif (
        student_args.student_mode == "bitfit"
        and not bias_switches_to_add(model_config)
        and not any(name.endswith(".bias") for name, _ in weightless_model(model_config).named_parameters())
    ):
        raise UsageError(
            f"student_mode: bitfit trains biases only, and this {model_config.model_type} model has "
            "none; use student_mode: lora or full"
        )


def check_vocabularies(student_tokenizer, teacher_tokenizer, student_config, teacher_config) -> None:
    """distill_vocab: full compares logit i of one model with logit i of the other (from the configs'
    vocabulary sizes, before any weights load)."""
    check_vocabulary_sizes_and_tokens(
        getattr(student_config, "vocab_size", None),
        getattr(teacher_config, "vocab_size", None),
        student_tokenizer,
        teacher_tokenizer,
    )


def _longest(tokenizer, rows, pattern):
    """The row with the longest query (in tokens): the one most likely to exceed the position limit."""
    queries = [pattern.query(row) for row in rows]
    lengths = [len(ids) for ids in tokenizer(queries, add_special_tokens=False)["input_ids"]]
    index = max(range(len(rows)), key=lengths.__getitem__)
    return rows[index], queries[index]


def check_prompt_fits(tokenizer, data: NLIData, rows, max_length, drop: bool) -> None:
    """The longest query with its demonstrations and longest label word fits the model's positions."""
    if max_length is None or rows is None or len(rows) == 0:
        return
    rows = list(rows)
    row, query = _longest(tokenizer, rows, data.pattern)
    answer = max(
        data.pattern.label_words, key=lambda w: len(tokenizer(w, add_special_tokens=False)["input_ids"])
    )
    fit_demonstrations(tokenizer, data.sampler.for_query(row), query, answer, max_length, drop)


def check_rows_fit(tokenizer, rows, pattern, max_length, what: str, role: str) -> None:
    """Every row's query and longest label word, as `role` reads it without demonstrations, fits its
    `max_length` positions; the first row that does not is named. Queries are never truncated."""
    if max_length is None or rows is None or len(rows) == 0:
        return
    rows = list(rows)
    ids = tokenizer([pattern.query(row) for row in rows], add_special_tokens=False)["input_ids"]
    answer = max(len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in pattern.label_words)
    extra = len(tokenizer("", add_special_tokens=True)["input_ids"])  # a BOS token the views may add
    for index, query in enumerate(ids):
        length = len(query) + answer + extra
        if length > max_length:
            premise = " ".join(str(rows[index]["premise"]).split())[:50]
            raise UsageError(
                f"{what} row {index + 1} is {length} tokens with its answer, more than the {role}'s "
                f"{max_length} positions (premise starts {premise!r}); shorten or remove that row "
                "(queries are never truncated)"
            )


def check_models_and_prompts(
    recipe, student_args, data_args, config, result, tokenizer, check_models: bool
) -> None:
    """Step 6; each check that passes is added to `result.checks` (a `validate.ValidatedRecipe`)."""
    name = student_args.model_name_or_path
    role = "model" if recipe == "icl_eval" else "student"
    student_tokenizer = tokenizer or load_tokenizer_checked(role, name)
    label_ids = first_token_ids(student_tokenizer, result.data.pattern)
    words = ", ".join(f"{w!r}->{i}" for w, i in zip(result.data.pattern.label_words, label_ids))
    if not check_models:
        result.checks.append((role, f"label words {words}"))
        return
    student_config = load_config_checked(role, name)
    if recipe == "icl_eval":
        max_length = model_max_length(student_config, data_args)
        for task, rows in result.data.eval_sets.items():
            if data_args.k:
                check_prompt_fits(
                    student_tokenizer, result.data, rows, max_length, data_args.drop_demonstrations_to_fit
                )
            check_rows_fit(
                student_tokenizer, rows, result.data.pattern, max_length, f"{task} evaluation", role
            )
        result.checks.append(
            (
                role,
                (
                    f"{name}: {student_config.model_type}, label words {words}, prompts fit "
                    f"{max_length} positions"
                ),
            )
        )
        return
    check_student_mode(student_args, student_config)
    positions = getattr(student_config, "max_position_embeddings", None)
    check_rows_fit(
        student_tokenizer, result.data.train_rows, result.data.pattern, positions, "training", role
    )
    for task, rows in result.data.eval_sets.items():
        check_rows_fit(student_tokenizer, rows, result.data.pattern, positions, f"{task} evaluation", role)
    result.checks.append(
        (role, f"{name}: {student_config.model_type}, {student_args.student_mode}, label words {words}")
    )
    teacher = config.teacher_model_name_or_path
    if recipe != "context_distill":
        return
    if is_self(teacher):
        teacher_tokenizer, teacher_config = student_tokenizer, student_config
    else:
        teacher_tokenizer = load_tokenizer_checked("teacher", teacher)
        teacher_config = load_config_checked("teacher", teacher)
        first_token_ids(teacher_tokenizer, result.data.pattern)
        if config.distill_vocab == "full":
            check_vocabularies(student_tokenizer, teacher_tokenizer, student_config, teacher_config)
    max_length = model_max_length(teacher_config, data_args)
    check_rows_fit(
        teacher_tokenizer, result.data.train_rows, result.data.pattern, max_length, "training", "teacher"
    )
    check_prompt_fits(
        teacher_tokenizer,
        result.data,
        result.data.train_rows,
        max_length,
        data_args.drop_demonstrations_to_fit,
    )
    result.checks.append(
        (
            "teacher",
            (
                f"{teacher}: {teacher_config.model_type}, {config.distill_vocab} vocabulary, "
                f"quantization {config.teacher_quantization}, prompts fit {max_length} "
                "positions"
            ),
        )
    )
