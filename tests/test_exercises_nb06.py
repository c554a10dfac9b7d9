"""Notebook 06's new and changed exercise checkers: the right answer passes, a wrong one and one of the wrong
type get a one-line "❌" sentence (never a traceback), and no hint gives the answer away."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from course_utils import data, training
from course_utils.exercises import nb06
from tests.test_exercises import ODD, assert_right, assert_wrong_words, verdict


# --- exercise 2 (predict, then run): the field learned last, from a measured curve

CURVE = [{"step": 5, "field_accuracy": {"for": 0.2, "with": 0.95, "on": 0.5, "at": 0.1, "in": 0.9}},
         {"step": 10, "field_accuracy": {"for": 0.92, "with": 1.0, "on": 0.97, "at": 0.4, "in": 1.0}},
         {"step": 15, "field_accuracy": {"for": 1.0, "with": 1.0, "on": 1.0, "at": 0.93, "in": 1.0}}]


def test_learned_last_reads_the_curve(capsys):
    assert nb06.learned_at(CURVE, "with") == 5 and nb06.learned_at(CURVE, "at") == 15
    assert nb06.learned_at(CURVE, "at", threshold=0.99) == float("inf")
    assert_right(capsys, lambda a: nb06.check_learned_last(a, CURVE), "at")
    assert_right(capsys, lambda a: nb06.check_learned_last(a, CURVE), " at ")
    for wrong in ("for", "with", "in"):
        assert_wrong_words(capsys, lambda a: nb06.check_learned_last(a, CURVE), wrong, "'at'")
    # two fields that never get there are both "last"
    never = [{"step": 5, "field_accuracy": {"for": 1.0, "with": 1.0, "on": 1.0, "at": 0.5, "in": 0.6}}]
    assert_right(capsys, lambda a: nb06.check_learned_last(a, never), "in")
    too_short = [{"step": 5, "field_accuracy": {f: 0.0 for f in data.FIELDS}}]
    _, out = verdict(capsys, lambda a: nb06.check_learned_last(a, too_short), "at")
    assert out.startswith("❌") and "more steps" in out


def test_learned_last_blank_odd_types_and_no_run(capsys):
    _, out = verdict(capsys, lambda a: nb06.check_learned_last(a, CURVE), None)
    assert "Set MY_GUESS" in out
    for odd in ODD:
        assert_wrong_words(capsys, lambda a: nb06.check_learned_last(a, CURVE), odd)
    _, out = verdict(capsys, lambda a: nb06.check_learned_last(a, CURVE), "time")
    assert "is not a field" in out
    _, out = verdict(capsys, nb06.check_learned_last, "at")  # no curve yet: train first
    assert out.startswith("❌") and "EXERCISE_STEPS" in out


# --- exercise 7: what merging into a 4-bit base costs

def test_merge_choice(capsys):
    assert set(nb06.MERGE_CHOICES) == {"a", "b", "c", "d"}
    assert_right(capsys, nb06.check_merge_4bit, "d")
    assert_right(capsys, nb06.check_merge_4bit, "D)")
    for wrong in ("a", "b", "c"):
        assert_wrong_words(capsys, nb06.check_merge_4bit, wrong, "second rounding", "'d'")
    _, out = verdict(capsys, nb06.check_merge_4bit, "e")
    assert "Expected one of the letters" in out
    for odd in [None, *ODD]:
        assert_wrong_words(capsys, nb06.check_merge_4bit, odd, "second rounding")


# --- exercise 8: the bits of each part of a QLoRA run

def test_qlora_bits_are_what_the_course_sets_up():
    bits = nb06.qlora_bits("t4")
    assert set(bits) == set(nb06.QLORA_PARTS)
    assert bits["base Linear weights"] == 4 and bits["matmul compute"] == 16 and bits["optimizer moments"] == 8
    # PEFT's adapter on a 16-bit base is fp32, and so are its gradients
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = get_peft_model(LlamaForCausalLM(config).half(), LoraConfig(r=2, target_modules=["q_proj"]))
    adapter = training.trainable_parameters(model)
    assert {p.dtype for p in adapter.values()} == {torch.float32} == {torch.float32 if bits["LoRA A and B"] == 32 else None}
    assert training.PRESETS["t4"].optimizer == "paged_adamw_8bit"
    assert nb06.qlora_bits("offline")["matmul compute"] == 32 and nb06.qlora_bits("offline")["optimizer moments"] == 32


def test_precisions_checker(capsys):
    right = nb06.qlora_bits("t4")
    assert_right(capsys, nb06.check_precisions, right)
    assert_right(capsys, nb06.check_precisions, {k: float(v) for k, v in right.items()})
    all_16 = {k: 16 for k in nb06.QLORA_PARTS}  # the classic mistake: "QLoRA is a 16-bit run with a 4-bit base"
    _, out = verdict(capsys, nb06.check_precisions, {**all_16, "base Linear weights": 4})
    assert out.startswith("❌") and "4 of 6 are off" in out
    _, out = verdict(capsys, nb06.check_precisions, {**right, "optimizer moments": 32})
    assert out.startswith("❌") and "'optimizer moments'" in out
    _, out = verdict(capsys, nb06.check_precisions, {**right, "gradients": "sixteen"})
    assert "should be 4, 8, 16 or 32" in out
    _, out = verdict(capsys, nb06.check_precisions, {k: v for k, v in right.items() if k != "gradients"})
    assert "missing" in out
    _, out = verdict(capsys, nb06.check_precisions, {**right, "weights": 4})
    assert "unknown" in out
    _, out = verdict(capsys, nb06.check_precisions, None)
    assert "QLORA_PARTS" in out
    for odd in ODD[:-3] + [True, 7]:
        assert_wrong_words(capsys, nb06.check_precisions, odd)


def test_the_fields_of_the_learned_last_exercise_are_the_tasks():
    assert set(CURVE[0]["field_accuracy"]) == set(data.FIELDS)


# --- the diagnose exercise: pad = EOS, and a collator that masks the pad id

def classmate_batches(tokenizer, examples):
    """Our batch's labels and the classmate's: theirs masks every position whose id is the pad id, with pad = EOS."""
    batch = data.pad_batch([data.encode_example(tokenizer, ex) for ex in examples], tokenizer.eos_token_id)
    return batch["labels"], batch["labels"].masked_fill(batch["input_ids"] == tokenizer.eos_token_id, -100)


def test_pad_eos_counts_come_from_real_batches(capsys):
    from course_utils import runtime
    _, tokenizer = runtime.load_model(runtime.choose_profile("offline"), four_bit=False)
    examples = data.load_split("train")[:6]
    ours, theirs = classmate_batches(tokenizer, examples)
    eos = tokenizer.eos_token_id
    assert nb06.eos_graded(ours, eos) == 6 and nb06.eos_graded(theirs, eos) == 0
    assert nb06.eos_graded([[10, 11], [12, 99]], 99) == 1 and nb06.eos_graded(torch.tensor([[99, 5]]), 99) == 1
    assert_right(capsys, lambda a: nb06.check_pad_eos(a, 6, 0), "b")
    nb06_hints = []
    for wrong in ("a", "c", "d"):
        nb06_hints.append(assert_wrong_words(capsys, lambda a: nb06.check_pad_eos(a, 6, 0), wrong, "'b'"))
    assert "Compare the two counts" in nb06_hints[0] and "pad id is the EOS id" in nb06_hints[1]  # two steps
    # a tokenizer whose pad is not the EOS: masking by id hides only the padding, and (d) is right
    assert_right(capsys, lambda a: nb06.check_pad_eos(a, 6, 6), "d")
    _, out = verdict(capsys, nb06.check_pad_eos, "b")  # the cell has not run
    assert out.startswith("❌") and "Run the cell" in out
    for odd in ODD:
        assert_wrong_words(capsys, lambda a: nb06.check_pad_eos(a, 6, 0), odd)
