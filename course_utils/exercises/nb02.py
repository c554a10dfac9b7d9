"""Checkers for notebook 02, parameters and memory. The answers are computed from the configs."""

from __future__ import annotations

from course_utils.activations import activation_bytes
from course_utils.configs import load_config
from course_utils.exercises import close, describe, not_a_number, report, two_step
from course_utils.lora import lora_params
from course_utils.memory import COPIES_PART, training_memory, weight_bytes
from course_utils.params import ATTENTION, LINEAR_KINDS, MLP, param_breakdown


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
    ok = close(answer, n)
    return report(ok, f"{n:,} trainable parameters, against 70 billion frozen ones.", "" if ok else two_step(
        "nb02.lora_params", "Each target module gets two small matrices, A and B: what shapes must they have for "
        "B A to match the module's weight?", "A is r x in and B is out x r: r x (in + out) per target per layer. "
        "k/v are narrower than q in the 70B (8 KV heads)."))


# ---------------------------------------------------------------------------------------------------------------
# Exercise 4: which part gradient checkpointing shrinks (a concept, answered with a part's name)
# ---------------------------------------------------------------------------------------------------------------

PARTS = ("weights", "LoRA adapter", "gradients", "optimizer states", "activations", COPIES_PART)


def check_checkpointing_part(answer) -> bool:
    """The part of a training-memory estimate (a key of `TrainingMemory.parts()`) that checkpointing shrinks most."""
    names = ", ".join(repr(p) for p in PARTS)
    if answer is None:
        return report(False, "", f"Answer with one part's name, one of {names}. Think about what the forward pass "
                      "keeps for the backward pass, and what checkpointing keeps instead.")
    if not isinstance(answer, str):
        return report(False, "", f"Expected one part's name (a string), one of {names}; got {describe(answer)}.")
    given = {p.lower(): p for p in PARTS}.get(answer.strip().lower())
    if given is None:
        return report(False, "", f"{answer!r} is not a part of the estimate; pick one of {names}.")
    hints = {"weights": "Checkpointing changes no weight: the model holds the same tensors with it or without it.",
             "LoRA adapter": "The adapter has as many parameters with checkpointing as without.",
             "gradients": "There is one gradient per trainable weight either way; checkpointing trains the same "
                          "weights.",
             "optimizer states": "The optimizer stores the same moments per trainable weight either way.",
             COPIES_PART: "These shrink a little (one layer's adapter copies instead of every layer's), but the "
                          "lm_head copy stays; another part shrinks far more: turn the knob in the calculator."}
    return report(given == "activations", "Activations: instead of every tensor each decoder layer keeps for the "
                  "backward pass, only each layer's input is kept, and one layer at a time is recomputed.",
                  hints.get(given, ""))


# ---------------------------------------------------------------------------------------------------------------
# Exercise 5: choosing LoRA targets under a memory budget (answer a name of TARGET_SETS)
# ---------------------------------------------------------------------------------------------------------------

TARGET_SETS = {"qv": ("q_proj", "v_proj"), "attention": ATTENTION, "mlp": MLP, "all-linear": LINEAR_KINDS}
# The run of the exercise: QLoRA on Llama 3.1 8B with r = 64, 4 x 1,024 tokens, fp16, 8-bit paged AdamW, on a T4.
BUDGET_MODEL, BUDGET_GPU = "llama-3.1-8b", "T4"
BUDGET_RUN = dict(method="qlora", rank=64, batch_size=4, seq_len=1024, gradient_checkpointing=True,
                  optimizer="paged_adamw_8bit", compute_dtype="fp16")


def budget_estimates() -> dict:
    """`training_memory` of BUDGET_RUN for every target set of TARGET_SETS, by name."""
    config = load_config(BUDGET_MODEL)
    return {name: training_memory(config, targets=targets, **BUDGET_RUN) for name, targets in TARGET_SETS.items()}


def best_fitting_set() -> str:
    """The name of the target set that trains the most parameters and still fits BUDGET_GPU."""
    fitting = {n: e for n, e in budget_estimates().items() if e.fits(BUDGET_GPU)}
    return max(fitting, key=lambda n: fitting[n].trainable_params)


def check_targets_under_budget(answer) -> bool:
    """The target set (a name of TARGET_SETS) that trains the most parameters and still fits BUDGET_GPU."""
    names = ", ".join(repr(n) for n in TARGET_SETS)
    if answer is None:
        return report(False, "", f"Answer with one name of nb02.TARGET_SETS ({names}). Estimate each with "
                      "training_memory(config, targets=..., **nb02.BUDGET_RUN) and ask .fits('T4').")
    if not isinstance(answer, str):
        return report(False, "", f"Expected the name of a target set (a string), one of {names}; "
                      f"got {describe(answer)}.")
    given = answer.strip().lower()
    if given not in TARGET_SETS:
        return report(False, "", f"{answer!r} is not a name of nb02.TARGET_SETS; pick one of {names}.")
    estimates, best = budget_estimates(), best_fitting_set()
    if not estimates[given].fits(BUDGET_GPU):
        hint = f"That set does not fit the {BUDGET_GPU}: its estimate's .fits('{BUDGET_GPU}') is False."
    else:
        hint = "That set fits, but another set that fits trains more parameters: compare .trainable_params."
    return report(given == best, f"{best!r}: {estimates[best].trainable_params:,} trainable parameters in "
                  f"{estimates[best].total / 1e9:.1f} GB; the next bigger set does not fit.", hint)


# ---------------------------------------------------------------------------------------------------------------
# Exercise 6: the bytes gradient checkpointing keeps
# ---------------------------------------------------------------------------------------------------------------

def checkpoint_bytes() -> int:
    """Bytes of the checkpoints (each layer's input) of Llama 3.1 70B, batch 2 x 2,048 tokens, bf16."""
    parts = activation_bytes(load_config("llama-3.1-70b"), 2, 2048, "qlora", gradient_checkpointing=True)
    return parts["layer inputs (checkpoints)"]


def check_checkpoint_bytes(answer) -> bool:
    """The bytes of the checkpoints of Llama 3.1 70B for a batch of 2 x 2,048 tokens in bf16."""
    n = checkpoint_bytes()
    if not_a_number(answer):
        return False
    return report(close(answer, n), f"{n:,} bytes ({n / 1e9:.1f} GB): one hidden-size vector per token per layer.",
                  "A checkpoint is one layer's input: a hidden-size vector per token, 2 bytes per value in bf16. "
                  "Count every token of the batch, in every decoder layer of the 70B.")
