"""Checkers for notebook 02, parameters and memory. The answers are computed from the configs."""

from __future__ import annotations

from course_utils.activations import activation_bytes
from course_utils.configs import load_config
from course_utils.exercises import (as_numbers, close, describe, not_a_number, not_numbers, report, two_step,
                                    unready)
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
    """Exercise 6 (Going deeper): Llama 3.2 3B's weights in NF4 with double quantization, in GB, within 1%."""
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
# Exercise 3: which part gradient checkpointing shrinks (a concept, answered with a part's name)
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
# Exercise 4: choosing LoRA targets under a memory budget (answer a name of TARGET_SETS)
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
# Exercise 7 (Going deeper): the bytes gradient checkpointing keeps
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


# ---------------------------------------------------------------------------------------------------------------
# Exercise 5, predict then run: the numbers AdamW keeps after one step, full fine-tuning against LoRA
# ---------------------------------------------------------------------------------------------------------------

def adamw_numbers(optimizer) -> int:
    """The numbers an optimizer keeps in its state: for AdamW, its two running averages (`exp_avg`, `exp_avg_sq`)
    of every weight it has updated. The step counters are left out: one per weight tensor, not per weight."""
    return sum(value.numel() for state in optimizer.state.values() for name, value in state.items()
               if name != "step" and hasattr(value, "numel"))


def check_adamw_state(prediction, measured=None) -> bool:
    """Exercise 5, predict then run: `prediction` is (full, lora), the numbers in AdamW's state after one step of
    full fine-tuning and one of LoRA (r = 8 on q_proj and v_proj) on the course's small model; `measured` is what
    the cell counted in `optimizer.state` (adamw_numbers) after those two steps."""
    measured = as_numbers(measured, whole=True) if measured is not None else None
    if unready(prediction, measured is not None and len(measured) == 2, "Run the cell: it takes the two AdamW "
               "steps and passes what it counted here.", ", as (full, lora), and run the cell again: the checker "
               "compares it with what the two steps left in optimizer.state."):
        return False
    if not_numbers(prediction, whole=True):
        return False
    given = as_numbers(prediction, whole=True)
    if len(given) != 2:
        return report(False, "", f"Expected two whole numbers, (full, lora); got {len(given)}.")
    (full, lora), (guess_full, guess_lora) = measured, given
    right = [close(guess, real, rel=0.005) for guess, real in zip(given, measured)]
    if all(right):
        return report(True, f"{full:,} for full fine-tuning, {lora:,} for LoRA, {full / lora:,.0f} times fewer: "
                      "AdamW keeps two running averages for each weight it updates, and nothing for a frozen one.", "")
    if close(guess_lora, full, rel=0.005):
        hint = ("Your LoRA count is the full one. The frozen weights get no gradient and the optimizer is never "
                "given them: which weights does AdamW update in the LoRA step?")
    elif close(2 * guess_full, full, rel=0.005) or close(2 * guess_lora, lora, rel=0.005):
        hint = "One number per trained weight is not all: how many running averages does Adam keep for each?"
    else:
        which = "The full count is" if right[1] else "The LoRA count is" if right[0] else "Both counts are"
        hint = f"{which} off. " + two_step(
            "nb02.adamw_state", "Which weights does each step update, and how many numbers does AdamW keep for "
            "each of them (section 4 lists what training adds)?", "2 x the trainable parameters: every weight of "
            "the model for full fine-tuning (the tied embedding table once), and r x (in + out) per target per "
            "layer for LoRA, with the course model's own head_dim.")
    return report(False, "", hint)
