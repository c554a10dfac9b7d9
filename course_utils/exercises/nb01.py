"""Checkers for notebook 01, the Llama 3.1 architecture. The answers are computed from the configs."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.exercises import as_number, as_numbers, close, not_a_number, not_numbers, report


def check_layers(answer: int) -> bool:
    """How many LlamaDecoderLayers does Llama 3.1 8B stack?"""
    n = load_config("llama-3.1-8b").num_hidden_layers
    if not_a_number(answer, whole=True):
        return False
    return report(as_number(answer, whole=True) == n, f"The 8B stacks {n} identical decoder layers.",
                  "Look for num_hidden_layers in the config, or count model.model.layers.")


def check_kv_heads_share(answer: int) -> bool:
    """In Llama 3.1 8B, how many query heads share one key/value head?"""
    c = load_config("llama-3.1-8b")
    n = c.num_attention_heads // c.num_key_value_heads
    if not_a_number(answer, whole=True):
        return False
    return report(as_number(answer, whole=True) == n, f"{c.num_attention_heads} query heads / {c.num_key_value_heads} KV heads = {n} per group.",
                  "Divide num_attention_heads by num_key_value_heads.")


def check_k_proj_shape(answer: tuple[int, int]) -> bool:
    """The weight shape (out, in) of k_proj in Llama 3.1 70B."""
    c = load_config("llama-3.1-70b")
    head_dim = c.hidden_size // c.num_attention_heads
    shape = (c.num_key_value_heads * head_dim, c.hidden_size)
    if not_numbers(answer, whole=True):
        return False
    return report(tuple(as_numbers(answer, whole=True) or ()) == shape, f"k_proj maps {shape[1]} -> {c.num_key_value_heads} KV heads x {head_dim} = {shape[0]}.",
                  "nn.Linear stores (out_features, in_features); out = KV heads x head dim, in = hidden size.")


def check_mlp_params(answer: int) -> bool:
    """Parameters in the MLP (gate, up, down) of one Llama 3.1 8B decoder layer."""
    c = load_config("llama-3.1-8b")
    n = 3 * c.hidden_size * c.intermediate_size
    if not_a_number(answer):
        return False
    return report(close(answer, n), f"3 x {c.hidden_size} x {c.intermediate_size} = {n:,}.",
                  "Three Linear layers, each hidden_size x intermediate_size, no biases.")
