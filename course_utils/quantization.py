"""Quantization by hand: absmax int8, the NF4 code book, block-wise NF4 and double quantization (QLoRA).

The reference implementations behind notebook 05, tested against bitsandbytes (`bitsandbytes.functional`):

- absmax int8: `q = round(127 * x / absmax(x))`, per tensor or per block; dequantize with `q * absmax / 127`.
- NF4 (Dettmers et al. 2023, "QLoRA", arXiv:2305.14314, section 3): 16 levels at quantiles of the standard
  normal distribution, scaled to [-1, 1], with an exact zero (8 positive levels, 7 negative). A weight is stored
  as the index of the level nearest to `x / absmax(block)`, with one absmax per block of 64 weights.
- Double quantization: the fp32 block constants are themselves quantized to 8 bits in blocks of 256, after
  subtracting their mean, which takes the overhead from 32/64 = 0.5 to 8/64 + 32/(64*256) ~ 0.127 bits per weight.
  Our 8-bit code defaults to symmetric int8; bitsandbytes uses its "dynamic" 8-bit code, which can be passed in.

All functions work on any float tensor and return plain tensors, so a notebook can print and plot every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

# The bitsandbytes the course is tested with: Colab lacks it, so it is pinned (requirements.txt says the same,
# and a test holds them together).
BITSANDBYTES_PIN = "bitsandbytes==0.50.2"
MIN_BITSANDBYTES = "0.49"  # the first release whose 4-bit kernels also run on CPUs

INT8_MAX = 127  # symmetric int8: levels -127 ... 127, so that 0 is exact and +-absmax map to +-127
NF4_BLOCK_SIZE = 64  # weights per absmax in QLoRA (and bitsandbytes' default)
DOUBLE_QUANT_BLOCK_SIZE = 256  # block constants per second-level absmax
# Outermost quantile of the NF4 code book: 1 - (1/32 + 1/30) / 2 = 0.9677083..., halfway between the centre of
# the last of 16 equal-probability bins (1 - 1/32) and of 15 bins (1 - 1/30). It is the `offset` the QLoRA
# authors use in bitsandbytes (`create_normal_map(offset=0.9677083)`); the normal's 100% quantile is infinite.
NF4_OFFSET = 1 - (1 / 32 + 1 / 30) / 2


# ----------------------------------------------------------------------------------------------------------
# absmax int8
# ----------------------------------------------------------------------------------------------------------

def absmax_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-tensor absmax int8: (q, absmax) with q = round(127 * x / absmax), an int8 tensor shaped like x."""
    absmax = x.abs().max().float()
    scale = INT8_MAX / absmax.clamp(min=torch.finfo(torch.float32).tiny)
    return torch.round(x.float() * scale).to(torch.int8), absmax


def absmax_dequantize(q: torch.Tensor, absmax: torch.Tensor) -> torch.Tensor:
    """Undo `absmax_quantize`: q * absmax / 127 (fp32)."""
    return q.float() * (absmax / INT8_MAX)


def to_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """x flattened and cut into rows of `block_size` values; a short last block is padded with zeros.

    Zeros change no block's absmax; `from_blocks` drops the padding again.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be a positive number of values, got {block_size}")
    flat = x.reshape(-1)
    pad = (-flat.numel()) % block_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.reshape(-1, block_size)


def from_blocks(blocks: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of `to_blocks`: drop the padding and restore the original shape."""
    n = 1
    for s in shape:
        n *= s
    return blocks.reshape(-1)[:n].reshape(shape)


def blockwise_absmax_quantize(x: torch.Tensor, block_size: int = NF4_BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax int8 with one absmax per block of `block_size` values: (q shaped like x, absmax per block)."""
    blocks = to_blocks(x.float(), block_size)
    absmax = blocks.abs().amax(dim=1)
    scale = INT8_MAX / absmax.clamp(min=torch.finfo(torch.float32).tiny)
    q = torch.round(blocks * scale[:, None]).to(torch.int8)
    return from_blocks(q, x.shape), absmax


def blockwise_absmax_dequantize(q: torch.Tensor, absmax: torch.Tensor, block_size: int = NF4_BLOCK_SIZE) -> torch.Tensor:
    """Undo `blockwise_absmax_quantize` (fp32, shaped like q)."""
    blocks = to_blocks(q.float(), block_size)
    return from_blocks(blocks * (absmax[:, None] / INT8_MAX), q.shape)


# ----------------------------------------------------------------------------------------------------------
# Code books: NF4 (normal quantiles), int4 (evenly spaced), and quantizing to the nearest level of any code book
# ----------------------------------------------------------------------------------------------------------

def nf4_code_book(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels in [-1, 1], sorted, from quantiles of the standard normal N(0, 1) (QLoRA, section 3).

    An exact zero is wanted (padding and zero weights stay zero), so the two halves are built separately: 8
    positive levels at the quantiles of 9 evenly spaced probabilities from 0.5 to `offset` (the 0.5 one, zero,
    dropped), 7 negative levels mirrored from 8 probabilities, and 0 itself. Dividing by the largest puts the
    ends at -1 and 1.
    """
    positive = torch.special.ndtri(torch.linspace(0.5, offset, 9, dtype=torch.float64)[1:])  # 8 values > 0
    negative = -torch.special.ndtri(torch.linspace(0.5, offset, 8, dtype=torch.float64)[1:])  # 7 values < 0
    levels = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).sort().values
    return (levels / levels.max()).float()


