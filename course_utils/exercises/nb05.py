"""Checkers for notebook 05, quantization. The answers are computed with course_utils.quantization."""

from __future__ import annotations

import torch

from course_utils.exercises import as_number, as_numbers, close, not_a_number, not_numbers, report

# The block of exercise 1 (four weights of one block).
BLOCK = [0.12, -0.5, 0.031, 0.26]
# Exercise 2: a weight and the absmax of its block.
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
