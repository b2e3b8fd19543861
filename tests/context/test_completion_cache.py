"""Teacher completions: batched generation through the shared prefix KV cache gives the uncached replies,
and the on-disk cache is keyed on (context, prompt, teacher, decoding settings), reused without running the
model, checksummed and written atomically."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from distill_trainer import code_digest
from distill_trainer.context.completion_cache import completion_cache_path, teacher_completions
from distill_trainer.errors import UsageError
from distill_trainer.teacher.generation import GenerationSettings, generate_replies
from distill_trainer.testing import build_chat_tokenizer, build_model
from distill_trainer.views.chat import chat_prompt_ids, shared_prefix_length, stop_token_ids

CONTEXT = "Be brief."
PROMPTS = ["Write a cat.", "A dog runs in the park", "x", "The doctor saw the lawyer"]
GREEDY = GenerationSettings(max_new_tokens=6)


@pytest.fixture(scope="module")
def chat_tokenizer():
    return build_chat_tokenizer()


@pytest.fixture
def model(chat_tokenizer):
    return build_model(len(chat_tokenizer), seed=2).eval()


def rows(context=CONTEXT, prompts=PROMPTS):
    return [{"context": context, "prompt": p} for p in prompts]


def refuse_to_run(model):
    def fail(*args, **kwargs):
        raise AssertionError("the model ran although every completion was cached")

    model.forward = fail
    return model


def generate(model, tok, settings, prefix_length, batch_size):
    prompts = [chat_prompt_ids(tok, p, CONTEXT) for p in PROMPTS]
    return generate_replies(
        model,
        prompts,
        settings,
        stop_ids=stop_token_ids(tok),
        pad_token_id=tok.pad_token_id,
        prefix_length=prefix_length,
        batch_size=batch_size,
    )


def test_prefix_cache_and_batching_give_the_unbatched_uncached_replies(model, chat_tokenizer):
    shared = shared_prefix_length(chat_tokenizer, CONTEXT)
    assert shared > 0
    reference = generate(model, chat_tokenizer, GREEDY, prefix_length=0, batch_size=1)
    assert generate(model, chat_tokenizer, GREEDY, prefix_length=shared, batch_size=3) == reference
    assert all(len(reply) == GREEDY.max_new_tokens for reply in reference)  # a random model never stops
    # the same as a step-by-step argmax over the full sequence, without any cache
    ids = chat_prompt_ids(chat_tokenizer, PROMPTS[1], CONTEXT)
    with torch.no_grad():
        for _ in range(GREEDY.max_new_tokens):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert reference[1] == ids[-GREEDY.max_new_tokens :]


def test_finished_rows_leave_the_batch_and_the_others_reply_as_alone(chat_tokenizer):
    model = build_model(len(chat_tokenizer), seed=3).eval()  # its replies differ between the prompts
    prompts = [chat_prompt_ids(chat_tokenizer, p, CONTEXT) for p in PROMPTS]
    shared = shared_prefix_length(chat_tokenizer, CONTEXT)
    options = dict(pad_token_id=chat_tokenizer.pad_token_id, prefix_length=shared)
    long = GenerationSettings(max_new_tokens=8)
    alone = generate_replies(model, prompts, long, stop_ids=[-1], batch_size=1, **options)

    def cut_at(stops):
        return [
            reply[: next((i for i, t in enumerate(reply) if t in stops), len(reply) - 1) + 1]
            for reply in alone
        ]

    # a stop token that ends some replies early and leaves another running to the end
    stops = next(
        {token}
        for reply in alone
        for token in reply[1:]
        if min(map(len, cut_at({token}))) < long.max_new_tokens == max(map(len, cut_at({token})))
    )
    expected = cut_at(stops)
    rows_run = []
    hook = model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_run.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    try:
        got = generate_replies(model, prompts, long, stop_ids=sorted(stops), batch_size=4, **options)
    finally:
        hook.remove()
    assert got == expected
    assert max(rows_run) == 4 and rows_run[-1] < 4  # the finished rows stopped being computed


def test_sampling_is_seeded(model, chat_tokenizer):
    sampled = GenerationSettings(max_new_tokens=6, do_sample=True, temperature=1.5, seed=3)
    first = generate(model, chat_tokenizer, sampled, 0, 2)
    assert generate(model, chat_tokenizer, sampled, 0, 2) == first
    assert first != generate(model, chat_tokenizer, GREEDY, 0, 2)


def test_a_reply_stops_at_the_end_of_turn(model, chat_tokenizer, tmp_path):
    end = stop_token_ids(chat_tokenizer)[-1]

    def always_end(module, args, output):
        output.logits[..., end] = 1e4  # every position now predicts the end of turn
        return output

    model.register_forward_hook(always_end)
    replies = generate(model, chat_tokenizer, GREEDY, 0, 4)
    assert replies == [[end]] * len(PROMPTS)
    _, info = teacher_completions(model, chat_tokenizer, rows(), GREEDY, teacher_id="t", cache_dir=tmp_path)
    assert info["cut_off"] == 0  # every reply ended with its stop token


def test_completions_are_cached_and_reused_without_the_model(model, chat_tokenizer, tmp_path):
    options = dict(teacher_id="teacher-a", cache_dir=tmp_path, batch_size=3)
    first, info = teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    assert info["generated"] == len(PROMPTS) and info["reused"] == 0
    assert all(len(r["ids"]) == GREEDY.max_new_tokens and isinstance(r["text"], str) for r in first)
    assert info["cut_off"] == len(PROMPTS)  # a random model never stops: every reply hit the limit
    assert [p.name for p in tmp_path.iterdir()] == [
        f"{completion_cache_path(chat_tokenizer, GREEDY, 'teacher-a', 'system')[0].name}"
    ]
    again, info = teacher_completions(refuse_to_run(model), chat_tokenizer, rows(), GREEDY, **options)
    assert again == first and info == {
        "path": info["path"],
        "reused": len(PROMPTS),
        "generated": 0,
        "cut_off": len(PROMPTS),
    }


@pytest.mark.parametrize(
    "change",
    ["teacher", "max_new_tokens", "sampling", "context", "prompt", "placement", "code", "packages"],
)
def test_each_key_component_gives_fresh_completions(model, chat_tokenizer, tmp_path, change, monkeypatch):
    options = dict(teacher_id="teacher-a", cache_dir=tmp_path, placement="system")
    teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    settings, data = GREEDY, rows()
    if change == "teacher":
        options["teacher_id"] = "teacher-b"
    elif change == "max_new_tokens":
        settings = GenerationSettings(max_new_tokens=5)
    elif change == "sampling":
        settings = GenerationSettings(max_new_tokens=6, do_sample=True)
    elif change == "context":
        data = rows(context="Be long.")
    elif change == "prompt":
        data = rows(prompts=PROMPTS[:3] + ["a new prompt"])
    elif change == "code":  # how replies are decoded
        files = {**code_digest.library_files(), "distill_trainer/teacher/generation.py": "0" * 64}
        monkeypatch.setattr(code_digest, "library_files", lambda: files)
    elif change == "packages":
        versions = {**code_digest.package_versions(), "transformers": "99.0"}
        monkeypatch.setattr(code_digest, "package_versions", lambda: versions)
    else:
        options["placement"] = "user"
    with pytest.raises(AssertionError, match="the model ran"):
        teacher_completions(refuse_to_run(model), chat_tokenizer, data, settings, **options)


def test_only_new_rows_are_generated(model, chat_tokenizer, tmp_path):
    options = dict(teacher_id="t", cache_dir=tmp_path)
    teacher_completions(model, chat_tokenizer, rows(prompts=PROMPTS[:2]), GREEDY, **options)
    _, info = teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    assert (info["reused"], info["generated"]) == (2, 2)


def test_greedy_ignores_sampling_settings_in_the_key(model, chat_tokenizer, tmp_path):
    options = dict(teacher_id="t", cache_dir=tmp_path)
    teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    other = GenerationSettings(max_new_tokens=6, temperature=0.3, seed=9)  # still greedy
    _, info = teacher_completions(refuse_to_run(model), chat_tokenizer, rows(), other, **options)
    assert info["generated"] == 0


def test_a_tampered_cache_is_regenerated_with_one_warning(model, chat_tokenizer, tmp_path, caplog):
    options = dict(teacher_id="t", cache_dir=tmp_path)
    first, info = teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    stored = json.loads(open(info["path"]).read())
    next(iter(stored["entries"].values()))["text"] = "edited"
    open(info["path"], "w").write(json.dumps(stored))
    with caplog.at_level(logging.WARNING):
        again, info = teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    assert info["generated"] == len(PROMPTS) and again == first
    assert sum("fails its checksum" in r.getMessage() for r in caplog.records) == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_bad_generation_settings_are_one_error_line():
    for bad in (dict(max_new_tokens=0), dict(temperature=0.0), dict(top_p=0.0)):
        with pytest.raises(UsageError) as error:
            GenerationSettings(**bad)
        assert "\n" not in str(error.value)


def test_an_interrupted_generation_keeps_the_finished_batches(model, chat_tokenizer, tmp_path, monkeypatch):
    from distill_trainer.teacher import generation

    real, calls = generation._generate_batch, {"n": 0}

    def second_batch_fails(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "_generate_batch", second_batch_fails)
    options = dict(teacher_id="t", cache_dir=tmp_path, batch_size=3)
    with pytest.raises(KeyboardInterrupt):
        teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    monkeypatch.setattr(generation, "_generate_batch", real)
    _, info = teacher_completions(model, chat_tokenizer, rows(), GREEDY, **options)
    assert (info["reused"], info["generated"]) == (3, 1)
