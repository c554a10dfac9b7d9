"""Notebook 01's newer checkers: the course model's k_proj shape and three multiple-choice questions.

As in tests/test_exercises.py, the right answers are worked out here from the configs and from the transformers
modules themselves (the norms run, the attention's q_proj reshaped, the library's own RoPE frequencies), not read
from the checkers. Every checker is tried with its right answer, wrong answers, and answers of the wrong type.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRMSNorm

from course_utils.configs import load_config
from course_utils.exercises import nb01
from tests.test_exercises import assert_right, assert_wrong, verdict

WRONG_TYPES = (5, 2.5, ["b"], {"a": 1}, torch.tensor([1.0, 2.0]), True)


def assert_wrong_choice(capsys, checker, answer, options, right):
    """A wrong letter gets a hint that names neither the right letter nor the right option."""
    ok, out = verdict(capsys, checker, answer)
    assert ok is False and out.startswith("❌ Not yet."), out
    assert f"({right})" not in out and options[right] not in out, "the hint gives the answer away"
    return out


# --- the course model's k_proj ------------------------------------------------------------------------------

def test_course_k_proj_shape(capsys):
    c = load_config("course-llama")
    with torch.device("meta"):
        k_proj = LlamaAttention(c, layer_idx=0).k_proj
    shape = tuple(k_proj.weight.shape)
    assert c.head_dim != c.hidden_size // c.num_attention_heads, "the course model sets head_dim itself"
    assert shape == (c.num_key_value_heads * c.head_dim, c.hidden_size) == (192, 192)
    assert_right(capsys, nb01.check_course_k_proj_shape, shape)
    assert_right(capsys, nb01.check_course_k_proj_shape, list(shape))
    assert_right(capsys, nb01.check_course_k_proj_shape, torch.Size(shape))
    naive = (c.num_key_value_heads * (c.hidden_size // c.num_attention_heads), c.hidden_size)  # (96, 192)
    out = verdict(capsys, nb01.check_course_k_proj_shape, naive)[1]
    assert "hidden_size / num_attention_heads" in out, "the head_dim mistake is named"
    for wrong in (naive,
                  (c.num_attention_heads * c.head_dim, c.hidden_size),  # q_proj's shape: one KV head per query head
                  (c.hidden_size, naive[0])):                           # transposed and naive
        ok, out = verdict(capsys, nb01.check_course_k_proj_shape, wrong)
        assert ok is False and out.startswith("❌"), out
        assert "192" not in out, "the hint gives the answer away"


@pytest.mark.parametrize("answer", ["abc", 7, 2.5, [[1], "x"], {"a": 1}])
def test_course_k_proj_shape_of_the_wrong_type(capsys, answer):
    ok, out = verdict(capsys, nb01.check_course_k_proj_shape, answer)
    assert ok is False and out.startswith("❌ Not yet. Expected a list of whole numbers"), out


def test_the_70b_k_proj_checker_reads_head_dim_from_the_config(capsys):
    c = load_config("llama-3.1-70b")
    assert c.head_dim == c.hidden_size // c.num_attention_heads == 128  # every Llama 3.1 config agrees
    assert_right(capsys, nb01.check_k_proj_shape, (c.num_key_value_heads * c.head_dim, c.hidden_size))
    assert_wrong(capsys, nb01.check_k_proj_shape, (c.hidden_size, c.hidden_size), 1024)


# --- which module has no mean and no bias ---------------------------------------------------------------------

def test_only_rms_norm_has_no_mean_and_no_bias():
    """The facts behind the question: each norm run on x and on x + 5."""
    width = 8
    norms = {"a": torch.nn.LayerNorm(width), "b": LlamaRMSNorm(width), "c": torch.nn.BatchNorm1d(width),
             "d": torch.nn.GroupNorm(2, width)}
    torch.manual_seed(0)
    x = torch.randn(4, width)
    for letter, norm in norms.items():
        with torch.no_grad():
            shifted_the_same = torch.allclose(norm(x), norm(x + 5), atol=1e-4)
        has_bias = any(name == "bias" for name, _ in norm.named_parameters())
        assert shifted_the_same is has_bias is (letter != "b"), letter  # subtracting a mean ignores a shift
    assert [name for name, _ in norms["b"].named_parameters()] == ["weight"]
    assert nb01.NO_MEAN_NO_BIAS["b"] == type(norms["b"]).__name__


def test_no_mean_no_bias(capsys):
    options = nb01.NO_MEAN_NO_BIAS
    for right in ("b", "B", " (b) ", "LlamaRMSNorm", "RMSNorm", "rmsnorm"):
        assert_right(capsys, nb01.check_no_mean_no_bias, right)
    for wrong in ("a", "c", "d", "LayerNorm", "nn.LayerNorm", "torch.nn.BatchNorm1d", "GroupNorm"):
        out = assert_wrong_choice(capsys, nb01.check_no_mean_no_bias, wrong, options, "b")
        assert "RMSNorm" not in out


# --- what breaks when code assumes head_dim = hidden / heads ----------------------------------------------------

def test_assuming_hidden_over_heads_breaks_the_course_models_reshape():
    c = load_config("course-llama")
    naive = c.hidden_size // c.num_attention_heads
    torch.manual_seed(0)
    attention = LlamaAttention(c, layer_idx=0)
    with torch.no_grad():
        q = attention.q_proj(torch.randn(2, 7, c.hidden_size))
    assert q.shape[-1] == c.num_attention_heads * c.head_dim > c.num_attention_heads * naive  # (b): more numbers
    with pytest.raises(RuntimeError):
        q.view(2, 7, c.num_attention_heads, naive)
    assert q.view(2, 7, -1, naive).shape[2] == c.num_attention_heads * c.head_dim // naive != c.num_attention_heads
    c8 = load_config("llama-3.1-8b")
    assert c8.head_dim == c8.hidden_size // c8.num_attention_heads, "where the assumption holds, nothing breaks"


def test_head_dim_assumption(capsys):
    options = nb01.HEAD_DIM_ASSUMED
    for right in ("b", "B", "(b)"):
        assert_right(capsys, nb01.check_head_dim_assumption, right)
    for wrong in ("a", "c", "d"):
        assert_wrong_choice(capsys, nb01.check_head_dim_assumption, wrong, options, "b")


# --- which RoPE frequencies the llama3 scaling divides ---------------------------------------------------------

def test_llama3_scaling_divides_the_slow_frequencies_only():
    c = load_config("llama-3.1-8b")
    rope = c.rope_parameters
    plain = 1.0 / rope["rope_theta"] ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim)
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](c, "cpu")
    wavelength = 2 * math.pi / plain
    slow = wavelength > rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    fast = wavelength < rope["original_max_position_embeddings"] / rope["high_freq_factor"]
    assert slow.any() and fast.any() and (~slow & ~fast).any()
    torch.testing.assert_close(scaled[slow], plain[slow] / rope["factor"])   # (c)
    torch.testing.assert_close(scaled[fast], plain[fast])                    # not (a), not (b)
    assert not torch.equal(scaled, plain)                                    # not (d)


def test_rope_scaling(capsys):
    options = nb01.ROPE_SCALED
    for right in ("c", "C", "(c)"):
        assert_right(capsys, nb01.check_rope_scaling, right)
    for wrong in ("a", "b", "d"):
        assert_wrong_choice(capsys, nb01.check_rope_scaling, wrong, options, "c")


# --- every multiple-choice checker: blanks, stray letters and other types --------------------------------------

CHOICES = {"no_mean_no_bias": (nb01.check_no_mean_no_bias, nb01.NO_MEAN_NO_BIAS),
           "head_dim_assumption": (nb01.check_head_dim_assumption, nb01.HEAD_DIM_ASSUMED),
           "rope_scaling": (nb01.check_rope_scaling, nb01.ROPE_SCALED)}


@pytest.mark.parametrize("name", CHOICES)
def test_a_blank_gets_the_letters(capsys, name):
    checker, options = CHOICES[name]
    ok, out = verdict(capsys, checker, None)
    assert ok is False and out == f"❌ Not yet. Answer with one letter: {', '.join(options)}.\n"


@pytest.mark.parametrize("answer", ["e", "", "bb", "the second one"])
@pytest.mark.parametrize("name", CHOICES)
def test_a_string_that_is_no_option_gets_the_letters(capsys, name, answer):
    ok, out = verdict(capsys, CHOICES[name][0], answer)
    assert ok is False and "Expected one of the letters a, b, c, d" in out, out


@pytest.mark.parametrize("answer", WRONG_TYPES, ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("name", CHOICES)
def test_an_answer_of_the_wrong_type_gets_a_sentence_never_a_traceback(capsys, name, answer):
    ok, out = verdict(capsys, CHOICES[name][0], answer)
    assert ok is False and out.startswith("❌ Not yet. Expected one letter (a, b, c, d) as a string, got "), out


@pytest.mark.parametrize("name", CHOICES)
def test_four_options_and_one_hint_for_every_wrong_one(capsys, name):
    checker, options = CHOICES[name]
    assert list(options) == ["a", "b", "c", "d"]
    hints = {verdict(capsys, checker, letter)[1] for letter in options}
    assert len(hints) == 4, "each letter gets its own sentence"


def test_six_layers_is_judged_against_the_model_the_cell_built(capsys):
    """Exercise 6, predict then run: the count of a 6-layer course model, built on the meta device."""
    from course_utils.architecture import empty_model, num_params
    config = load_config("course-llama")
    three = num_params(empty_model(config))
    config.num_hidden_layers = 6
    built = num_params(empty_model(config))
    layer = (built - three) // 3
    assert built == three + 3 * layer and built != 2 * three  # the embeddings are there once
    assert verdict(capsys, lambda p: nb01.check_six_layers(p, built), three + 3 * layer)[0] is True
    first = verdict(capsys, lambda p: nb01.check_six_layers(p, built), 2 * three)[1]
    second = verdict(capsys, lambda p: nb01.check_six_layers(p, built), 2 * three)[1]
    assert f"{three:,}" not in first and f"{three:,}" in second, (first, second)
    assert "run the cell again" in verdict(capsys, lambda p: nb01.check_six_layers(p, built), None)[1]
    assert "Run the cell" in verdict(capsys, nb01.check_six_layers, 123)[1]
    assert "Expected a whole number" in verdict(capsys, lambda p: nb01.check_six_layers(p, built), "many")[1]