def int4_code_book() -> torch.Tensor:
    """Symmetric absmax int4: 15 evenly spaced levels k/7, k = -7 ... 7 (the 16th code is left unused)."""
    return torch.arange(-7, 8, dtype=torch.float32) / 7


def int8_code_book() -> torch.Tensor:
    """Symmetric absmax int8 as a code book: 255 evenly spaced levels k/127, k = -127 ... 127."""
    return torch.arange(-INT8_MAX, INT8_MAX + 1, dtype=torch.float32) / INT8_MAX


def nearest_level(x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
    """Index of the level of a sorted code book nearest to each value of x (int64, shaped like x).

    The decision boundaries are the midpoints between neighbouring levels; a value exactly on one goes down.
    """
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(x.contiguous(), midpoints.to(x.dtype))


def blockwise_quantize(x: torch.Tensor, code: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization to a code book: (indices uint8 shaped like x, fp32 absmax per block).

    Each block is divided by its absmax (so its values lie in [-1, 1]) and each value stored as the index of the
    nearest level of `code` (sorted, at most 256 levels).
    """
    if code.numel() > 256:
        raise ValueError(f"a code book for uint8 indices has at most 256 levels, this one has {code.numel()}")
    blocks = to_blocks(x.float(), block_size)
    absmax = blocks.abs().amax(dim=1)
    scaled = blocks * (1 / absmax.clamp(min=torch.finfo(torch.float32).tiny))[:, None]  # as bitsandbytes rounds it
    indices = nearest_level(scaled, code.float().to(x.device)).to(torch.uint8)
    return from_blocks(indices, x.shape), absmax


def blockwise_dequantize(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, block_size: int) -> torch.Tensor:
    """Undo `blockwise_quantize`: code[index] * absmax of the block (fp32, shaped like indices)."""
    blocks = to_blocks(indices.long(), block_size)
    return from_blocks(code.float().to(indices.device)[blocks] * absmax[:, None], indices.shape)


def nf4_quantize(x: torch.Tensor, block_size: int = NF4_BLOCK_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise NF4: (4-bit indices 0..15 as uint8 shaped like x, fp32 absmax per block of `block_size`)."""
    return blockwise_quantize(x, nf4_code_book(), block_size)


def nf4_dequantize(indices: torch.Tensor, absmax: torch.Tensor, block_size: int = NF4_BLOCK_SIZE) -> torch.Tensor:
    """Undo `nf4_quantize`: NF4 level * block absmax (fp32)."""
    return blockwise_dequantize(indices, absmax, nf4_code_book(), block_size)


def pack_4bit(indices: torch.Tensor) -> torch.Tensor:
    """Two 4-bit indices per byte, the first in the high half (bitsandbytes' layout): uint8 of ceil(n/2) values."""
    flat = indices.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    return (flat[0::2] << 4) | flat[1::2]


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `pack_4bit`: the first n indices (uint8)."""
    flat = packed.reshape(-1).to(torch.uint8)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n]


# ----------------------------------------------------------------------------------------------------------
# Double quantization: the block constants quantized to 8 bits
# ----------------------------------------------------------------------------------------------------------

@dataclass
class DoubleQuant:
    """Block constants stored in 8 bits: indices into `code`, one fp32 absmax per block of 256, and the mean."""
    indices: torch.Tensor  # uint8, one per first-level block
    absmax: torch.Tensor  # fp32, one per `block_size` indices
    offset: torch.Tensor  # fp32 scalar: the mean subtracted before quantizing
    code: torch.Tensor  # the 8-bit code book
    block_size: int


def double_quantize(absmax: torch.Tensor, block_size: int = DOUBLE_QUANT_BLOCK_SIZE,
                    code: torch.Tensor | None = None) -> DoubleQuant:
    """Quantize fp32 block constants to 8 bits, as QLoRA does: subtract their mean (they are all positive, so
    centring them uses both signs), then block-wise absmax with blocks of 256 and an 8-bit code book.

    `code` defaults to symmetric int8 (levels k/127); bitsandbytes uses its own 8-bit "dynamic" code
    (`bitsandbytes.functional.create_dynamic_map()`), which can be passed here.
    """
    code = int8_code_book() if code is None else code
    offset = absmax.float().mean()
    indices, absmax2 = blockwise_quantize(absmax.float() - offset, code, block_size)
    return DoubleQuant(indices, absmax2, offset, code, block_size)


def double_dequantize(dq: DoubleQuant) -> torch.Tensor:
    """The block constants back from their 8-bit form (fp32)."""
    return blockwise_dequantize(dq.indices, dq.absmax, dq.code, dq.block_size) + dq.offset


def nf4_bits_per_param(block_size: int = NF4_BLOCK_SIZE, double_quant: bool = False,
                       dq_block_size: int = DOUBLE_QUANT_BLOCK_SIZE) -> float:
    """Bits stored per weight in NF4: 4 for the index plus the block constants' share.

    Without double quantization one fp32 absmax per block: 4 + 32/64 = 4.5. With it one 8-bit constant per block
    and one fp32 per `dq_block_size` blocks: 4 + 8/64 + 32/(64*256) = 4.127 (per-tensor constants, such as the
    mean and the code books, are left out: they do not grow with the number of weights).
    """
    if double_quant:
        return 4 + 8 / block_size + 32 / (block_size * dq_block_size)
    return 4 + 32 / block_size


# ----------------------------------------------------------------------------------------------------------
# Models, and whether bitsandbytes can run here
# ----------------------------------------------------------------------------------------------------------

def quantizable_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The `nn.Linear` layers that transformers' bitsandbytes integration quantizes: all but `lm_head`."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and not name.endswith("lm_head")}


@torch.no_grad()
def replace_with_nf4_roundtrip(model: nn.Module, double_quant: bool = True) -> nn.Module:
    """Replace every quantizable Linear weight of `model` (in place) by its NF4 round trip: quantized by hand
    (block size 64, double quantization when asked) and dequantized back to the weight's dtype."""
    for linear in quantizable_linears(model).values():
        w = linear.weight
        indices, absmax = nf4_quantize(w.float())
        if double_quant:
            absmax = double_dequantize(double_quantize(absmax))
        w.copy_(nf4_dequantize(indices, absmax).to(w.dtype))
    return model


def four_bit_problem(device: str | torch.device = "cpu") -> str | None:
    """Why bitsandbytes can't do 4-bit NF4 on `device` here, in a sentence that says what to do, or None.

    Checks that bitsandbytes is installed and recent enough (`bitsandbytes_problem`), then quantizes a
    small tensor with it and compares the result with `nf4_quantize`: a missing kernel for this device, a CUDA
    build that doesn't match the driver, or wrong numbers all show up here rather than in the middle of a lesson.
    """
    problem = bitsandbytes_problem()
    if problem:
        return problem
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit
    install = f"run `pip install {BITSANDBYTES_PIN}` (0.49 and newer also run on CPUs) and restart the runtime"
    x = torch.linspace(-1, 1, 2 * NF4_BLOCK_SIZE)
    try:
        packed, state = quantize_4bit(x.to(device), blocksize=NF4_BLOCK_SIZE, quant_type="nf4")
        back = dequantize_4bit(packed, state).float().cpu()
    except Exception as err:
        first_line = (str(err).strip().splitlines() or [""])[0][:120]
        return (f"bitsandbytes {bnb.__version__} is installed but can't quantize to 4 bits on {device} "
                f"({type(err).__name__}: {first_line}); {install}")
    expected = nf4_dequantize(*nf4_quantize(x))
    if not torch.allclose(back.reshape(-1), expected, atol=1e-6):
        return f"bitsandbytes {bnb.__version__} gives wrong 4-bit values on {device}; {install}"
    return None


def bitsandbytes_problem() -> str | None:
    """Why 4-bit loading can't run here, in a sentence, or None when bitsandbytes is usable."""
    try:
        import bitsandbytes as bnb
    except Exception as err:
        return (f"bitsandbytes is not installed or failed to import ({type(err).__name__}); "
                f"run `pip install {BITSANDBYTES_PIN}`")
    from packaging.version import Version
    if Version(bnb.__version__) < Version(MIN_BITSANDBYTES):
        return f"bitsandbytes {bnb.__version__} is too old for 4-bit on this machine; run `pip install {BITSANDBYTES_PIN}`"
    return None


def bnb_4bit_config(compute_dtype: torch.dtype = torch.float16, double_quant: bool = True):
    """NF4 storage as QLoRA uses it. transformers' own defaults are fp4 without double quantization, so ask."""
    from transformers import BitsAndBytesConfig
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=double_quant, bnb_4bit_compute_dtype=compute_dtype)


def keep_standard_4bit_layout(model: nn.Module) -> None:
    """Keep bitsandbytes' 4-bit weights in their standard layout on a CPU.

    On CPUs with AVX512-BF16, bitsandbytes 0.50 repacks a `Linear4bit`'s weight for a faster kernel at its first
    inference forward, and undoes that only in part when the state dict is read (saving, merging): the outputs
    then change after `save_pretrained`. The course's models are small, so they keep the standard layout.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def dequantized(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """A 4-bit model (bitsandbytes) turned, in place, into plain Linear layers holding its NF4 weights unpacked and
    kept in `dtype`: the function a QLoRA adapter was trained on, up to 16-bit rounding, so an adapter merged into
    it is not rounded to 4 bits again."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # it logs the dtype it casts to: what the caller asked for
    try:
        model = model.dequantize(dtype=dtype)
    finally:
        hf_logging.set_verbosity(level)
    return model.to(dtype)
