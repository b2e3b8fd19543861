"""Aligning two tokenizations of one reply by characters: two tiny tokenizers of different families
(byte-level BPE with 400 tokens, SentencePiece-style with 300) split the same texts differently; every
character and every token lands in exactly one span, and the pairing and exact matches follow."""

from __future__ import annotations

import pytest

from distill_trainer.testing import (
    SENTENCES,
    build_chat_tokenizer,
    build_metaspace_tokenizer,
    build_tokenizer,
)
from distill_trainer.views.cross_tokenizer import CrossTokenizerReplies
from distill_trainer.views.token_alignment import align_tokens, decoded_offsets, pair_student_tokens
from distill_trainer.views.vocabulary_map import shared_vocabulary

TEXTS = [*SENTENCES, "The lawyer saw the cat. café € Yes", "  two  spaces\nand a newline ", "x"]


@pytest.fixture(scope="module")
def pair():
    return build_tokenizer(), build_metaspace_tokenizer()


def _encode(tokenizer, text):
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return encoded["input_ids"], encoded["offset_mapping"]


@pytest.mark.parametrize("text", TEXTS)
def test_every_character_and_every_token_is_in_exactly_one_span(pair, text):
    (student_ids, student_offsets), (teacher_ids, teacher_offsets) = (_encode(t, text) for t in pair)
    spans = align_tokens(len(text), student_offsets, teacher_offsets)
    covered = [i for span in spans for i in range(span.start, span.end)]
    assert covered == list(range(len(text)))  # each character once, in order
    assert [i for span in spans for i in span.student] == list(range(len(student_ids)))
    assert [j for span in spans for j in span.teacher] == list(range(len(teacher_ids)))
    assert all(span.student and span.teacher and span.end > span.start for span in spans)


def test_the_two_tokenizers_really_split_differently_and_one_to_one_spans_spell_their_text(pair):
    student, teacher = pair
    text = TEXTS[-3]
    (student_ids, student_offsets), (teacher_ids, teacher_offsets) = (_encode(t, text) for t in pair)
    spans = align_tokens(len(text), student_offsets, teacher_offsets)
    assert any(not span.one_to_one for span in spans) and any(span.one_to_one for span in spans)
    for span in spans:
        if span.one_to_one and text[span.start : span.end].isascii():
            assert student.decode([student_ids[span.student.start]]) == text[span.start : span.end]


def test_identical_tokenizations_pair_every_token_with_itself(pair):
    tokenizer = pair[0]
    text = TEXTS[0]
    ids, offsets = _encode(tokenizer, text)
    spans = align_tokens(len(text), offsets, offsets)
    pair_index, exact = pair_student_tokens(spans, lambda i, j: ids[i] == ids[j])
    assert pair_index == list(range(len(ids))) and all(exact)


def test_a_span_of_several_tokens_pairs_its_first_tokens_and_spreads_the_rest():
    # characters "abcdef": the student writes a|bcdef (2 tokens), the teacher ab|cd|ef... no common
    # boundary before 6, so one span: 2 student tokens against 3 teacher tokens
    spans = align_tokens(6, [(0, 1), (1, 6)], [(0, 2), (2, 4), (4, 6)])
    assert len(spans) == 1 and not spans[0].one_to_one
    pair_index, exact = pair_student_tokens(spans, lambda i, j: True)
    assert pair_index == [0, 1] and exact == [False, False]
    # and the other way round: 3 student tokens share 2 teacher tokens, the first two meeting first
    spans = align_tokens(6, [(0, 2), (2, 4), (4, 6)], [(0, 1), (1, 6)])
    assert pair_student_tokens(spans, lambda i, j: True)[0] == [0, 0, 1]


def test_a_one_to_one_span_is_no_exact_match_when_the_vocabularies_do_not_pair_its_tokens():
    spans = align_tokens(2, [(0, 1), (1, 2)], [(0, 1), (1, 2)])
    _, exact = pair_student_tokens(spans, lambda i, j: i == 0)
    assert exact == [True, False]


def test_decoded_offsets_of_ids_agree_with_the_tokenizer_offsets_and_merge_split_characters(pair):
    tokenizer = pair[0]
    text = "The lawyer saw the cat. café € Yes"
    ids, offsets = _encode(tokenizer, text)
    decoded, from_ids = decoded_offsets(tokenizer, ids)
    assert decoded == text
    # "é" and "€" are split into bytes: each byte token ends where its letter does, as the tokenizer says
    assert [end for _, end in from_ids] == [end for _, end in offsets]
    spans = align_tokens(len(text), from_ids, offsets)
    assert all(span.student == span.teacher for span in spans)  # the same tokens on both sides
    assert len(spans) == len(ids) - 3  # the bytes of each split letter form one span


def test_shared_vocabulary_pairs_tokens_spelt_in_other_conventions(pair):
    student, teacher = pair
    pairs = shared_vocabulary(student, teacher)
    the_student = student.convert_tokens_to_ids("Ġthe")
    the_teacher = teacher.convert_tokens_to_ids("\u2581the")
    assert pairs[the_student] == the_teacher  # " the" in byte-level and in SentencePiece spelling
    assert len(set(pairs.values())) == len(pairs)  # one to one
    assert shared_vocabulary(student, student) == {i: i for i in student.get_vocab().values()}


def test_replies_in_both_tokenizations_end_with_each_ones_end_of_turn_as_one_exact_span(pair):
    student = build_chat_tokenizer()
    teacher = build_chat_tokenizer(tokenizer=build_metaspace_tokenizer())
    replies = CrossTokenizerReplies(student, teacher)
    reply = replies.from_text("The lawyer saw the cat.")
    end_student, end_teacher = (
        student.convert_tokens_to_ids("<|im_end|>"),
        teacher.convert_tokens_to_ids("<|im_end|>"),
    )
    assert reply.student_ids[-1] == end_student and reply.teacher_ids[-1] == end_teacher
    assert reply.pair_index[-1] == len(reply.teacher_ids) - 1 and reply.exact_match[-1]
    assert len(reply.pair_index) == len(reply.student_ids) == len(reply.exact_match)
    # a rollout keeps the student's sampled ids, even a non-canonical split, and ends like the text
    sampled = [student.convert_tokens_to_ids(t) for t in ("T", "he", "Ġlawyer")] + [end_student]
    rollout = replies.from_student_ids(sampled)
    assert rollout.student_ids == sampled
    assert rollout.teacher_ids == teacher("The lawyer", add_special_tokens=False)["input_ids"] + [end_teacher]
    assert rollout.exact_match[-2:] == [True, True] and rollout.exact_match[:2] == [False, False]
    cut = replies.from_student_ids(sampled[:-1])  # cut off at the token limit: no end on either side
    assert cut.teacher_ids == rollout.teacher_ids[:-1]
