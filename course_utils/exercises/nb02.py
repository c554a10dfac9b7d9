"""Checkers for notebook 02, parameters and memory. The answers are computed from the configs."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.exercises import close, not_a_number, report
from course_utils.lora import lora_params
from course_utils.memory import weight_bytes
from course_utils.params import param_breakdown


def check_layer_params(answer: int) -> bool:
    """Parameters in one decoder layer of Llama 3.2 3B (attention, MLP and its two norms)."""
    c = load_config("llama-3.2-3b")
    n = param_breakdown(c).layer
    if not_a_number(answer):
        return False
    return report(close(answer, n), f"One 3B layer holds {n:,} parameters.",
                  "Attention: d x (heads x head_dim) for q and o, d x (kv_heads x head_dim) for k and v; "
                  "MLP: 3 x d x f; plus two norms of d each. Llama 3.2 3B sets head_dim explicitly in its config.")


def check_nf4_gb(answer: float) -> bool:
    """Llama 3.2 3B's weights in NF4 with double quantization, in GB (1e9 bytes), within 1%."""
    gb = weight_bytes(load_config("llama-3.2-3b"), "nf4", double_quant=True) / 1e9
    if not_a_number(answer):
        return False
    return report(close(answer, gb, rel=0.01), f"About {gb:.2f} GB: the Linears at ~4.127 bits per weight, "
                  "the tied embedding table and the norms at 2 bytes.",
                  "Only the Linears inside the decoder layers are quantized (4 + 8/64 + 32/(64*256) bits each); "
                  "the embedding table (tied to lm_head in the 3B: count it once) and the norms stay 16-bit.")


def check_lora_params(answer: int) -> bool:
    """Trainable parameters of LoRA with r = 8 on q_proj and v_proj of Llama 3.1 70B."""
    n = lora_params(load_config("llama-3.1-70b"), 8, ["q_proj", "v_proj"])
    if not_a_number(answer):
        return False
    return report(close(answer, n), f"{n:,} trainable parameters, against 70 billion frozen ones.",
                  "Each target gets A (r x in) and B (out x r): r x (in + out) per target per layer. "
                  "k/v are narrower than q in the 70B (8 KV heads).")
