"""Notebook 03's new exercise checkers: the right answer passes, every wrong one gets a hint that keeps the answer,
and an answer of the wrong type gets one sentence, never a traceback."""

from __future__ import annotations

import pytest
import torch

from course_utils.configs import load_config
from course_utils.exercises import nb03
from course_utils.lora import LoRALinear, linear_shape
from tests.test_exercises import assert_right, assert_wrong, verdict

WRONG_TYPES = [2, 2.0, ["b"], {"b": 1}, True, torch.tensor(1.0), b"b"]


def _assert_wrong_letter(capsys, checker, answer, right):
    ok, out = verdict(capsys, checker, answer)
    assert ok is False and out.startswith("❌ Not yet."), out
    assert f"'{right}'" not in out and f"({right})" not in out and f" {right})" not in out, out


def test_double_r(capsys):
    # the scale alpha / r with alpha = 16: 2 at r = 8, 1 at r = 16
    assert (LoRALinear(torch.nn.Linear(32, 32), r=8, alpha=16).scale,
            LoRALinear(torch.nn.Linear(32, 32), r=16, alpha=16).scale) == (2.0, 1.0)
    for right in ("d", "D", " d) ", "d."):
        assert_right(capsys, nb03.check_double_r, right)
    for wrong in ("a", "b", "c", "B"):
        _assert_wrong_letter(capsys, nb03.check_double_r, wrong, "d")


def test_why_b_zero(capsys):
    assert_right(capsys, nb03.check_why_b_zero, "a")
    assert_right(capsys, nb03.check_why_b_zero, "A")
    for wrong in ("b", "c", "d"):
        _assert_wrong_letter(capsys, nb03.check_why_b_zero, wrong, "a")
    ok, out = verdict(capsys, nb03.check_why_b_zero, "b")  # the misconception the notebook corrects
    assert "requires_grad" in out, out


def test_why_b_zero_matches_the_gradients():
    """Choice d is wrong for a reason the notebook shows: with B = 0, A's first gradient is exactly zero."""
    layer = LoRALinear(torch.nn.Linear(16, 12, bias=False), r=4, alpha=8)
    (layer(torch.randn(5, 16)) - torch.randn(5, 12)).pow(2).mean().backward()
    assert torch.count_nonzero(layer.A.grad) == 0 and torch.count_nonzero(layer.B.grad) > 0


def test_merged_extra_flops(capsys):
    n_in, n_out = linear_shape(load_config("llama-3.1-8b"), "q_proj")
    layer = LoRALinear(torch.nn.Linear(64, 48, bias=False), r=4, alpha=8)
    with torch.no_grad():
        layer.B.normal_()
        layer.merge()
    # merged, the layer multiplies by W alone: the same output as a plain Linear with the merged weight
    x = torch.randn(3, 64)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.base.weight))
    assert_right(capsys, nb03.check_merged_extra_flops, 0)
    assert_right(capsys, nb03.check_merged_extra_flops, 0.0)
    assert_right(capsys, nb03.check_merged_extra_flops, torch.tensor(0))
    for wrong in (16 * (n_in + n_out), 2 * 16 * (n_in + n_out), n_in * n_out, 2 * n_in * n_out, 16, 1):
        assert_wrong(capsys, nb03.check_merged_extra_flops, wrong, 0)


@pytest.mark.parametrize("checker", [nb03.check_double_r, nb03.check_why_b_zero, nb03.check_merged_extra_flops])
def test_the_blank_gets_the_hint(capsys, checker):
    ok, out = verdict(capsys, checker, None)
    assert ok is False and out.startswith("❌ Not yet.") and "Expected" not in out, out


@pytest.mark.parametrize("answer", WRONG_TYPES + ["z", ""])
@pytest.mark.parametrize("checker", [nb03.check_double_r, nb03.check_why_b_zero])
def test_a_letter_is_expected(capsys, checker, answer):
    ok, out = verdict(capsys, checker, answer)
    assert ok is False and "Expected one" in out and "letter" in out, out


@pytest.mark.parametrize("answer", ["0", "zero", [0], torch.tensor([0.0, 0.0]), True])
def test_a_number_is_expected(capsys, answer):
    ok, out = verdict(capsys, nb03.check_merged_extra_flops, answer)
    assert ok is False and "Expected a number" in out, out


@pytest.mark.parametrize("answer", [None, 100])
def test_the_break_even_hint_nudges_first_and_gives_the_formula_second(capsys, answer):
    first = verdict(capsys, nb03.check_break_even_rank, answer)[1]
    second = verdict(capsys, nb03.check_break_even_rank, answer)[1]
    assert "Solve r * (in + out)" not in first and "where are they equal?" in first, first
    assert "Solve r * (in + out) = in * out for r" in second and "a second hint" in second, second
    assert_right(capsys, nb03.check_break_even_rank, 2048)


def test_alpha_zero_is_judged_against_what_the_run_measured(capsys):
    """Exercise 6, predict then run: the right letter is the one the losses show, not a fixed one."""
    torch.manual_seed(0)
    W0 = torch.nn.Linear(16, 16, bias=False).requires_grad_(False)
    layer = LoRALinear(W0, r=4, alpha=4)
    layer.scale = 0.0  # alpha = 0 (LoRALinear refuses it with a sentence; the notebook's own layer takes it)
    x, y = torch.randn(64, 16), torch.randn(64, 16)
    optimizer = torch.optim.Adam([layer.A, layer.B], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = (layer(x) - y).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] == losses[0]  # alpha = 0: nothing the adapter holds reaches the output
    assert nb03.what_happened(losses) == "b"
    assert verdict(capsys, lambda a: nb03.check_alpha_zero(a, losses), "b")[0] is True
    ok, out = verdict(capsys, lambda a: nb03.check_alpha_zero(a, losses), "a")
    assert ok is False and "The run says (b)" in out
    assert nb03.what_happened([0.2] + [1e-4] * 29) == "a" and nb03.what_happened([0.2] + [0.5] * 29) == "c"
    ok, out = verdict(capsys, lambda a: nb03.check_alpha_zero(a, losses), None)
    assert ok is False and "(b)" not in out, "a blank prediction must not be told the answer"
    assert "Run the cell" in verdict(capsys, nb03.check_alpha_zero, "b")[1]
