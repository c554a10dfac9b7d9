"""Notebook 05's new exercise checkers: the right answer passes, wrong answers and answers of the wrong type get a
one-line "❌" sentence (never a traceback), the blank gets the hint, and no hint gives the answer away. The right
answers are worked out here from the formulas, not taken from the checkers."""

from __future__ import annotations

import pytest
import torch

from course_utils import quantization
from course_utils.exercises import nb05
from tests.test_exercises import ODD, assert_right, assert_wrong, assert_wrong_words, verdict

NOT_NUMBERS = [odd for odd in ODD if isinstance(odd, bool) or not isinstance(odd, (int, float))]  # 2.5, 7 are numbers


def test_nf4_near_zero_is_the_quantile_option(capsys):
    # the right option is the one about quantiles of a normal distribution
    right = [k for k, v in nb05.NF4_NEAR_ZERO.items() if "equal share of a normal" in v]
    assert right == ["b"]
    for spelling in ("b", "B", "(b)", " b "):
        assert_right(capsys, nb05.check_nf4_near_zero, spelling)
    for wrong in ("a", "c", "d"):
        out = assert_wrong_words(capsys, nb05.check_nf4_near_zero, wrong, "(b)")
        assert len(out) > 40, "a wrong letter gets a hint, not an empty line"
    assert "Answer with one letter" in verdict(capsys, nb05.check_nf4_near_zero, None)[1]
    assert "is not" not in verdict(capsys, nb05.check_nf4_near_zero, "e")[1]
    assert "Expected one of the letters a, b, c, d, got 'e' (str)." in verdict(capsys, nb05.check_nf4_near_zero,
                                                                           "e")[1]
    for odd in [*ODD, 2, 2.5]:
        assert_wrong_words(capsys, nb05.check_nf4_near_zero, odd, "(b)")
    assert "got 2 (int)" in verdict(capsys, nb05.check_nf4_near_zero, 2)[1]


def test_absmax_maps_to_the_top_level(capsys):
    block = torch.tensor([0.3, -0.1, 0.02, 0.05])  # the largest |w| is positive
    top = (block / block.abs().max()).max().item()
    assert top == 1.0 == quantization.nf4_code_book().max().item()
    idx = quantization.nf4_quantize(block, block_size=4)[0]
    assert idx[0].item() == 15  # stored at NF4's last level, exactly
    for right in (1, 1.0, torch.tensor(1.0)):
        assert_right(capsys, nb05.check_absmax_level, right)
    for wrong in (127, 15, -1, 0.723, 0.5, 0):
        assert_wrong(capsys, nb05.check_absmax_level, wrong, 1.0)
    assert "127 is what absmax int8 stores" in verdict(capsys, nb05.check_absmax_level, 127)[1]
    assert "index" in verdict(capsys, nb05.check_absmax_level, 15)[1]
    assert "Divide the block's largest weight" in verdict(capsys, nb05.check_absmax_level, None)[1]
    for odd in NOT_NUMBERS:
        out = assert_wrong_words(capsys, nb05.check_absmax_level, odd)
        assert "Expected a number" in out


def test_double_quant_bits_with_blocks_of_128(capsys):
    right = 4 + 8 / 128 + 32 / (128 * 256)
    assert (nb05.DQ_BLOCK, nb05.DQ_GROUP) == (128, 256)
    assert right == pytest.approx(4.0634765625)
    assert_right(capsys, nb05.check_dq_bits, right)
    assert_right(capsys, nb05.check_dq_bits, round(right, 4))
    for wrong, words in [(right - 4, "4-bit index"),                # the constants' share only
                         (4 + 8 / 128, "fp32 absmax"),               # forgot the second level
                         (4 + 8 / 64 + 32 / (64 * 256), "blocks of 64"),  # QLoRA's 4.127
                         (4 + 32 / 128, "Add the 4-bit index")]:     # no double quantization: 4.25
        out = assert_wrong_words(capsys, nb05.check_dq_bits, wrong, "4.0635", "4.063")
        assert words in out, out
    assert "one fp32 absmax shared by 256 blocks" in verdict(capsys, nb05.check_dq_bits, None)[1]
    for odd in NOT_NUMBERS:
        assert "Expected a number" in assert_wrong_words(capsys, nb05.check_dq_bits, odd)


def test_the_blank_gets_a_hint_for_every_new_checker(capsys):
    for checker in (nb05.check_nf4_near_zero, nb05.check_absmax_level, nb05.check_dq_bits):
        ok, out = verdict(capsys, checker, None)
        assert ok is False and out.startswith("❌ Not yet.") and len(out) > 30, out


def nf4_error(weights, block_size):
    """NF4's mean |error| on `weights` with blocks of `block_size`, as exercise 3's cell measures it."""
    back = quantization.nf4_dequantize(*quantization.nf4_quantize(weights, block_size), block_size)
    return (back - weights).abs().mean().item()


def test_bigger_blocks_is_judged_against_what_the_run_measured(capsys):
    """Exercise 3, predict then run: the right letter is the one the two measured errors show, not a fixed one."""
    torch.manual_seed(0)
    w = torch.randn(64 * 1024) * 0.02
    error_64, error_256 = nf4_error(w, 64), nf4_error(w, 256)
    assert error_256 > 1.05 * error_64  # a block's absmax grows with its size: a coarser step for the rest
    assert nb05.what_bigger_blocks_did(error_64, error_256) == "a"
    ok, out = verdict(capsys, lambda a: nb05.check_bigger_blocks(a, error_64, error_256), "a")
    assert ok is True and out.startswith("✅") and f"{error_256 / error_64 - 1:+.1%}" in out, out
    for wrong in ("b", "c"):
        ok, out = verdict(capsys, lambda a: nb05.check_bigger_blocks(a, error_64, error_256), wrong)
        assert ok is False and "The run says (a)" in out, out
    # the outcome reader, on each case: grown, within 2%, shrunk
    assert [nb05.what_bigger_blocks_did(1.0, e) for e in (1.1, 1.01, 0.99, 0.9)] == ["a", "b", "b", "c"]
    assert nb05.check_bigger_blocks("c", 1.0, 0.9) is True and nb05.check_bigger_blocks("b", 1.0, 1.01) is True
    assert nb05.check_bigger_blocks("a", 1.0, 0.9) is False
    capsys.readouterr()
    ok, out = verdict(capsys, lambda a: nb05.check_bigger_blocks(a, error_64, error_256), None)
    assert ok is False and "MY_PREDICTION" in out and "(a)" not in out, "a blank prediction must not be told"
    assert "Run the cell" in verdict(capsys, nb05.check_bigger_blocks, "a")[1]
    for odd in ODD:
        ok, out = verdict(capsys, lambda a: nb05.check_bigger_blocks(a, error_64, error_256), odd)
        assert ok is False and out.startswith("❌ Not yet."), out


def test_bigger_blocks_options_read_alike():
    lengths = {letter: len(text) for letter, text in nb05.BIGGER_BLOCKS.items()}
    assert max(lengths, key=lengths.get) != "a" and lengths["a"] <= 1.25 * max(lengths.values())
