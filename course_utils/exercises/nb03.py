"""Checkers for notebook 03, LoRA from scratch. The answers come from the configs and from course_utils.lora."""

from __future__ import annotations

import torch

from course_utils.configs import load_config
from course_utils.exercises import close, describe, not_a_number, report
from course_utils.lora import LoRALinear, linear_shape


def check_down_proj_count(answer: int) -> bool:
    """Trainable parameters of LoRA with r = 16 on down_proj in all the decoder layers of Llama 3.1 8B."""
    config = load_config("llama-3.1-8b")
    n_in, n_out = linear_shape(config, "down_proj")
    n = config.num_hidden_layers * 16 * (n_in + n_out)
    if not_a_number(answer):
        return False
    return report(close(answer, n), f"{config.num_hidden_layers} layers x 16 x ({n_in:,} + {n_out:,}) = {n:,}.",
                  "Per module A is r x in and B is out x r; down_proj goes from the MLP size back to the hidden size. "
                  "Then multiply by the number of layers.")


def check_break_even_rank(answer: float) -> bool:
    """Above which rank r does LoRA on the 8B's q_proj train more numbers than q_proj itself holds?"""
    n_in, n_out = linear_shape(load_config("llama-3.1-8b"), "q_proj")
    r = n_in * n_out / (n_in + n_out)
    if not_a_number(answer):
        return False
    return report(close(answer, r), f"r (in + out) = in x out at r = {n_in:,} x {n_out:,} / ({n_in:,} + {n_out:,}) = {r:,.0f}; "
                  "real adapters use r = 4 to 64, far below it.",
                  "Solve r * (in + out) = in * out for r, with q_proj's in and out features.")


def _reference(x, W, A, B, alpha, r):
    layer = LoRALinear(torch.nn.Linear(W.shape[1], W.shape[0], bias=False), r=r, alpha=alpha)
    with torch.no_grad():
        layer.base.weight.copy_(W)
        layer.A.copy_(A)
        layer.B.copy_(B)
        return layer(x)


def check_lora_forward(fn) -> bool:
    """`fn(x, W, A, B, alpha, r)` must return W x + (alpha / r) B A x for a batch of row vectors x (..., in)."""
    if not callable(fn):
        got = "" if fn is None else f" (you passed {describe(fn)})"
        return report(False, "", "Write a function lora_forward(x, W, A, B, alpha, r) and pass the function itself "
                      f"(no parentheses) to the checker{got}.")
    gen = torch.Generator().manual_seed(3)
    for shape, n_in, n_out, r, alpha in (((4, 24), 24, 12, 4, 8), ((2, 3, 10), 10, 16, 2, 3.0)):
        x = torch.randn(*shape, generator=gen)
        W, A = torch.randn(n_out, n_in, generator=gen), torch.randn(r, n_in, generator=gen)
        B = torch.randn(n_out, r, generator=gen)
        try:
            with torch.no_grad():
                got = fn(x, W, A, B, alpha, r)
        except Exception as err:  # the student's code failed: say how, not the answer
            return report(False, "", f"Your function raised {type(err).__name__}: {err}. Check the shapes: x is (..., in), "
                          "W is (out, in), A is (r, in), B is (out, r).")
        want = _reference(x, W, A, B, alpha, r)
        if not isinstance(got, torch.Tensor) or got.shape != want.shape:
            return report(False, "", f"Expected a tensor of shape {tuple(want.shape)}, got "
                          f"{tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__}.")
        if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
            base_only = torch.allclose(got, x @ W.T, rtol=1e-4, atol=1e-4)
            return report(False, "", "You return W x only: add the adapter's (alpha / r) B A x." if base_only else
                          "The shape is right but the numbers are not: rows of x multiply W.T, A.T and B.T; "
                          "scale the adapter's part by alpha / r.")
    return report(True, "Your forward matches LoRALinear: W x + (alpha / r) B A x.", "")
