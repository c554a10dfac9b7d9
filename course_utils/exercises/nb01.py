"""Checkers for notebook 01, the Llama 3.1 architecture. The answers are computed from the configs."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.exercises import (as_number, as_numbers, choice, close, not_a_number, not_numbers, report,
                                    two_step, unready)
from course_utils.params import head_dim as width_of_head


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
    head_dim = width_of_head(c)  # the config's head_dim (128 = hidden / heads in every Llama 3.1 config)
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


def check_course_k_proj_shape(answer: tuple[int, int]) -> bool:
    """The weight shape (out, in) of k_proj in the course's small model, whose config sets head_dim itself."""
    c = load_config("course-llama")
    head_dim = width_of_head(c)
    shape = (c.num_key_value_heads * head_dim, c.hidden_size)
    if not_numbers(answer, whole=True):
        return False
    given = tuple(as_numbers(answer, whole=True) or ())
    hint = "nn.Linear stores (out_features, in_features); out = KV heads x the config's head_dim, in = hidden size."
    if given == (c.num_key_value_heads * (c.hidden_size // c.num_attention_heads), c.hidden_size):
        hint = "That is what hidden_size / num_attention_heads would give; this config sets head_dim itself."
    return report(given == shape, f"{c.num_key_value_heads} KV heads x head_dim {head_dim} = {shape[0]} out, "
                  f"{shape[1]} in (hidden / heads would be {c.hidden_size // c.num_attention_heads}).", hint)


# The multiple-choice questions: the options as the notebook prints them, the right letter, and for each wrong
# letter a hint that points at the section to reread without naming the answer.
NO_MEAN_NO_BIAS = {"a": "torch.nn.LayerNorm", "b": "LlamaRMSNorm", "c": "torch.nn.BatchNorm1d",
                   "d": "torch.nn.GroupNorm"}
HEAD_DIM_ASSUMED = {
    "a": "Nothing: for the course model hidden_size // num_attention_heads equals the config's head_dim.",
    "b": "The reshape fails: q_proj puts out more numbers per token than num_attention_heads x that head_dim.",
    "c": "It runs, but the KV cache it keeps comes out smaller than the model's.",
    "d": "It runs, but RoPE then rotates only half of each head.",
}
ROPE_SCALED = {
    "a": "All of them, by the same factor.",
    "b": "The fast ones, whose wavelength is shorter than original_max_position_embeddings / high_freq_factor.",
    "c": "The slow ones, whose wavelength is longer than original_max_position_embeddings / low_freq_factor.",
    "d": "None: only max_position_embeddings changes.",
}


def _plain(text: str) -> str:
    """An answer or option as compared: "(B)" -> "b", "torch.nn.LayerNorm" -> "layernorm", "RMSNorm" -> "rmsnorm"."""
    return text.strip().strip("()").strip().lower().removeprefix("torch.").removeprefix("nn.").removeprefix("llama")


def _choice(answer, options: dict[str, str], right: str, praise: str, hints: dict[str, str],
            names: bool = False) -> bool:
    """A letter ("b", "(B)"), or with `names` the option itself ("LlamaRMSNorm"); the praise names the option."""
    return choice(answer, options, right, f"{options[right]} {praise}", hints, names=names, normalize=_plain)

def check_no_mean_no_bias(answer: str) -> bool:
    """Which of NO_MEAN_NO_BIAS normalises without subtracting a mean and has no bias? A letter or the name."""
    hints = {"a": "LayerNorm subtracts the mean and adds a bias: compare layer_norm and rms_norm in section 3c.",
             "c": "BatchNorm subtracts a mean (over the batch) and adds a bias; one option divides only by the "
                  "root mean square.",
             "d": "GroupNorm subtracts the mean of each group of channels and adds a bias; reread section 3c."}
    return _choice(answer, NO_MEAN_NO_BIAS, "b", "divides by the root mean square and scales by one learned "
                   "weight per dimension: no mean, no bias.", hints, names=True)


def check_head_dim_assumption(answer: str) -> bool:
    """Code that takes head_dim = hidden_size // num_attention_heads, run on the course model: what happens?"""
    c = load_config("course-llama")
    naive, real = c.hidden_size // c.num_attention_heads, width_of_head(c)
    hints = {"a": "Compute both for course-llama: hidden_size // num_attention_heads and config.head_dim.",
             "c": "The KV cache follows k_proj and v_proj; look first at how wide q_proj's output is.",
             "d": "RoPE follows the head width the model was built with; look at q_proj's out_features."}
    return _choice(answer, HEAD_DIM_ASSUMED, "b", f"q_proj gives {c.num_attention_heads} x {real} = "
                   f"{c.num_attention_heads * real} numbers per token, not {c.num_attention_heads} x {naive}.", hints)


def check_rope_scaling(answer: str) -> bool:
    """Which frequencies does Llama 3.1's "llama3" RoPE scaling divide by the full factor?"""
    rope = load_config("llama-3.1-8b").rope_parameters
    longest = rope["original_max_position_embeddings"] / rope["low_freq_factor"]
    hints = {"a": "Then nearby word order would change too; see which pairs keep their frequency in the plot of 3a.",
             "b": "The fast pairs turn many times within the original context; the plot of 3a shows what happens "
                  "to them.",
             "d": "The plot of 3a shows some frequencies moving: which ones?"}
    return _choice(answer, ROPE_SCALED, "c", f"Wavelengths longer than {longest:,.0f} positions are stretched "
                   f"{rope['factor']:g}x; the fast pairs keep theirs, and those between are blended.", hints)


def check_six_layers(prediction, measured: int | None = None) -> bool:
    """Exercise 6, predict then run: the course's small model with 6 decoder layers instead of 3, in parameters;
    `measured` is the count of the model the cell builds."""
    if unready(prediction, measured is not None, "Run the cell: it builds the 6-layer model and passes its count "
               "here.", " and run the cell again: the checker compares it with the model the cell built."):
        return False
    if not_a_number(prediction, whole=True):
        return False
    from course_utils.architecture import empty_model, num_params
    three = num_params(empty_model(load_config("course-llama")))
    per_layer = (measured - three) // 3
    if close(prediction, measured, rel=0.005):
        return report(True, f"{measured:,}: each new layer adds {per_layer:,}, while the embedding table, the final "
                      "norm and lm_head are there once, however deep the stack.", "")
    hint = two_step("nb01.six_layers", "Not twice the 3-layer count: which parts of the model are there once, "
                    "whatever the number of layers?", f"The 3-layer model's {three:,} parameters, plus 3 x one "
                    "decoder layer's (count one with num_params(model.model.layers[0])).")
    return report(False, "", hint)
