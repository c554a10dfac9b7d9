import time

import torch

from course_utils.architecture import (empty_model, layer_table, modules_by_kind, num_params, random_model,
                                       size_summary, trace_shapes)
from course_utils.configs import load_config


def test_405b_builds_fast_on_meta_without_memory():
    start = time.perf_counter()
    model = empty_model(load_config("llama-3.1-405b"))
    assert time.perf_counter() - start < 5
    assert all(p.is_meta for p in model.parameters())


def test_modules_by_kind_finds_every_projection_of_every_layer():
    config = load_config("llama-3.1-8b")
    kinds = modules_by_kind(empty_model(config), torch.nn.Linear)
    for kind in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert len(kinds[kind]) == config.num_hidden_layers
    assert kinds["lm_head"] == ["lm_head"]


def test_layer_table_adds_up_to_the_model():
    config = load_config("llama-3.2-1b")
    model = empty_model(config)
    per_layer = sum(r["params"] for r in layer_table(model))
    rest = config.vocab_size * config.hidden_size + config.hidden_size  # tied embedding table + final norm
    assert per_layer * config.num_hidden_layers + rest == num_params(model)
    shapes = {r["module"]: r["weight shape"] for r in layer_table(model)}
    kv = config.num_key_value_heads * config.head_dim
    assert shapes["self_attn.k_proj"] == (kv, config.hidden_size)


def test_size_summary_reads_gqa_from_the_config():
    s = size_summary(load_config("llama-3.1-70b"))
    assert (s["layers"], s["attention heads"], s["key/value heads"], s["heads per KV group"]) == (80, 64, 8, 8)


def test_forward_trace_has_the_expected_shapes():
    config = load_config("course-llama")
    model = random_model(config)
    ids = torch.randint(0, config.vocab_size, (2, 5))
    trace = dict(trace_shapes(model, ids, kinds={"embed_tokens", "mlp", "lm_head"}))
    assert trace["model.embed_tokens"] == (2, 5, config.hidden_size)
    assert trace["model.layers.0.mlp"] == (2, 5, config.hidden_size)
    assert trace["lm_head"] == (2, 5, config.vocab_size)


def test_random_model_is_reproducible():
    config = load_config("course-llama")
    a, b = random_model(config, seed=3), random_model(config, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
