"""Notebook 01's exercise checkers: the right answer passes with a "✅" line, plausible mistakes get a "❌" hint.

The right answers are worked out here from the configs' numbers and from the transformers modules themselves
(built on the meta device), not from the checkers; the published figures are pinned beside them.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP

from course_utils.configs import load_config
from course_utils.exercises import nb01


def verdict(capsys, checker, answer) -> tuple[bool, str]:
    """What the checker returns, and the one line it prints."""
    ok = checker(answer)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\n"), out
    return ok, out


def assert_right(capsys, checker, answer):
    ok, out = verdict(capsys, checker, answer)
    assert ok is True and out.startswith("✅"), out


# Answers of every type a checker should turn away with a sentence.
ODD = ["abc", 2.5, torch.tensor([1.0, 2.0]), [[1], "x"], {"a": 1}, True, 7]


def assert_wrong_words(capsys, checker, answer, *secret):
    """A wrong answer fails with a hint that gives none of `secret` away; returns the line."""
    ok, out = verdict(capsys, checker, answer)
    assert ok is False and out.startswith("❌ Not yet."), out
    for word in secret:
        assert word not in out, f"the hint gives {word!r} away: {out}"
    return out


def assert_wrong(capsys, checker, answer, right):
    ok, out = verdict(capsys, checker, answer)
    assert ok is False and out.startswith("❌"), out
    assert str(right) not in out and f"{right:,}" not in out, "the hint gives the answer away"


def test_layers(capsys):
    c = load_config("llama-3.1-8b")
    layers = c.num_hidden_layers
    assert layers == 32
    assert_right(capsys, nb01.check_layers, layers)
    for wrong in (31, 33, 16, 80, 126):  # off by one, the 1B's count, the 70B's and the 405B's
        assert_wrong(capsys, nb01.check_layers, wrong, layers)


def test_kv_heads_share(capsys):
    c = load_config("llama-3.1-8b")
    share = c.num_attention_heads // c.num_key_value_heads
    assert (c.num_attention_heads, c.num_key_value_heads, share) == (32, 8, 4)
    assert_right(capsys, nb01.check_kv_heads_share, share)
    for wrong in (c.num_key_value_heads, c.num_attention_heads, 1, 2):  # the KV heads, the query heads, MHA
        assert_wrong(capsys, nb01.check_kv_heads_share, wrong, share)


def test_k_proj_shape(capsys):
    c = load_config("llama-3.1-70b")
    with torch.device("meta"):
        k_proj = LlamaAttention(c, layer_idx=0).k_proj
    shape = tuple(k_proj.weight.shape)
    assert shape == (c.num_key_value_heads * c.head_dim, c.hidden_size) == (1024, 8192)
    assert_right(capsys, nb01.check_k_proj_shape, shape)
    assert_right(capsys, nb01.check_k_proj_shape, list(shape))  # a list is read as the same shape
    for wrong in ((8192, 1024),                           # (in, out): transposed
                  (c.hidden_size, c.hidden_size),         # q_proj's shape: as many KV heads as query heads
                  (1024, 4096)):                          # the 8B's hidden size
        ok, out = verdict(capsys, nb01.check_k_proj_shape, wrong)
        assert ok is False and out.startswith("❌"), out
        assert "1024" not in out, "the hint gives the answer away"


def test_mlp_params(capsys):
    c = load_config("llama-3.1-8b")
    with torch.device("meta"):
        mlp = LlamaMLP(c)
    params = sum(p.numel() for p in mlp.parameters())
    assert params == 3 * c.hidden_size * c.intermediate_size == 176_160_768
    assert_right(capsys, nb01.check_mlp_params, params)
    assert_right(capsys, nb01.check_mlp_params, float(params))  # 1.7616e8 typed as a float is fine
    for wrong in (2 * c.hidden_size * c.intermediate_size,      # forgot the gate projection
                  c.hidden_size * c.intermediate_size,          # one matrix
                  params + c.intermediate_size * 2 + c.hidden_size,  # counted biases the layers don't have
                  4 * c.hidden_size * c.hidden_size * 3):       # assumed the classic 4 x hidden MLP width
        assert_wrong(capsys, nb01.check_mlp_params, wrong, params)


@pytest.mark.parametrize("checker", [nb01.check_layers, nb01.check_kv_heads_share, nb01.check_mlp_params])
def test_a_non_number_is_wrong_not_an_error(capsys, checker):
    ok, out = verdict(capsys, checker, "thirty-two")
    assert ok is False and out.startswith("❌"), out


def _checkers():
    """Every checker of notebooks 01 to 06 (each `check_*` function of course_utils.exercises.nbNN), each taking
    one answer: a checker of two answers (a guess and a measurement) gets the same answer twice."""
    import importlib
    import inspect
    found = {}
    for number in range(1, 7):
        module = importlib.import_module(f"course_utils.exercises.nb{number:02d}")
        for name, checker in inspect.getmembers(module, inspect.isfunction):
            if not name.startswith("check_") or checker.__module__ != module.__name__:
                continue
            required = [p for p in inspect.signature(checker).parameters.values() if p.default is p.empty]
            found[f"nb{number:02d}.{name}"] = checker if len(required) <= 1 else (
                lambda answer, checker=checker, n=len(required): checker(*[answer] * n))
    return found


def test_every_notebook_has_at_least_four_checked_exercises():
    per_notebook = {}
    for name in _checkers():
        per_notebook[name[:4]] = per_notebook.get(name[:4], 0) + 1
    assert sorted(per_notebook) == [f"nb{n:02d}" for n in range(1, 7)]
    assert all(count >= 4 for count in per_notebook.values()), per_notebook


# Answers of types that some checker does not expect (an int is the wrong type for a list or a function).
ODD_ANSWERS = {"a string": "abc", "a float": 2.5, "a tensor": torch.tensor([1.0, 2.0]), "a list": [[1], "x"],
               "a dict": {"a": 1}, "a bool": True, "an int": 7}


@pytest.mark.parametrize("kind", ODD_ANSWERS)
@pytest.mark.parametrize("name", list(_checkers()))
def test_an_answer_of_the_wrong_type_gets_a_sentence_never_a_traceback(capsys, name, kind):
    ok, out = verdict(capsys, _checkers()[name], ODD_ANSWERS[kind])
    assert ok is False and out.startswith("❌ Not yet."), out


@pytest.mark.parametrize("answer, words", [("abc", "Expected a whole number, got 'abc' (str)."),
                                           (2.5, "Expected a whole number, got 2.5 (float)."),
                                           (torch.tensor([32, 32]), "got tensor([32, 32]) (Tensor)"),
                                           ([32], "got [32] (list)"), (True, "got True (bool)")])
def test_the_sentence_names_what_was_expected_and_what_came(capsys, answer, words):
    ok, out = verdict(capsys, nb01.check_layers, answer)
    assert ok is False and words in out, out


def test_other_shapes_of_the_right_answer_count(capsys):
    import numpy as np

    from course_utils.exercises import nb04, nb05, nb06
    assert_right(capsys, nb01.check_layers, torch.tensor(32))
    assert_right(capsys, nb01.check_layers, np.int64(32))
    assert_right(capsys, nb01.check_layers, 32.0)
    assert_right(capsys, nb01.check_k_proj_shape, torch.Size([1024, 8192]))
    assert_right(capsys, nb01.check_k_proj_shape, torch.tensor([1024, 8192]))
    assert_right(capsys, nb04.check_mlp_targets, ("gate_proj", "up_proj", "down_proj"))
    block = torch.tensor(nb05.BLOCK)
    assert_right(capsys, nb05.check_int8_block, torch.round(127 * block / block.abs().max()).int())
    assert_right(capsys, nb06.check_label_mask, lambda p, a, e: torch.tensor([-100] * len(p) + a + [e]))
    assert "Expected a list or set of module names (strings), got 5 (int)." in verdict(capsys, nb04.check_mlp_targets, 5)[1]
    assert "should return a list of label ids, not 5 (int)" in verdict(capsys, nb06.check_label_mask, lambda p, a, e: 5)[1]


def test_a_predict_then_run_checker_asks_for_the_run_then_for_the_prediction(capsys):
    from course_utils.exercises import unready
    assert unready("a", False, "Run the cell first.", " (a, b) and run it again.")
    assert capsys.readouterr().out.strip() == "❌ Not yet. Run the cell first."
    assert unready(None, True, "Run the cell first.", " (a, b) and run it again.")
    assert capsys.readouterr().out.strip() == "❌ Not yet. Write your prediction in MY_PREDICTION (a, b) and run it again."
    assert not unready("a", True, "Run the cell first.", " (a, b) and run it again.")
    assert capsys.readouterr().out == ""  # both there: the checker goes on and says the verdict
