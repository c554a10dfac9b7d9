"""count_params and param_breakdown against the model transformers builds on the meta device."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig

from course_utils.architecture import empty_model, module_kind
from course_utils.configs import known_names, load_config
from course_utils.params import ATTENTION, MLP, count_params, param_breakdown


def model_count(model) -> int:
    """The reference: every parameter tensor of the built model, a tied tensor counted once."""
    return sum(p.numel() for p in model.parameters())


def model_components(model) -> dict[str, int]:
    """The reference split: walk the built model's named parameters and sort them by module."""
    out = {"embeddings": 0, "attention": 0, "mlp": 0, "norms": 0, "lm_head": 0}
    for name, p in model.named_parameters():  # named_parameters() lists a tied tensor once, under its first name
        kind = module_kind(name.rsplit(".", 1)[0])
        key = ("embeddings" if kind == "embed_tokens" else "attention" if kind in ATTENTION else
               "mlp" if kind in MLP else "lm_head" if kind == "lm_head" else "norms")
        out[key] += p.numel()
    return out


@pytest.mark.parametrize("name", known_names())
def test_count_matches_the_meta_model_for_every_shipped_config(name):
    config = load_config(name)
    model = empty_model(config)
    assert count_params(config) == model_count(model)
    assert param_breakdown(config).components == model_components(model)


def test_per_layer_counts_match_one_decoder_layer():
    config = load_config("llama-3.2-1b")
    layer = empty_model(config).model.layers[0]
    per_layer = param_breakdown(config).per_layer
    for name, module in layer.named_modules():
        if name and not list(module.children()) and hasattr(module, "weight"):
            assert per_layer[module_kind(name)] == sum(p.numel() for p in module.parameters()), name
    assert param_breakdown(config).layer == sum(p.numel() for p in layer.parameters())


def test_the_8b_has_the_published_count():
    # Published figure (meta-device count with transformers 5.24, as in test_configs.py); the model count is the reference.
    config = load_config("llama-3.1-8b")
    assert count_params(config) == model_count(empty_model(config)) == 8_030_261_248


@st.composite
def llama_configs(draw):
    kv_heads = draw(st.integers(1, 4))
    heads = kv_heads * draw(st.integers(1, 4))
    explicit_head_dim = draw(st.booleans())
    hidden = heads * draw(st.integers(1, 6)) * 2
    kwargs = dict(
        vocab_size=draw(st.integers(2, 300)), hidden_size=hidden, intermediate_size=draw(st.integers(1, 200)),
        num_hidden_layers=draw(st.integers(1, 4)), num_attention_heads=heads, num_key_value_heads=kv_heads,
        tie_word_embeddings=draw(st.booleans()), attention_bias=draw(st.booleans()), mlp_bias=draw(st.booleans()),
    )
    if explicit_head_dim:  # a head dim that is not hidden_size / heads, as in Llama 3.2 and many small models
        kwargs["head_dim"] = 2 * draw(st.integers(1, 12))
    return LlamaConfig(**kwargs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(llama_configs())
def test_count_matches_the_meta_model_for_random_configs(config):
    model = empty_model(config)
    assert count_params(config) == model_count(model)
    assert param_breakdown(config).components == model_components(model)


def test_a_config_without_sizes_gets_a_clear_message():
    class NotLlama:
        hidden_size = 8
    with pytest.raises(ValueError, match="load_config"):
        count_params(NotLlama())


def test_exercise_checker_accepts_the_built_layers_count_and_rejects_others(capsys):
    from course_utils.exercises import nb02
    layer = empty_model(load_config("llama-3.2-3b")).model.layers[0]
    assert nb02.check_layer_params(sum(p.numel() for p in layer.parameters()))
    assert not nb02.check_layer_params(None) and not nb02.check_layer_params(1)
    assert "Not yet" in capsys.readouterr().out
