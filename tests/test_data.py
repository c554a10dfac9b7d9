"""The task, the dataset, the tokenizer and the loss mask (course_utils.data)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from course_utils import data, plots, pretraining
from course_utils.runtime import assets_dir

SMALL = {"train": 60, "validation": 10, "test": 10}


@pytest.fixture(scope="module")
def tokenizer():
    splits = data.make_dataset(seed=1, sizes=SMALL)
    texts = pretraining.pretraining_corpus(300, seed=1) + [
        data.make_prompt(ex["request"]) + data.make_answer(ex["record"]) for rows in splits.values() for ex in rows]
    return pretraining.build_tokenizer(texts)


def test_clock_conversion():
    assert data.clock_12h(15, 30) == "3:30 pm" and data.clock_24h(15, 30) == "15:30"
    assert data.clock_12h(9, 0) == "9 am" and data.clock_24h(9, 0) == "09:00"
    assert data.clock_12h(12, 0) == "noon" and data.clock_12h(12, 30) == "12:30 pm"
    assert data.clock_12h(8, 30) == "8:30 am"


@given(st.integers(0, 2**32 - 1))
@settings(max_examples=200, deadline=None)
def test_every_example_is_consistent(seed):
    ex = data.make_example(random.Random(seed))
    rec, request = ex["record"], ex["request"]
    assert data.parse_record(ex["target"]) == rec
    assert data.parse_record(data.make_answer(rec)) == rec
    assert ex["target"] == " | ".join(f"{k} {rec[k]}" for k in data.FIELDS)
    # every value is the normalized form of words of the request
    assert rec["for"].isupper() and f"for {rec['for'].lower()}" in request
    assert rec["with"].islower() and f"with {rec['with'].capitalize()}" in request
    assert any(day.startswith(rec["on"]) and day in request for day in data.DAYS)
    said = request.lower()  # a template may start with "At", "In" or "On"
    assert any(code == rec["in"] and f"in {city.lower()}" in said for city, code in data.CITY_CODES.items())
    hour, minute = map(int, rec["at"].split(":"))
    assert f"at {data.clock_12h(hour, minute)}" in said


def test_parse_record_rejects_non_records():
    good = "for LUNCH | with maria | on Tue | at 15:30 | in PAR"
    expected = {"for": "LUNCH", "with": "maria", "on": "Tue", "at": "15:30", "in": "PAR"}
    assert data.parse_record(good) == expected
    assert data.parse_record(" " + good + "\nRecord: for TEA") == expected  # only the first line counts
    assert data.parse_record(good.replace("in PAR", "city PAR")) is None
    assert data.parse_record("for LUNCH | with maria") is None
    assert data.parse_record("for LUNCH, with maria, on Tue, at 15:30, in PAR.") is None  # notes are no record
    assert data.parse_record(good + " | with tom") is None
    assert data.parse_record("for | with maria | on Tue | at 15:30 | in PAR") is None


def test_splits_are_disjoint_and_reproducible():
    a = data.make_dataset(seed=5, sizes=SMALL)
    b = data.make_dataset(seed=5, sizes=SMALL)
    assert a == b
    requests = [ex["request"] for rows in a.values() for ex in rows]
    assert len(requests) == len(set(requests)) == sum(SMALL.values())
    assert data.make_dataset(seed=6, sizes=SMALL) != a


def test_pretraining_corpus_never_shows_the_task():
    splits = data.make_dataset(seed=1, sizes=SMALL)
    exclude = {ex["request"] for rows in splits.values() for ex in rows}
    docs = pretraining.pretraining_corpus(500, seed=3, exclude=exclude)
    assert docs == pretraining.pretraining_corpus(500, seed=3, exclude=exclude)
    n_notes, orders = 0, set()
    for doc in docs:
        assert data.INSTRUCTION not in doc and "Record" not in doc and "|" not in doc
        request, _, notes = doc.partition("\nNotes: ")
        assert request.startswith("Request: ") and request[len("Request: "):] not in exclude
        if notes:  # all five details, in a random order
            n_notes += 1
            keys = [item.split(" ", 1)[0] for item in notes.rstrip(".").split(", ")]
            assert sorted(keys) == sorted(data.FIELDS)
            orders.add(tuple(keys))
    assert len(orders) > 50  # random orders: the fixed order of a record is left to fine-tuning
    assert abs(n_notes / len(docs) - pretraining.CORPUS_MIX["notes"]) < 0.1


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
    assert [t for t, _, counted in shown if counted][0] == "Ġfor"


def test_truncation_cuts_the_prompt_not_the_answer(tokenizer):
    ex = data.make_dataset(seed=1, sizes=SMALL)["train"][0]
    full = data.encode_example(tokenizer, ex)
    cut = data.encode_example(tokenizer, ex, max_length=30)
    assert len(cut["input_ids"]) == 30
    assert cut["labels"][-20:] == full["labels"][-20:]
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


def test_encode_document(tokenizer):
    feats = [pretraining.encode_document(tokenizer, d) for d in pretraining.pretraining_corpus(20, seed=5)]
    assert all(f["input_ids"][0] == tokenizer.bos_token_id and f["input_ids"][-1] == tokenizer.eos_token_id
               and f["labels"] == f["input_ids"] and tokenizer.unk_token_id not in f["input_ids"] for f in feats)


def test_score():
    exs = data.make_dataset(seed=1, sizes=SMALL)["test"][:4]
    preds = [data.make_answer(exs[0]["record"]), data.make_answer(exs[1]["record"]) + "\nmore text",
             data.make_answer({**exs[2]["record"], "with": "nobody"}), "not a record"]
    s = data.score(preds, exs)
    assert s["exact_match"] == 0.5 and s["n"] == 4
    assert s["field_accuracy"]["with"] == 0.5 and s["field_accuracy"]["on"] == 0.75


def test_prepare_tokenizer_adds_a_pad_token():
    class NoPad:
        pad_token_id, pad_token, eos_token = None, None, "</s>"
    assert data.prepare_tokenizer(NoPad()).pad_token == "</s>"


def test_plot_loss_mask(tokenizer):
    import matplotlib
    matplotlib.use("Agg")
    ex = data.make_dataset(seed=1, sizes=SMALL)["train"][0]
    ax = plots.plot_loss_mask(tokenizer, ex)
    n_answer = len(tokenizer(data.make_answer(ex["record"]), add_special_tokens=False)["input_ids"]) + 1
    assert f"the {n_answer} orange ones" in ax.get_title()


def test_shipped_dataset_matches_the_generator():
    folder = assets_dir() / "dataset"
    if not (folder / "test.jsonl").exists():
        pytest.skip("assets/dataset not generated yet (python scripts/make_dataset.py)")
    splits = data.make_dataset()
    for split, rows in splits.items():
        assert data.load_split(split) == rows, f"assets/dataset/{split}.jsonl differs from make_dataset()"


def test_a_malformed_jsonl_line_is_named_by_file_and_number(tmp_path):
    good = json.dumps(data.make_dataset(seed=1, sizes={"train": 1})["train"][0])
    (tmp_path / "train.jsonl").write_text(f"{good}\n\n{{\"request\": \"cut off\n{good}\n")
    with pytest.raises(ValueError, match=r"train.jsonl, line 3, is not valid JSON \(.*\); fix or delete that line"):
        data.load_split("train", tmp_path)
    (tmp_path / "train.jsonl").write_text(f"{good}\n\n{good}\n")
    assert len(data.load_split("train", tmp_path)) == 2


def test_course_assets_pointing_at_a_missing_folder_is_named_when_loading_a_split(monkeypatch, tmp_path):
    monkeypatch.setenv("COURSE_ASSETS", str(tmp_path / "not-here"))
    with pytest.raises(FileNotFoundError, match="COURSE_ASSETS points at .*not-here, a folder that does not exist"):
        data.load_split("train")


def test_an_example_without_its_fields_and_an_empty_split_are_named(tmp_path):
    """Issue 29, item 10: a training example without `record` names its file and line; an empty file says so."""
    good = json.dumps({"request": "Lunch with Maria", "record": {"for": "LUNCH"}})
    (tmp_path / "train.jsonl").write_text(f"{good}\n\n{json.dumps({'request': 'no record here'})}\n")
    with pytest.raises(ValueError, match=r"train.jsonl, line 3, has no 'record': every example needs 'request', "):
        data.load_split("train", folder=tmp_path)
    (tmp_path / "train.jsonl").write_text("\n")
    with pytest.raises(ValueError, match=r"train.jsonl holds no examples"):
        data.load_split("train", folder=tmp_path)
