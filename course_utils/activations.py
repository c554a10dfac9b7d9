"""The activation model: the bytes a training step keeps for the backward pass, by part.

`activation_bytes` follows the tensors autograd saves in a Llama decoder layer (held to what autograd really
saves in tests/test_memory.py and tests/test_saved_tensors.py); `autocast_copy_bytes` counts the 16-bit copies of
float32 weights that autocast makes and the backward pass keeps. `memory.training_memory` adds them to the
weights, gradients and optimizer states; notebook 02 writes the per-layer sum out term by term.
"""

from __future__ import annotations

from transformers import LlamaConfig

from course_utils.lora import lora_shapes, target_kinds
from course_utils.params import LINEAR_KINDS, head_dim, linear_shapes

# The ways of training that the estimates know: full fine-tuning in fp32 or in mixed precision, LoRA on a 16-bit
# frozen base, QLoRA on an NF4 frozen base.
METHODS = ("full", "full-mixed", "lora", "qlora")


def activation_bytes(config: LlamaConfig, batch_size: int, seq_len: int, method: str = "lora",
                     targets=("q_proj", "v_proj"), rank: int = 8, gradient_checkpointing: bool = False,
                     compute_bytes: int = 2, adapter_bytes: int = 4, prepared: bool = False,
                     lora_dropout: float = 0.0) -> dict[str, int]:
    """Activation memory of one training step, by part, from the tensors autograd keeps for the backward pass.

    Per token, with d = hidden, q = heads x head_dim, kv = KV heads x head_dim, f = MLP size, V = vocabulary,
    a = bytes of the compute dtype, in one decoder layer of a model computing in that dtype:
    - each RMSNorm keeps its input upcast to float32 and 1/rms (4d + 4); with a trainable scale also the
      normalized input (a d); its output (a d) is kept when a trainable Linear reads it;
    - attention (SDPA with a flash-style kernel) keeps q, k, v after RoPE, its output (a (2q + 2kv); o_proj
      reads that output in place) and a float32 log-sum-exp per head (4 heads);
    - the MLP keeps gate, SiLU(gate) and up (3 a f), and their product (a f) when down_proj is trainable;
    - a LoRA target whose adapter dtype differs from the compute dtype (or that has dropout) keeps its own copy
      of its input in the adapter dtype (adapter_bytes x in; else it shares the input above), and A's output
      (adapter_bytes x rank). LoRA dropout (`lora_dropout` > 0) adds its mask: 1 byte per input value on a GPU.
    With `prepared` (QLoRA after `prepare_model_for_kbit_training`, under autocast to the compute dtype) the
    embeddings, so the residual stream, are float32 and each 4-bit Linear returns its input's dtype: each RMSNorm
    keeps 4d + 4 (its scale is frozen), attention the same as above (SDPA runs under autocast), the MLP gate, up
    and SiLU(gate) in float32 (3 x 4f), every LoRA target autocast's copy of its input (a x in), A's output
    (a x rank) and the dropout mask; autocast's copies of weights are `autocast_copy_bytes`.
    With gradient checkpointing only each layer's input is kept (a d; 4d when prepared), and one layer is
    recomputed at a time. After the layers: the final norm, and the float32 log-softmax of the loss (4 V).
    While the backward pass starts, the logits (a V, held by the model's output) and one float32 gradient of
    them (4 V) are alive too; QLoRA also dequantizes one weight matrix at a time to the compute dtype.
    """
    if method not in METHODS:  # training_memory has already read it in any case
        raise ValueError(f"Unknown method {method!r}; choose one of {', '.join(METHODS)}.")
    if prepared and method != "qlora":
        raise ValueError("prepared=True describes QLoRA after prepare_model_for_kbit_training: use method='qlora'.")
    tokens = batch_size * seq_len
    d, f, V = config.hidden_size, config.intermediate_size, config.vocab_size
    e = head_dim(config)
    q, kv, h = config.num_attention_heads * e, config.num_key_value_heads * e, config.num_attention_heads
    a = compute_bytes
    full = method in ("full", "full-mixed")
    trained = set(LINEAR_KINDS) if full else set(target_kinds(targets))
    shapes = linear_shapes(config)
    mask = 1 if lora_dropout > 0 and not full else 0  # torch's native_dropout keeps a bool mask (CUDA)
    copies = not full and (adapter_bytes != a or mask > 0)  # PEFT casts each input; dropout makes a new one

    def norm(read_by: set[str]) -> int:
        reads = bool(trained & read_by) and not copies
        return 4 * d + 4 + (a * d if full else 0) + (a * d if reads else 0)

    if prepared:
        layer = 2 * (4 * d + 4) + a * (2 * q + 2 * kv) + 4 * h + 3 * 4 * f
        layer += sum((a + mask) * shapes[k][0] + a * rank for k in trained)
        checkpoint, rest = 4 * d, tokens * (4 * d + 4 + 4 * V) + seq_len * 2 * 4 * e  # cos/sin: float32, per position
    else:
        layer = norm({"q_proj", "k_proj", "v_proj"}) + norm({"gate_proj", "up_proj"})
        layer += a * (2 * q + 2 * kv) + 4 * h
        layer += 3 * a * f + (a * f if "down_proj" in trained and not copies else 0)
        if not full:
            layer += sum((adapter_bytes * shapes[k][0] + mask * shapes[k][0] if copies else 0) + adapter_bytes * rank
                         for k in trained)
        checkpoint, rest = a * d, tokens * (2 * a * e + norm(set()) + 4 * V)
    if gradient_checkpointing:
        out = {"layer inputs (checkpoints)": tokens * config.num_hidden_layers * checkpoint,
               "one recomputed layer": tokens * layer}
    else:
        out = {"decoder layers": tokens * config.num_hidden_layers * layer}
    out["rotary cos/sin, final norm, loss"] = rest
    out["logits and their gradient"] = tokens * (a + 4) * V
    if method == "qlora":
        out["one dequantized weight"] = a * max(i * o for i, o in shapes.values())
    return out


def autocast_copy_bytes(config: LlamaConfig, targets=("q_proj", "v_proj"), rank: int = 8,
                        gradient_checkpointing: bool = False, compute_bytes: int = 2) -> dict[str, int]:
    """The 16-bit copies of float32 weights that autocast makes for `F.linear` and the backward pass keeps (to send
    the gradient on to the layer's input), by part: lm_head, float32 once prepared (V x d x compute_bytes: 1.05 GB
    on the 8B), and the LoRA matrices, every layer's without checkpointing, the recomputed layer's with it.
    """
    per_layer = sum(r * c for r, c in lora_shapes(config, rank, targets)) // config.num_hidden_layers
    layers = 1 if gradient_checkpointing else config.num_hidden_layers
    return {"lm_head (16-bit copy)": compute_bytes * config.vocab_size * config.hidden_size,
            "LoRA matrices (16-bit copies)": compute_bytes * per_layer * layers}
