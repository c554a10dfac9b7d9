"""Checkers for notebook 05, quantization. The answers are computed with course_utils.quantization."""

from __future__ import annotations

import torch

from course_utils.exercises import (as_number, as_numbers, choice, close, not_a_number, not_numbers,
                                    report, unready)

# The block of exercise 1 (four weights of one block).
BLOCK = [0.12, -0.5, 0.031, 0.26]
# Exercise 4 (under "More exercises"): a weight and the absmax of its block.
WEIGHT, BLOCK_ABSMAX = 0.02, 0.05


def check_int8_block(answer: list[int]) -> bool:
    """Absmax int8 of BLOCK by hand: the four integers q = round(127 * x / absmax)."""
    from course_utils.quantization import absmax_quantize
    q, absmax = absmax_quantize(torch.tensor(BLOCK))
    expected = q.tolist()
    if not_numbers(answer, whole=True):
        return False
    return report(as_numbers(answer, whole=True) == expected, f"absmax = {absmax.item():g}, so the scale is 127 / {absmax.item():g} and the block is {expected}.",
                  "Divide every value by the block's largest |value|, multiply by 127, round to the nearest integer.")


def check_nf4_index(answer: int) -> bool:
    """Which NF4 level (index 0..15 into the sorted code book) stores WEIGHT in a block whose absmax is BLOCK_ABSMAX?"""
    from course_utils.quantization import nf4_code_book
    code = nf4_code_book()
    x = WEIGHT / BLOCK_ABSMAX
    index = int((code - x).abs().argmin())
    if not_a_number(answer, whole=True):
        return False
    return report(as_number(answer, whole=True) == index, f"{WEIGHT} / {BLOCK_ABSMAX} = {x:.2f}; the nearest NF4 level is {code[index].item():.4f}, "
                  f"index {index}, which dequantizes to {code[index].item() * BLOCK_ABSMAX:.5f}.",
                  "Scale the weight by its block's absmax, then find the nearest of the 16 levels (count from 0).")


def _llama_70b_linear_weights() -> int:
    from course_utils.architecture import empty_model
    from course_utils.configs import load_config
    from course_utils.quantization import quantizable_linears
    model = empty_model(load_config("llama-3.1-70b"))
    return sum(m.weight.numel() for m in quantizable_linears(model).values())


def check_70b_nf4_bytes(without_double_quant: float, with_double_quant: float) -> bool:
    """Bytes of the 70B's quantized weights (every Linear in the decoder layers) in NF4 with block size 64:
    with fp32 block constants, and with double quantization (8-bit constants, blocks of 256)."""
    from course_utils.quantization import nf4_bits_per_param
    if not_a_number(without_double_quant) or not_a_number(with_double_quant):
        return False
    n = _llama_70b_linear_weights()
    plain, double = n * nf4_bits_per_param(double_quant=False) / 8, n * nf4_bits_per_param(double_quant=True) / 8
    ok = close(without_double_quant, plain, rel=1e-3) and close(with_double_quant, double, rel=1e-3)
    return report(ok, f"{n:,} weights: {plain / 1e9:.2f} GB at 4.5 bits, {double / 1e9:.2f} GB at 4.127 bits; "
                  f"double quantization saves {(plain - double) / 1e9:.2f} GB.",
                  "Count the weights of the Linear layers inside the decoder layers (not embed_tokens, not lm_head), "
                  "multiply by the bits per weight, divide by 8.")


# ----------------------------------------------------------------------------------------------------------
# Exercises 2, 6 and 7: why NF4's levels sit where they sit, where a block's absmax lands, double quantization
# ----------------------------------------------------------------------------------------------------------

# Exercise 2, multiple choice: the options as the notebook prints them (nb05.NF4_NEAR_ZERO).
NF4_NEAR_ZERO = {
    "a": "Weights near 0 matter more to the model's output than large ones, so they get the finer levels.",
    "b": "Each level holds an equal share of a normal curve, and most of a block's weights sit near 0.",
    "c": "NF4 is a floating-point format with an exponent, which spends more of its bits on small numbers.",
    "d": "NF4 needs an exact zero to pad its blocks, and int4's evenly spaced grid of levels has none.",
}
_NF4_NEAR_ZERO_RIGHT = "b"
# Exercise 7: the block sizes of a variant of double quantization.
DQ_BLOCK, DQ_GROUP = 128, 256



def check_nf4_near_zero(answer: str) -> bool:
    """Why does NF4 put more of its 16 levels near 0 than int4 does? One letter of NF4_NEAR_ZERO."""
    hints = {"a": "NF4's recipe (section 5) never asks how much a weight matters, only how many weights sit "
                  "where: what did it take the quantiles of?",
             "c": "Every NF4 level is stored in the same 4 bits; fp4 is the floating-point format of section 7. "
                  "Where do NF4's levels come from?",
             "d": "int4's levels k / 7 include k = 0, so both have an exact zero; that explains one level, not "
                  "why the others crowd near it."}
    return choice(answer, NF4_NEAR_ZERO, _NF4_NEAR_ZERO_RIGHT,
                   "The levels are quantiles of a normal distribution: 1/16 of a normal's weights per level, so "
                   "they are densest near 0, where a block's weights are; int4 spends as many levels on the "
                   "sparse tails as on the crowded middle.", hints)


