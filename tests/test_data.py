"""The task, the dataset, the tokenizer and the loss mask (course_utils.data)."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils import data
from course_utils.runtime import assets_dir

SMALL = {"train": 60, "validation": 10, "test": 10}


@pytest.fixture(scope="module")
def tokenizer():
    splits = data.make_dataset(seed=1, sizes=SMALL)
    texts = data.pretraining_corpus(300, seed=1) + [
        data.make_prompt(ex["request"]) + data.make_answer(ex["record"]) for rows in splits.values() for ex in rows]
    return data.build_tokenizer(texts)


def test_clock_conversion():
    assert data.clock_12h(15, 30) == "3:30 pm" and data.clock_24h(15, 30) == "15:30"
    assert data.clock_12h(9, 0) == "9 am" and data.clock_24h(9, 0) == "09:00"
    assert data.clock_12h(12, 0) == "noon" and data.clock_12h(12, 15) == "12:15 pm"
    assert data.clock_12h(8, 45) == "8:45 am"


def test_parse_record_rejects_non_records():
    good = "what: lunch | who: Maria | day: Tuesday | time: 15:30 | place: Paris"
    assert data.parse_record(good + "\nRecord: what: call") == data.parse_record(good)
    assert data.parse_record(good.replace("place: Paris", "city: Paris")) is None
    assert data.parse_record("what: lunch | who: Maria") is None
    assert data.parse_record("Booked: a lunch with Maria") is None
    assert data.parse_record(good + " | who: Tom") is None


def test_splits_are_disjoint_and_reproducible():
    a = data.make_dataset(seed=5, sizes=SMALL)
    b = data.make_dataset(seed=5, sizes=SMALL)
    assert a == b
    requests = [ex["request"] for rows in a.values() for ex in rows]
    assert len(requests) == len(set(requests)) == sum(SMALL.values())
    assert data.make_dataset(seed=6, sizes=SMALL) != a


def test_write_and_load(tmp_path):
    splits = data.make_dataset(seed=2, sizes=SMALL)
    data.write_dataset(tmp_path, splits)
    assert data.load_split("test", tmp_path) == splits["test"]
    assert data.load_split("train", tmp_path, limit=7) == splits["train"][:7]
    assert "License" in (tmp_path / "README.md").read_text()
    with pytest.raises(FileNotFoundError, match="make_dataset"):
        data.load_split("test", tmp_path / "nowhere")


def test_tokenizer_round_trip_and_saving(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    ex = data.make_dataset(seed=1, sizes=SMALL)["test"][0]
    text = data.make_prompt(ex["request"]) + data.make_answer(ex["record"])
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text  # decoding gives the exact text back
    # one token per word: the Ġ marks a leading space, as in Llama 3's tokenizer
    assert "ĠTuesday" in tokenizer.get_vocab() and "Ġ|" in tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert [loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.unk_token_id] == [0, 1, 2, 3]


def test_loss_mask_covers_the_answer_and_eos_only(tokenizer):
    ex = data.make_dataset(seed=1, sizes=SMALL)["train"][3]
    enc = data.encode_example(tokenizer, ex)
    prompt_ids = data.encode_prompt(tokenizer, ex)
    n_prompt = len(prompt_ids)
    assert enc["input_ids"][:n_prompt] == prompt_ids
    assert all(label == data.IGNORE_INDEX for label in enc["labels"][:n_prompt])
    answer = enc["labels"][n_prompt:]
    assert answer == enc["input_ids"][n_prompt:] and answer[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(answer, skip_special_tokens=True) == data.make_answer(ex["record"])
    shown = data.show_tokens(tokenizer, ex)
    assert [t for t, _, counted in shown if counted][0] == "Ġwhat"


def test_truncation_cuts_the_prompt_not_the_answer(tokenizer):
    ex = data.make_dataset(seed=1, sizes=SMALL)["train"][0]
    full = data.encode_example(tokenizer, ex)
    cut = data.encode_example(tokenizer, ex, max_length=30)
    assert len(cut["input_ids"]) == 30
    assert cut["labels"][-25:] == full["labels"][-25:]
    n_answer = sum(label != data.IGNORE_INDEX for label in full["labels"])
    assert sum(label != data.IGNORE_INDEX for label in cut["labels"]) == n_answer


def test_padding_right_and_left():
    feats = [{"input_ids": [1, 5, 6], "labels": [-100, 5, 6]}, {"input_ids": [1, 7], "labels": [-100, 7]}]
    right = data.pad_batch(feats, pad_id=0)
    assert right["input_ids"].tolist() == [[1, 5, 6], [1, 7, 0]]
    assert right["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert right["labels"].tolist() == [[-100, 5, 6], [-100, 7, -100]]
    left = data.pad_batch(feats, pad_id=0, side="left")
    assert left["input_ids"].tolist() == [[1, 5, 6], [0, 1, 7]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    with pytest.raises(ValueError):
        data.pad_batch(feats, 0, side="middle")


def test_batches_are_a_reproducible_function_of_the_step():
    feats = [{"input_ids": [1, i + 4], "labels": [-100, i + 4]} for i in range(10)]
    b = data.Batches(feats, batch_size=3, pad_id=0, seed=4)
    assert b.per_epoch == 3
    epoch0 = torch.cat([b.batch(i)["input_ids"][:, 1] for i in range(3)]).tolist()
    assert len(set(epoch0)) == 9  # no example twice in an epoch
    assert torch.equal(b.batch(4)["input_ids"], data.Batches(feats, 3, 0, seed=4).batch(4)["input_ids"])
    assert not torch.equal(b.batch(0)["input_ids"], data.Batches(feats, 3, 0, seed=5).batch(0)["input_ids"])
    it = iter(b)
    assert torch.equal(next(it)["input_ids"], b.batch(0)["input_ids"])


def test_score():
    exs = data.make_dataset(seed=1, sizes=SMALL)["test"][:4]
    preds = [data.make_answer(exs[0]["record"]), data.make_answer(exs[1]["record"]) + "\nmore text",
             data.make_answer({**exs[2]["record"], "who": "Nobody"}), "not a record"]
    s = data.score(preds, exs)
    assert s["exact_match"] == 0.5 and s["n"] == 4
    assert s["field_accuracy"]["who"] == 0.5 and s["field_accuracy"]["day"] == 0.75


def test_prepare_tokenizer_adds_a_pad_token(tokenizer):
    class NoPad:
        pad_token_id, pad_token, eos_token = None, None, "</s>"
    t = data.prepare_tokenizer(NoPad())
    assert t.pad_token == "</s>"


def test_shipped_dataset_matches_the_generator():
    folder = assets_dir() / "dataset"
    if not (folder / "test.jsonl").exists():
        pytest.skip("assets/dataset not generated yet (python scripts/make_dataset.py)")
    splits = data.make_dataset()
    for split, rows in splits.items():
        assert data.load_split(split) == rows, f"assets/dataset/{split}.jsonl differs from make_dataset()"
