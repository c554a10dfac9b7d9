"""course_utils.quantization against bitsandbytes (which quantizes to NF4 on the CPU from 0.49 on).

Tolerances, and why:
- The NF4 code book: bitsandbytes ships its 16 levels as float32 constants, generated with scipy from a float32
  grid of probabilities starting at the rounded offset 0.9677083; ours come from float64 quantiles at the exact
  offset 1 - (1/32 + 1/30)/2. They agree to 2e-7 (3 float32 steps at 1.0), and so do values dequantized with the
  two tables (2e-7 x the block's absmax, plus one rounding of the product to the tensor's dtype). With
  bitsandbytes' own table the dequantized values are bit-identical.
- The block absmax: exact. The 4-bit indices and the packed bytes: exact when our code uses bitsandbytes' table;
  with the hand-made table a value within 2e-7 of the midpoint between two levels (about one in 10^5 weights)
  can land on the neighbouring level, and the test checks that this is the only difference.
- Double quantization: bitsandbytes' 8-bit block kernel finds the code index with a fast search that, for a value
  within a hair of the midpoint between two levels, can return the farther one. So a few block constants (we allow
  0.5%) differ by one neighbouring level, each lying within 1% of a step from a midpoint; all others are exact.
"""

from __future__ import annotations

import math

import pytest
import torch

from course_utils import footprint, memory
from course_utils import quantization as Q

bnb = pytest.importorskip("bitsandbytes")
F = pytest.importorskip("bitsandbytes.functional")

CODE_ATOL = 2e-7


def bnb_nf4_table() -> torch.Tensor:
    return F.get_4bit_type("nf4", device="cpu")


def test_nf4_code_book_is_bitsandbytes_table():
    code = Q.nf4_code_book()
    assert code.shape == (16,) and code.dtype == torch.float32
    torch.testing.assert_close(code, bnb_nf4_table(), rtol=0, atol=CODE_ATOL)


def test_nf4_code_book_has_the_papers_shape():
    code = Q.nf4_code_book()
    assert torch.all(code[1:] > code[:-1]), "sorted, 16 distinct levels"
    assert (code == 0).sum() == 1, "an exact zero"
    assert (code > 0).sum() == 8 and (code < 0).sum() == 7, "asymmetric: 8 positive, 7 negative"
    assert code[0] == -1 and code[-1] == 1
    assert math.isclose(Q.NF4_OFFSET, 0.9677083, abs_tol=1e-7), "the offset bitsandbytes' create_normal_map uses"


def assert_same_levels(x, indices, their_indices, absmax):
    """Our NF4 indices equal bitsandbytes' except, at most, for a value within CODE_ATOL of the midpoint between
    two neighbouring levels, where the two tables' last bits can tip the choice either way."""
    differ = torch.nonzero(indices.reshape(-1) != their_indices.reshape(-1)).flatten()
    assert len(differ) <= max(1, 1e-4 * x.numel())
    scaled = Q.from_blocks(Q.to_blocks(x.float(), 64) * (1 / absmax)[:, None], x.shape).reshape(-1)
    table = bnb_nf4_table()
    for i in differ.tolist():
        a, b = int(indices.reshape(-1)[i]), int(their_indices.reshape(-1)[i])
        assert abs(a - b) == 1 and abs(scaled[i] - (table[a] + table[b]) / 2) <= CODE_ATOL
    return differ


