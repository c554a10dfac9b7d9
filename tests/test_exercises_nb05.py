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
