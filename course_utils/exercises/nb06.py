"""Checkers for notebook 06, training a QLoRA adapter. The answers are computed, never stored."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.exercises import close, describe, not_a_number, not_names, report

# The parameter kinds a student sorts into "trains" / "frozen" in the exercise on requires_grad.
PARAMETER_KINDS = ("embed_tokens", "q_proj.base_layer", "q_proj.lora_A", "q_proj.lora_B", "gate_proj",
                   "input_layernorm", "lm_head")


def _trains(kind: str) -> bool:
    """After get_peft_model with the course's LoRA targets: only the adapter matrices require grad."""
    from course_utils.lora import COURSE_TARGETS
    return kind.split(".")[0] in COURSE_TARGETS and kind.endswith(("lora_A", "lora_B"))


def check_trainable(answer) -> bool:
    """Which of PARAMETER_KINDS require grad after `get_peft_model` (LoRA on q,k,v,o)? A set of names."""
    expected = {kind for kind in PARAMETER_KINDS if _trains(kind)}
    if not_names(answer, "names from PARAMETER_KINDS"):
        return False
    got = set(answer or ())
    unknown = got - set(PARAMETER_KINDS)
    if unknown:
        return report(False, "", f"Pick names from PARAMETER_KINDS; {sorted(unknown)} is not one of them.")
    return report(got == expected,
                  "Only the adapter's A and B matrices train; the base, 4-bit or not, stays frozen.",
                  "Look at `[n for n, p in model.named_parameters() if p.requires_grad]`: which kinds appear?")


def reference_labels(prompt_ids: list[int], answer_ids: list[int], eos_id: int, ignore: int = -100) -> list[int]:
    """The labels of prompt + answer + EOS with the loss on the answer and EOS only (as course_utils.data does)."""
    return [ignore] * len(prompt_ids) + list(answer_ids) + [eos_id]


def check_label_mask(fn) -> bool:
    """`fn(prompt_ids, answer_ids, eos_id)` must return the labels: -100 on the prompt, the answer's ids, then EOS."""
    if not callable(fn):
        got = "" if fn is None else f" (you passed {describe(fn)})"
        return report(False, "", "Write a function my_labels(prompt_ids, answer_ids, eos_id) and pass the function "
                      f"itself (no parentheses) to the checker{got}.")
    cases = [([1, 10, 11, 12], [20, 21], 2), ([1, 5], [7, 8, 9, 6], 2), ([1], [3], 0)]
    for prompt, answer, eos in cases:
        try:
            result = fn(list(prompt), list(answer), eos)
        except Exception as err:  # a student's function may raise anything
            return report(False, "", f"Your function raised {type(err).__name__}: {err}")
        result = result.tolist() if hasattr(result, "tolist") else result
        if not isinstance(result, (list, tuple)):
            return report(False, "", f"Your function should return a list of label ids, not {describe(result)}.")
        got = list(result)
        expected = reference_labels(prompt, answer, eos)
        if got != expected:
            hint = ("The labels must be as long as prompt + answer + EOS." if len(got) != len(expected) else
                    f"For prompt {prompt} and answer {answer} the labels should mask the prompt with -100, "
                    "keep the answer's ids, and end with EOS (so the model learns to stop).")
            return report(False, "", hint)
    return report(True, "The model is graded on the answer and on stopping, never on the prompt it was given.", "")


def check_effective_batch(answer, preset: str = "t4") -> bool:
    """How many examples does one optimizer step of the T4 preset see?"""
    from course_utils.training import PRESETS
    p = PRESETS[preset]
    n = p.effective_batch
    if not_a_number(answer):
        return False
    return report(close(answer, n), f"{p.batch_size} per forward pass x {p.grad_accum} accumulated = {n} per step.",
                  "Multiply the micro-batch size by the number of gradient accumulation steps.")


def check_lora_params_8b(answer, r: int = 32) -> bool:
    """Trainable parameters of LoRA r=32 on q,k,v,o of Llama 3.1 8B, by the formula r x (in + out) per module."""
    from course_utils.lora import linear_shape, lora_params
    c = load_config("llama-3.1-8b")
    if not_a_number(answer):
        return False
    n = lora_params(c, r, ("q_proj", "k_proj", "v_proj", "o_proj"))
    (d, q), (_, kv) = linear_shape(c, "q_proj"), linear_shape(c, "k_proj")
    return report(close(answer, n),
                  f"{c.num_hidden_layers} layers x r x [({d}+{q}) for q and o + ({d}+{kv}) for k and v] = {n:,}.",
                  f"Per module A is r x in and B is out x r; q and o are {d} -> {q}, k and v are {d} -> {kv} (GQA).")