@pytest.mark.parametrize("shape", [(256, 320), (7, 33), (5,), (3, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_quantize_matches_bitsandbytes(shape, dtype):
    torch.manual_seed(sum(shape))
    x = (torch.randn(shape) * 0.02).to(dtype)
    n = x.numel()
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4")
    theirs = F.dequantize_4bit(packed, state)  # in x's dtype

    # The algorithm, with bitsandbytes' own table: the same levels, bytes, absmax and values, bit for bit.
    indices, absmax = Q.blockwise_quantize(x, bnb_nf4_table(), 64)
    assert indices.shape == x.shape and indices.dtype == torch.uint8
    assert torch.equal(indices.reshape(-1), Q.unpack_4bit(packed, n))
    if n % 2 == 0:
        assert torch.equal(Q.pack_4bit(indices), packed.reshape(-1))
    assert torch.equal(absmax, state.absmax)
    assert torch.equal(Q.blockwise_dequantize(indices, absmax, bnb_nf4_table(), 64).to(dtype), theirs)

    # With the hand-made code book: the same absmax, the same levels (but next to a midpoint), close values.
    indices, absmax = Q.nf4_quantize(x)
    assert torch.equal(absmax, state.absmax)
    differ = assert_same_levels(x, indices, Q.unpack_4bit(packed, n), absmax)
    ours = Q.nf4_dequantize(indices, absmax).reshape(-1)
    per_value_absmax = Q.from_blocks(absmax[:, None].expand(-1, 64), x.shape).reshape(-1)
    rounding = torch.finfo(dtype).eps * theirs.float().abs().reshape(-1)  # theirs was rounded once to x's dtype
    close = (ours - theirs.float().reshape(-1)).abs() <= CODE_ATOL * per_value_absmax + rounding
    close[differ] = True
    assert torch.all(close)


def test_pack_and_unpack_are_inverse():
    indices = torch.randint(0, 16, (11,), dtype=torch.uint8)
    packed = Q.pack_4bit(indices)
    assert packed.numel() == 6 and packed.dtype == torch.uint8
    assert torch.equal(Q.unpack_4bit(packed, 11), indices)


def test_absmax_int8_matches_bitsandbytes_rowwise():
    torch.manual_seed(1)
    x = torch.randn(32, 256)
    q_ref, row_absmax, _ = F.int8_vectorwise_quant(x.clone())
    q, absmax = Q.blockwise_absmax_quantize(x, block_size=256)  # a block per row = bitsandbytes' row-wise int8
    assert torch.equal(q, q_ref) and torch.equal(absmax, row_absmax)
    q1, absmax1 = Q.absmax_quantize(x[:1])
    q1_ref, absmax1_ref, _ = F.int8_vectorwise_quant(x[:1].clone())
    assert torch.equal(q1, q1_ref) and torch.equal(absmax1.reshape(1), absmax1_ref)
    torch.testing.assert_close(Q.blockwise_absmax_dequantize(q, absmax, 256), q_ref.float() * row_absmax[:, None] / 127)
    torch.testing.assert_close(Q.absmax_dequantize(q1, absmax1), q1_ref.float() * absmax1_ref[:, None] / 127)


def test_double_quant_matches_bitsandbytes():
    torch.manual_seed(2)
    x = torch.randn(64 * 256 * 3 + 64 * 5) * 0.02  # 773 blocks: three full second-level blocks and a short one
    packed, state = F.quantize_4bit(x, blocksize=64, quant_type="nf4", compress_statistics=True)
    indices, absmax = Q.nf4_quantize(x)
    dq = Q.double_quantize(absmax, code=F.create_dynamic_map())  # bitsandbytes' 8-bit code

    assert torch.equal(dq.offset, state.offset)
    assert torch.equal(dq.absmax, state.state2.absmax) and state.state2.blocksize == dq.block_size == 256
    differ = torch.nonzero(dq.indices != state.absmax).flatten()
    assert len(differ) <= 0.005 * absmax.numel()
    code = dq.code
    for i in differ.tolist():
        a, b = int(dq.indices[i]), int(state.absmax[i])
        assert abs(a - b) == 1, "only ever the neighbouring level"
        scaled = (absmax[i] - dq.offset) / dq.absmax[i // 256]
        midpoint, step = (code[a] + code[b]) / 2, (code[a] - code[b]).abs()
        assert (scaled - midpoint).abs() < 0.01 * step, "and only for a value next to the midpoint"
        assert (scaled - code[a]).abs() <= (scaled - code[b]).abs(), "ours is the nearer level"

    ours = Q.double_dequantize(dq)
    theirs = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
    same = dq.indices == state.absmax
    assert torch.equal(ours[same], theirs[same])
    weights = F.dequantize_4bit(packed, state)
    by_hand = Q.blockwise_dequantize(indices, ours, bnb_nf4_table(), 64)
    assert torch.equal(by_hand.reshape(-1, 64)[same], weights.reshape(-1, 64)[same])


def test_double_quant_with_int8_default_is_within_half_a_step():
    torch.manual_seed(3)
    absmax = torch.rand(1000) * 0.1 + 0.01
    dq = Q.double_quantize(absmax)
    back = Q.double_dequantize(dq)
    # reference: absmax int8 of the centred constants, block by block (bitsandbytes' row-wise int8)
    centred = Q.to_blocks(absmax - absmax.mean(), 256)
    q_ref, scales, _ = F.int8_vectorwise_quant(centred.clone())
    expected = Q.from_blocks(q_ref.float() * scales[:, None] / 127, absmax.shape) + absmax.mean()
    torch.testing.assert_close(back, expected, rtol=0, atol=1e-7)
    assert dq.indices.dtype == torch.uint8 and dq.absmax.numel() == 4


@pytest.mark.parametrize("double_quant", [False, True])
def test_bits_per_param_is_what_bitsandbytes_stores(double_quant):
    n = 64 * 256 * 8
    packed, state = F.quantize_4bit(torch.randn(n), blocksize=64, quant_type="nf4", compress_statistics=double_quant)
    stored = packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()
    if double_quant:
        stored += state.state2.absmax.numel() * 4
    assert stored * 8 / n == Q.nf4_bits_per_param(double_quant=double_quant)
    assert Q.nf4_bits_per_param(double_quant=False) == 4.5
    assert round(Q.nf4_bits_per_param(double_quant=True) - 4, 3) == 0.127


def test_bad_block_size_and_code_book_are_explained():
    with pytest.raises(ValueError, match="block_size"):
        Q.blockwise_absmax_quantize(torch.ones(4), block_size=0)
    with pytest.raises(ValueError, match="256 levels"):
        Q.blockwise_quantize(torch.ones(4), torch.linspace(-1, 1, 300), 64)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from course_utils.architecture import random_model
    from course_utils.configs import load_config
    folder = tmp_path_factory.mktemp("tiny")
    random_model(load_config("course-llama"), seed=0).save_pretrained(folder)
    return folder


def load_4bit(folder, double_quant: bool):
    from transformers import AutoModelForCausalLM
    from course_utils.quantization import bnb_4bit_config
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, device_map="cpu",
                                                quantization_config=bnb_4bit_config(torch.float32, double_quant))


@pytest.mark.parametrize("double_quant", [True, False])
def test_footprint_of_a_4bit_model_is_weight_bytes(tiny_model_dir, double_quant):
    model = load_4bit(tiny_model_dir, double_quant)
    assert isinstance(model.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)
    measured = footprint.footprint_bytes(model)
    predicted = memory.weight_bytes(model.config, "nf4", double_quant=double_quant, unquantized="fp32")
    assert sum(measured.values()) == predicted
    assert measured["quantized weights"] + measured["other weights and buffers"] == model.get_memory_footprint()


def test_hand_nf4_roundtrip_equals_the_4bit_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    model = load_4bit(tiny_model_dir, double_quant=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    originals = {name: m.weight.detach().clone() for name, m in Q.quantizable_linears(base).items()}
    by_hand = Q.replace_with_nf4_roundtrip(base, double_quant=False)
    hand_layers = Q.quantizable_linears(by_hand)
    assert set(hand_layers) == {n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}
    for name, linear in hand_layers.items():
        w4 = model.get_submodule(name).weight
        x, absmax = originals[name], w4.quant_state.absmax
        indices, _ = Q.nf4_quantize(x)
        differ = assert_same_levels(x, indices, Q.unpack_4bit(w4.data, x.numel()), absmax)
        theirs = F.dequantize_4bit(w4.data, w4.quant_state).reshape(-1)
        ours = linear.weight.detach().reshape(-1)
        tol = CODE_ATOL * Q.from_blocks(absmax[:, None].expand(-1, 64), x.shape).reshape(-1) + 1.2e-7 * theirs.abs()
        close = (ours - theirs).abs() <= tol
        close[differ] = True
        assert torch.all(close), name


def test_four_bit_problem_is_none_here_and_a_sentence_otherwise(monkeypatch):
    assert Q.four_bit_problem("cpu") is None

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")
    monkeypatch.setattr(F, "quantize_4bit", broken)
    problem = Q.four_bit_problem("cpu")
    assert "can't quantize" in problem and "no kernel" in problem and "pip install bitsandbytes" in problem
    monkeypatch.undo()

    monkeypatch.setattr(F, "dequantize_4bit", lambda packed, state: torch.zeros(128))
    assert "wrong 4-bit values" in Q.four_bit_problem("cpu")
    monkeypatch.undo()

    monkeypatch.setattr(Q, "bitsandbytes_problem", lambda: "bitsandbytes is not installed; run `pip install x`")
    assert Q.four_bit_problem("cpu").startswith("bitsandbytes is not installed")


def test_exercise_checkers(capsys):
    from course_utils.exercises import nb05
    code = Q.nf4_code_book()
    assert nb05.check_int8_block([round(127 * v / 0.5) for v in nb05.BLOCK])
    assert not nb05.check_int8_block(None) and not nb05.check_int8_block([0, 0, 0, 0])
    assert nb05.check_nf4_index(int((code - nb05.WEIGHT / nb05.BLOCK_ABSMAX).abs().argmin()))
    assert not nb05.check_nf4_index(None)
    # 70B reference: the meta-device model's Linear weights outside lm_head, at 4.5 and 4.127 bits
    from course_utils.architecture import empty_model
    from course_utils.configs import load_config
    model = empty_model(load_config("llama-3.1-70b"))
    n = sum(m.weight.numel() for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and ".layers." in name)
    assert nb05.check_70b_nf4_bytes(n * 4.5 / 8, n * (4 + 8 / 64 + 32 / 64 / 256) / 8)
    assert not nb05.check_70b_nf4_bytes(n * 4 / 8, n * 4 / 8)
    assert not nb05.check_70b_nf4_bytes(None, None)
    assert "Correct" in capsys.readouterr().out


def test_dequantized_is_the_4bit_function_in_plain_layers(tiny_model_dir):
    """`dequantized` unpacks every Linear4bit into a plain Linear: in float32 the logits are the 4-bit model's (it
    computes with the same dequantized weights); in bf16 they differ by 16-bit rounding only, far less than the
    4-bit rounding that separates the 4-bit model from the never-rounded base."""
    from transformers import AutoModelForCausalLM
    ids = torch.randint(0, 100, (2, 12), generator=torch.Generator().manual_seed(0))
    model4 = load_4bit(tiny_model_dir, double_quant=True)
    Q.keep_standard_4bit_layout(model4)  # as runtime.load_model does on a CPU
    with torch.no_grad():
        four = model4(ids).logits
        full = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)(ids).logits
        plain32 = Q.dequantized(load_4bit(tiny_model_dir, double_quant=True), torch.float32)
        plain16 = Q.dequantized(load_4bit(tiny_model_dir, double_quant=True), torch.bfloat16)
        assert not any(isinstance(m, bnb.nn.Linear4bit) for m in [*plain32.modules(), *plain16.modules()])
        assert next(plain16.parameters()).dtype == torch.bfloat16
        assert torch.allclose(plain32(ids).logits, four, atol=1e-4)
        rounding16 = (plain16(ids).logits.float() - four).abs().max()
    assert rounding16 < (full - four).abs().max() / 2, rounding16
