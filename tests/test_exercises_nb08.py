"""Notebook 08's exercise checkers: the right answer, worked out here from the arithmetic's rules, passes with a "✅"
line; plausible mistakes get a "❌" hint that does not give it away; answers of the wrong type get a sentence."""

from __future__ import annotations

import importlib
import inspect

import pytest
import torch

from course_utils.configs import load_config
from course_utils.distributed import per_gpu_memory
from course_utils.exercises import nb08
from course_utils.lora import lora_params
from course_utils.memory import training_memory
from tests.test_exercises import ODD_ANSWERS, assert_right, assert_wrong_words, verdict

CHECKERS = {name: f for name, f in inspect.getmembers(importlib.import_module("course_utils.exercises.nb08"),
                                                     inspect.isfunction)
            if name.startswith("check_") and f.__module__ == nb08.__name__}


def test_notebook_08_has_at_least_four_checked_exercises():
    assert len(CHECKERS) >= 4, sorted(CHECKERS)


@pytest.mark.parametrize("kind", ODD_ANSWERS)
@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_an_answer_of_the_wrong_type_gets_a_sentence_never_a_traceback(capsys, name, kind):
    ok, out = verdict(capsys, CHECKERS[name], ODD_ANSWERS[kind])
    assert ok is False and out.startswith("❌ Not yet."), out


@pytest.mark.parametrize("name", sorted(CHECKERS))
def test_the_blank_gets_a_hint(capsys, name):
    ok, out = verdict(capsys, CHECKERS[name], None)
    assert ok is False and out.startswith("❌ Not yet.") and len(out) > 30, out


def test_full_70b_gpus(capsys):
    est = training_memory(load_config("llama-3.1-70b"), **nb08.FULL_70B_RUN)
    fits = {n: per_gpu_memory(est, n, "fsdp").fits("A100 80GB") for n in (8, 16, 32, 64)}
    assert fits == {8: False, 16: False, 32: True, 64: True}  # 16 bytes per weight: 1.1 TB over 32 GPUs
    assert nb08.full_70b_gpus() == 32
    assert_right(capsys, nb08.check_full_70b_gpus, 32)
    assert_right(capsys, nb08.check_full_70b_gpus, torch.tensor(32))
    out = assert_wrong_words(capsys, nb08.check_full_70b_gpus, 64, "32")
    assert "fewer would too" in out
    out = assert_wrong_words(capsys, nb08.check_full_70b_gpus, 16, "32")  # the states alone fit 16
    assert "gathers whole units" in out
    out = assert_wrong_words(capsys, nb08.check_full_70b_gpus, 8, "32")
    assert "still more than 80 GB" in out
    ok, out = verdict(capsys, nb08.check_full_70b_gpus, 30)
    assert ok is False and "Answer with one of the counts" in out, out


def test_lora_optimizer_bytes(capsys):
    config = load_config("llama-3.1-8b")
    n = lora_params(config, 16, ["q_proj", "k_proj", "v_proj", "o_proj"])
    right = 4 * 2 * 32 * 4 + (2 * n * 4) // 4  # 256 tensors: their step counters whole, the moments split 4 ways
    assert nb08.lora_optimizer_bytes() == right
    assert_right(capsys, nb08.check_lora_optimizer_bytes, right)
    assert_right(capsys, nb08.check_lora_optimizer_bytes, 2 * n * 4 / 4)  # without the counters: close enough
    out = assert_wrong_words(capsys, nb08.check_lora_optimizer_bytes, 2 * n * 4 + 4 * 256, f"{right:,}")
    assert "one GPU alone" in out
    out = assert_wrong_words(capsys, nb08.check_lora_optimizer_bytes, n * 4 / 4, f"{right:,}")  # one moment
    assert "two float32 moments" in out


@pytest.mark.parametrize("checker, right, wrong", [
    (nb08.check_shards_weights, "c", ("a", "b", "d")),
    (nb08.check_405b_on_a_node, "c", ("a", "b", "d")),
    (nb08.check_quant_storage, "a", ("b", "c", "d")),
])
def test_the_choices(capsys, checker, right, wrong):
    assert_right(capsys, checker, right)
    assert_right(capsys, checker, f"({right.upper()})")
    for letter in wrong:
        assert_wrong_words(capsys, checker, letter, "Correct")
    ok, out = verdict(capsys, checker, "z")
    assert ok is False and "Expected one of the letters" in out, out


def test_the_405b_answer_is_what_the_arithmetic_says():
    config = load_config("llama-3.1-405b")
    run = dict(rank=16, targets=("q_proj", "k_proj", "v_proj", "o_proj"), batch_size=1, seq_len=512)
    fits = {m: per_gpu_memory(training_memory(config, m, **run), 8, "fsdp").fits("H100")
            for m in ("full-mixed", "lora", "qlora")}
    assert fits == {"full-mixed": False, "lora": False, "qlora": True}


def test_the_strategy_by_name_counts_too(capsys):
    assert_right(capsys, nb08.check_shards_weights, "FSDP / ZeRO-3")
    assert_right(capsys, nb08.check_405b_on_a_node, "QLoRA (NF4 base)")