def check_absmax_level(answer: float) -> bool:
    """A block's largest |weight| is positive. Which value of x / absmax does it get, and so which NF4 level?"""
    from course_utils.quantization import nf4_code_book
    top = nf4_code_book().max().item()
    if not_a_number(answer):
        return False
    value = as_number(answer)
    if value is None:
        return report(False, "", "Divide the block's largest weight by the block's absmax: what do you get?")
    hints = {127: "127 is what absmax int8 stores as an integer; the question asks for x / absmax, before any "
                  "integer.",
             15: "15 is the index of the level; the question asks for the value x / absmax itself.",
             -1.0: "The block's largest weight here is positive."}
    hint = hints.get(value, "The absmax is the largest |weight| of the block: divide it by itself.")
    return report(close(value, top), f"The absmax divided by itself is {top:g}, NF4's top level, so the "
                  "largest weight of every block is stored exactly: one weight per block of 64 (the spikes at "
                  "the ends of the histogram in \"Going deeper\").", hint)


def check_dq_bits(answer: float) -> bool:
    """Bits stored per weight in NF4 with double quantization, blocks of DQ_BLOCK weights and DQ_GROUP constants."""
    from course_utils.quantization import nf4_bits_per_param
    if not_a_number(answer):
        return False
    right = nf4_bits_per_param(DQ_BLOCK, double_quant=True, dq_block_size=DQ_GROUP)
    value = None if answer is None else float(as_number(answer))
    if value is None:
        hint = (f"Add the 4-bit index, one 8-bit constant shared by {DQ_BLOCK} weights, and one fp32 absmax "
                f"shared by {DQ_GROUP} blocks of {DQ_BLOCK} weights (section 8 did it for 64).")
    elif close(value, right - 4, rel=1e-3):
        hint = "That is what the block constants add; every weight also keeps its own 4-bit index."
    elif close(value, 4 + 8 / DQ_BLOCK, rel=1e-4):
        hint = "Each group of 256 constants also keeps one fp32 absmax: spread it over all of its weights."
    elif close(value, nf4_bits_per_param(double_quant=True), rel=1e-3):
        hint = f"That is QLoRA's blocks of 64; here each block holds {DQ_BLOCK} weights."
    else:
        hint = (f"Add the 4-bit index, one 8-bit constant shared by {DQ_BLOCK} weights, and one fp32 absmax "
                f"shared by {DQ_GROUP} blocks of {DQ_BLOCK} weights (section 8 did it for 64).")
    return report(value is not None and close(value, right, rel=1e-4), f"4 + 8/{DQ_BLOCK} + 32/({DQ_BLOCK}*{DQ_GROUP}) = {right:.4f} "
                  f"bits per weight, against {nf4_bits_per_param(DQ_BLOCK):.4f} with fp32 constants.", hint)


# ----------------------------------------------------------------------------------------------------------
# Exercise 3: predict, then run: NF4 with blocks of 256 instead of 64, on the same weights
# ----------------------------------------------------------------------------------------------------------

BIGGER_BLOCKS = {
    "a": "it grows: one absmax sets the step of 256 weights, most well below it",
    "b": "it stays within 2%: the 16 levels and the 4-bit indices are the same",
    "c": "it shrinks: a quarter of the constants leaves more bits for the weights",
}


def what_bigger_blocks_did(error_64: float, error_256: float) -> str:
    """Which of BIGGER_BLOCKS the two measured mean errors show: grown or shrunk by more than 2%, or neither."""
    ratio = error_256 / error_64
    if ratio > 1.02:
        return "a"
    return "c" if ratio < 0.98 else "b"


def check_bigger_blocks(prediction, error_64: float | None = None, error_256: float | None = None) -> bool:
    """Exercise 3: the student's prediction (a letter of BIGGER_BLOCKS) against the errors the run measured."""
    if unready(prediction, error_64 is not None and error_256 is not None, "Run the cell that quantizes the layer "
               "with both block sizes; it passes the two errors here.", f" ({', '.join(BIGGER_BLOCKS)}) and run the "
               "cell again, before you read its errors: the checker compares it with what the run measured."):
        return False
    happened = what_bigger_blocks_did(error_64, error_256)
    change = error_256 / error_64 - 1
    return choice(prediction, BIGGER_BLOCKS, happened, f"The mean error changed by {change:+.1%}. Each weight still "
                  "gets one of 16 levels, but the levels are stretched to its block's largest |w|: the larger the "
                  "block, the further out its largest weight tends to sit, and the coarser the step for all the "
                  "others (section 3's outlier, in a milder form). Blocks of 64 pay 0.5 bits per weight for that.",
                  {letter: f"The run says ({happened}): {BIGGER_BLOCKS[happened]}. Why? Compare a block's absmax "
                   "with its typical weight, for 64 and for 256 weights." for letter in BIGGER_BLOCKS})
