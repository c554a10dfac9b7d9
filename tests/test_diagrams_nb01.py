"""Notebook 01's pictures: grouped-query attention's head groups and one decoder layer with its LoRA targets,
each checked against the config's numbers and against PEFT's own default targets."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from course_utils.configs import load_config  # noqa: E402
from course_utils.params import LINEAR_KINDS, NORMS, linear_shapes  # noqa: E402
from course_utils.diagrams import draw_decoder_layer_targets, draw_gqa_groups  # noqa: E402


def patches(ax, prefix: str = "") -> dict:
    return {p.get_label(): p for p in ax.patches if p.get_label().startswith(prefix)}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("name, heads, kv_heads", [("llama-3.1-8b", 32, 8), ("llama-3.1-70b", 64, 8),
                                                   ("llama-3.1-405b", 128, 8), ("course-llama", 8, 4),
                                                   ("llama-3.2-1b", 32, 8)])
def test_gqa_has_one_patch_per_query_head_and_one_colour_per_kv_head(name, heads, kv_heads):
    config = load_config(name)
    assert (config.num_attention_heads, config.num_key_value_heads) == (heads, kv_heads)
    ax = draw_gqa_groups(config, name)
    queries = [patches(ax)[f"q{i}"] for i in range(heads)]
    keys = [patches(ax)[f"kv{j}"] for j in range(kv_heads)]
    assert len([p for p in ax.patches if p.get_label()[0] == "q"]) == heads
    assert len([p for p in ax.patches if p.get_label()[:2] == "kv"]) == kv_heads
    assert len({to_hex(p.get_facecolor()) for p in queries}) == kv_heads, "as many colours as KV heads"
    group = heads // kv_heads
    for i, query in enumerate(queries):  # each query head wears the colour of the KV head it shares
        assert to_hex(query.get_facecolor()) == to_hex(keys[i // group].get_facecolor())
        kv = keys[i // group]
        assert kv.get_x() <= query.get_x() and query.get_x() + query.get_width() <= kv.get_x() + kv.get_width() + 0.1
    title = ax.get_title()
    assert f"{heads} query heads share {kv_heads} key/value heads, {group} query heads per KV head" in title


def test_gqa_colours_stay_distinct_past_the_qualitative_palettes():
    config = load_config("llama-3.1-8b")
    config.num_attention_heads, config.num_key_value_heads = 96, 24  # more KV heads than tab20 has colours
    ax = draw_gqa_groups(config)
    assert len({to_hex(p.get_facecolor()) for p in patches(ax, "q").values()}) == 24


def test_peft_default_targets_are_the_ones_drawn_as_default():
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS
    from course_utils.lora import TARGET_SETS
    assert tuple(PEFT_DEFAULTS["llama"]) == TARGET_SETS["q, v (PEFT's default)"] == ("q_proj", "v_proj")


@pytest.mark.parametrize("name", ["llama-3.1-8b", "course-llama"])
def test_decoder_layer_marks_the_lora_targets(name):
    config = load_config(name)
    ax = draw_decoder_layer_targets(config, name)
    drawn = patches(ax)
    assert set(LINEAR_KINDS) | set(NORMS) <= set(drawn), "the seven Linear kinds and the two RMSNorms"
    assert len([p for p in ax.patches if p.get_label() == "residual add"]) == 2
    colour = {kind: to_hex(drawn[kind].get_facecolor()) for kind in (*LINEAR_KINDS, *NORMS)}
    default = {colour["q_proj"]}
    assert colour["v_proj"] in default
    added = {colour[kind] for kind in ("k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}
    assert len(added) == 1 and not added & default, "one colour for what all-linear adds, another for the default"
    assert colour["input_layernorm"] == colour["post_attention_layernorm"] not in default | added
    texts = [t.get_text() for t in ax.texts]
    for kind, (n_in, n_out) in linear_shapes(config).items():  # each Linear says its size from the config
        assert f"{kind}\n{n_in:,} -> {n_out:,}" in texts, kind
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[0] == "LoRA target by PEFT's default: q_proj, v_proj" and "all-linear" in legend[1]


def test_the_course_models_q_proj_is_drawn_wider_than_its_hidden_size():
    config = load_config("course-llama")  # head_dim 48, not 192 / 8 = 24
    texts = [t.get_text() for t in draw_decoder_layer_targets(config).texts]
    assert "q_proj\n192 -> 384" in texts and "o_proj\n384 -> 192" in texts and "k_proj\n192 -> 192" in texts
