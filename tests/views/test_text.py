import pytest
import torch

from distill_trainer.errors import UsageError
from distill_trainer.views.text import TwoViewCollator, build_views

DEMOS = "The cat sat on the mat question: A cat is sitting. Yes or No? answer: Yes"
QUERY = "A man is playing a guitar question: Nobody plays music. Yes or No? answer:"


@pytest.mark.parametrize("answer", [" No", " No question: Yes"])
def test_answer_ids_identical_and_positions_predict_them(tokenizer, answer):
    v = build_views(tokenizer, QUERY, answer, DEMOS)
    expected = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert v["answer_ids"] == expected
    for ids_key, pos_key in (
        ("input_ids", "answer_positions"),
        ("teacher_input_ids", "teacher_answer_positions"),
    ):
        ids, pos = v[ids_key], v[pos_key]
        assert [ids[p + 1] for p in pos] == expected
        assert pos[-1] == len(ids) - 2
    assert v["teacher_input_ids"][-len(v["input_ids"]) :] == v["input_ids"]
    assert len(v["teacher_input_ids"]) > len(v["input_ids"])


@pytest.mark.parametrize("side", ["left", "right"])
def test_collator_pads_both_views_and_keeps_positions(tokenizer, side):
    feats = [
        build_views(tokenizer, QUERY, " No", DEMOS),
        build_views(tokenizer, "Two dogs ?", " Yes or No", ""),
    ]
    batch = TwoViewCollator(pad_token_id=tokenizer.pad_token_id, padding_side=side)(feats)
    for prefix in ("", "teacher_"):
        ids, pos = batch[f"{prefix}input_ids"], batch[f"{prefix}answer_positions"]
        mask = batch["answer_mask"]
        rows, cols = mask.nonzero(as_tuple=True)
        assert torch.equal(ids[rows, pos[rows, cols] + 1], batch["answer_ids"][rows, cols])
        att = batch[f"{prefix}attention_mask"]
        assert (att.sum(1) == torch.tensor([len(f[f"{prefix}input_ids"]) for f in feats])).all()
        if side == "left":
            assert (att[:, -1] == 1).all()
        else:
            assert (att[:, 0] == 1).all()
    assert batch["answer_mask"].tolist() == [[False, False, True], [True, True, True]]
    # labels mark exactly the answer tokens
    assert int((batch["labels"] != -100).sum()) == 4
    assert batch["answer_positions"][0, 0] == batch["answer_positions"][0, 2]


def test_empty_answer_is_rejected(tokenizer):
    with pytest.raises(UsageError, match="empty after tokenization"):
        build_views(tokenizer, QUERY, "", DEMOS)
