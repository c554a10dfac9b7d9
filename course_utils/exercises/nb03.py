"""Checkers for notebook 03, LoRA from scratch. The answers come from the configs and from course_utils.lora."""

from __future__ import annotations

import torch

from course_utils.configs import load_config
from course_utils.exercises import choice, close, describe, not_a_number, report, two_step, unready
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
    ok = close(answer, r)
    return report(ok, f"r (in + out) = in x out at r = {n_in:,} x {n_out:,} / ({n_in:,} + {n_out:,}) = {r:,.0f}; "
                  "real adapters use r = 4 to 64, far below it.", "" if ok else two_step(
                      "nb03.break_even_rank", "Write down both counts: the adapter's (section 4) and q_proj's own; "
                      "where are they equal?", "Solve r * (in + out) = in * out for r, with q_proj's in and out "
                      "features."))


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


# ----------------------------------------------------------------------------------------------------------
# Multiple choice: the answer is one letter
# ----------------------------------------------------------------------------------------------------------

DOUBLE_R_CHOICES = {
    "a": "The scale doubles, so every update of the adapter is now twice as strong as before.",
    "b": "The scale halves, so the adapter learns exactly half as fast: double the learning rate.",
    "c": "Nothing changes: alpha / r is only used once, to initialise A and B at the start.",
    "d": "The scale halves, but B A now sums twice as many terms: the update barely shrinks.",
}

WHY_B_ZERO_CHOICES = {
    "a": "So the adapted model starts exactly as the base does, and A still lets B learn.",
    "b": "So that the frozen weight W is never changed at any point during training.",
    "c": "Because a matrix of zeros takes less memory than a random matrix of that size.",
    "d": "So that both A and B receive a nonzero gradient at the very first step.",
}


def check_double_r(answer: str) -> bool:
    """You double r (8 to 16) and keep alpha (16): what does the scale alpha / r do, and what follows?"""
    hints = {None: "Work out alpha / r before and after, then think of what B A x adds up: one term per rank.",
             "a": "Look at which of alpha and r is in the denominator.",
             "c": "The scale multiplies B A x in every forward pass, during training and after it.",
             "b": "The scale halves, but B A also changed: it adds up more terms now. The first panel of "
                  "\"Why divide by r?\" measured the size of the update for each r."}
    return choice(answer, DOUBLE_R_CHOICES, "d", "alpha / r goes from 2 to 1, while B A gains directions: the LoRA "
                  "paper's reason for dividing by r is that you can change r without tuning the learning rate "
                  "again (Hu et al. 2021, section 4.1).", hints, blank=hints[None])


def check_why_b_zero(answer: str) -> bool:
    """Why does LoRA start B at zero and A random?"""
    hints = {None: "Look back at section 2: what h is at step 0, and the gradients of the three starts.",
             "b": "W stays the same because it is frozen (requires_grad = False, so it never gets a gradient); "
                  "that holds whatever B starts at.",
             "c": "A and B take the same memory whatever their values are.",
             "d": "Look at the gradient table in section 2: with B = 0, which gradient is zero at the first step?"}
    return choice(answer, WHY_B_ZERO_CHOICES, "a", "B = 0 makes the start equal to the base; A random lets learning "
                  "begin (A's own gradient is zero at the first step and grows once B has moved).", hints,
                  blank=hints[None])


def check_merged_extra_flops(answer: float) -> bool:
    """After merge(), how many extra multiply-adds per token does a rank-16 adapter on the 8B's q_proj cost?"""
    n_in, n_out = linear_shape(load_config("llama-3.1-8b"), "q_proj")
    detour = 16 * (n_in + n_out)
    if not_a_number(answer):
        return False
    if answer is None:
        return report(False, "", "After merging, which matrices does the layer still multiply x with?")
    if close(answer, detour) or close(answer, 2 * detour):
        return report(False, "", "That is what the detour through A and B costs before merging; after merge(), "
                      "is there still a detour?")
    if close(answer, n_in * n_out) or close(answer, 2 * n_in * n_out):
        return report(False, "", "That is what W x itself costs, which the base layer pays too: count only what "
                      "the adapter adds.")
    return report(close(answer, 0), "W + (alpha / r) B A is one matrix of W's shape: the merged layer is exactly "
                  "as fast as the base one.", "After merging, which matrices does the layer still multiply x with?")


# ----------------------------------------------------------------------------------------------------------
# Exercise 6: predict, then run: a rank-8 adapter trained with alpha = 0
# ----------------------------------------------------------------------------------------------------------

ALPHA_ZERO = {
    "a": "it reaches the noise floor like alpha = 16 does, only more slowly",
    "b": "it stays where the frozen W0 started: nothing it learns reaches the output",
    "c": "it diverges: with no scale to hold the update back, the loss grows",
}


def what_happened(losses: list[float]) -> str:
    """Which of ALPHA_ZERO a run's losses show: near the noise floor, stuck at the start, or grown."""
    start, end = losses[0], sum(losses[-20:]) / min(20, len(losses))
    if end > 1.1 * start:
        return "c"
    return "b" if end > 0.9 * start else "a"


def check_alpha_zero(prediction, losses: list[float] | None = None) -> bool:
    """Exercise 6: the student's prediction (a letter of ALPHA_ZERO) against what the run measured."""
    if unready(prediction, losses is not None, "Run the cell that trains the alpha = 0 adapter; it passes its "
               "losses here.", f" ({', '.join(ALPHA_ZERO)}) and run the cell again, before you read its losses: the "
               "checker compares it with what the run measured."):
        return False
    happened = what_happened(losses)
    return choice(prediction, ALPHA_ZERO, happened, "The update is (alpha / r) B A x = 0 whatever A and B hold, "
                  "so the loss never sees them: B's gradient is 0 too, and the adapter never moves.",
                  {letter: f"The run says ({happened}): {ALPHA_ZERO[happened]}. Why? Write the adapter's output "
                   "with alpha = 0, then its gradient." for letter in ALPHA_ZERO})
