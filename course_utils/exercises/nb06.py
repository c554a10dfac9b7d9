"""Checkers for notebook 06, training a QLoRA adapter. The answers are computed (or, for the multiple-choice
one, the statement the notebook measures), never printed."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.exercises import as_number, choice, close, describe, not_a_number, not_names, report, two_step

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
    ok = close(answer, n)
    return report(ok, f"{c.num_hidden_layers} layers x r x [({d}+{q}) for q and o + ({d}+{kv}) for k and v] = {n:,}.",
                  "" if ok else two_step("nb06.lora_params_8b", "Count one layer's four adapters first: are k and v "
                                         "the same size as q and o in the 8B?", f"Per module A is r x in and B is "
                                         f"out x r; q and o are {d} -> {q}, k and v are {d} -> {kv} (GQA)."))


# ----------------------------------------------------------------------------------------------------------
# Exercise 2 (predict, then run): which field does a fresh adapter learn last? (the notebook trains one of its own and measures)
# ----------------------------------------------------------------------------------------------------------

LEARNED = 0.9  # a field counts as learned once this share of the probe gets it right


def learned_at(curve: list[dict], field: str, threshold: float = LEARNED) -> float:
    """The steps done when `field` first reached `threshold`, in a curve of rows {"step": steps done,
    "field_accuracy": {field: share}} (infinity when it never did)."""
    for row in sorted(curve, key=lambda r: r["step"]):
        if row["field_accuracy"][field] >= threshold:
            return row["step"]
    return float("inf")


def check_learned_last(answer, curve: list[dict] | None = None) -> bool:
    """Your guess (one of data.FIELDS) against the curve the exercise's run measured."""
    from course_utils.data import FIELDS
    if answer is None:
        return report(False, "", "Set MY_GUESS to the field you expect the adapter to learn last, one of "
                      f"{', '.join(repr(f) for f in FIELDS)}, then run the cell.")
    if not isinstance(answer, str):
        return report(False, "", f"Expected one field name (a string) from data.FIELDS, got {describe(answer)}.")
    if answer.strip() not in FIELDS:
        return report(False, "", f"{answer!r} is not a field; pick one of {', '.join(repr(f) for f in FIELDS)}.")
    if not curve:
        return report(False, "", "Nothing is measured yet: set EXERCISE_STEPS (30, say) and run the cell to train.")
    when = {f: learned_at(curve, f) for f in FIELDS}
    last = max(when.values())
    if min(when.values()) == float("inf"):
        return report(False, "", f"No field reached {LEARNED:.0%} in this run: train for more steps (30, say).")
    ok = when[answer.strip()] == last
    reached = (f"never reached {LEARNED:.0%}" if last == float("inf") else
               f"reached {LEARNED:.0%} last, after {last} steps")
    return report(ok, f"{answer.strip()!r} {reached}.",
                  "Your guess was learned sooner than another field: which curve crosses the dotted line last?")


# ----------------------------------------------------------------------------------------------------------
# Exercise 7: what merging into a 4-bit base costs (multiple choice)
# ----------------------------------------------------------------------------------------------------------

MERGE_CHOICES = {
    "a": "Nothing: the merged model gives exactly the outputs of the base with its adapter.",
    "b": "Twice the memory: the 4-bit weights and the merged 16-bit weights are both kept.",
    "c": "The adapter's A and B are quantized to 4 bits and then kept beside the base.",
    "d": "Each merged weight is rounded to NF4 again, so part of the update is lost.",
}
_MERGE_TRUE = "d"  # section 11 of notebook 06 measures it: the logits change after merge_and_unload


def check_merge_4bit(answer) -> bool:
    """Which of MERGE_CHOICES says what `merge_and_unload` on a 4-bit base costs? One letter."""
    why = {"a": "Section 11 measured the logits after the merge: did they stay the same?",
           "c": "After merge_and_unload the model has no adapter left: where did B A go?",
           "b": "merge_and_unload returns one plain model, in the base's storage: what does that storage do "
                "to a weight that changed a little?"}
    return choice(answer, MERGE_CHOICES, _MERGE_TRUE,
                  "The merge dequantizes, adds the update and quantizes again: a second rounding to NF4. "
                  "Keep the adapter separate, or merge into the dequantized weights kept in 16 bits (section 11).", why,
                  blank="Answer with one letter of nb06.MERGE_CHOICES. Think about what PEFT must do to add a "
                        "16-bit update into a weight stored in 4 bits.")


# ----------------------------------------------------------------------------------------------------------
# Exercise 8: the bits of each part of a QLoRA run on a T4
# ----------------------------------------------------------------------------------------------------------

QLORA_PARTS = ("base Linear weights", "embeddings, norms, lm_head", "LoRA A and B", "gradients",
               "optimizer moments", "matmul compute")


def qlora_bits(preset: str = "t4") -> dict[str, int]:
    """Bits per number of each part of a QLoRA run with a preset, worked out from what the course sets up."""
    import math

    from course_utils.quantization import nf4_code_book
    from course_utils.training import PRESETS
    p = PRESETS[preset]
    adapter = 32  # PEFT keeps the adapter in fp32 on a 16-bit base (autocast_adapter_dtype=True)
    return {"base Linear weights": int(math.log2(len(nf4_code_book()))),  # an index into 16 NF4 levels
            "embeddings, norms, lm_head": 32,  # prepare_model_for_kbit_training casts them to fp32
            "LoRA A and B": adapter,
            "gradients": adapter,  # a gradient has its parameter's dtype
            "optimizer moments": 8 if "8bit" in p.optimizer else 32,
            "matmul compute": {"fp16": 16, "bf16": 16}.get(p.mixed_precision, 32)}


def check_precisions(answer, preset: str = "t4") -> bool:
    """A dict {part: bits} for every part in QLORA_PARTS: 4, 8, 16 or 32."""
    expected = qlora_bits(preset)
    if answer is None:
        return report(False, "", "Fill a dict {part: bits} with one of 4, 8, 16, 32 for each name in "
                      "nb06.QLORA_PARTS; the picture of section 5 and the preset of section 6 have the clues.")
    if not isinstance(answer, dict):
        return report(False, "", f"Expected a dict {{part: bits}} over QLORA_PARTS, got {describe(answer)}.")
    unknown = sorted(str(k) for k in set(answer) - set(QLORA_PARTS))
    missing = [k for k in QLORA_PARTS if k not in answer]
    if unknown or missing:
        what = f"unknown: {unknown}" if unknown else f"missing: {missing}"
        return report(False, "", f"Use exactly the names of QLORA_PARTS as keys ({what}).")
    bad = [k for k in QLORA_PARTS if as_number(answer[k], whole=True) not in (4, 8, 16, 32)]
    if bad:
        return report(False, "", f"Each value should be 4, 8, 16 or 32 (bits); look at {bad[0]!r}.")
    wrong = [k for k in QLORA_PARTS if as_number(answer[k], whole=True) != expected[k]]
    return report(not wrong, "4-bit storage, 16-bit arithmetic, and fp32 for everything that learns; "
                  "only the moments are squeezed to 8 bits.",
                  f"{len(wrong)} of {len(QLORA_PARTS)} are off, {wrong[0]!r} among them." if wrong else "")


# ----------------------------------------------------------------------------------------------------------
# Exercise 1 (diagnose): a classmate's collator hides the padding from the loss, and pad = EOS
# ----------------------------------------------------------------------------------------------------------

PAD_EOS_CHOICES = {
    "a": "it never learns the five fields: their collator hides the answer's tokens too",
    "b": "it writes the record, then goes on: no label ever showed it where to stop",
    "c": "its loss turns to NaN on step one: some rows end up with no label at all",
    "d": "it trains exactly like ours: padding never carries a label in either batch",
}


def eos_graded(labels, eos_id: int) -> int:
    """How many rows of a batch's labels (a 2-D tensor or a list of lists) grade the EOS token."""
    rows = labels.tolist() if hasattr(labels, "tolist") else labels
    return sum(eos_id in row for row in rows)


def check_pad_eos(answer, ours: int | None = None, theirs: int | None = None) -> bool:
    """The classmate's batch against ours: `ours` and `theirs` are the rows whose labels grade the EOS, counted by
    the exercise's cell (eos_graded). The right letter follows from them: none of theirs graded -> (b)."""
    if ours is None or theirs is None:
        return report(False, "", "Run the cell that builds both batches: it passes the two counts here.")
    right = "b" if theirs == 0 < ours else "d"
    why = {"b": "Their line sets every position whose id is the pad id to -100, and with pad = EOS that is the "
                "EOS too: the model is never graded on stopping, so it writes the record and keeps going. "
                "Mask by position (the padding added, not its id), as data.pad_batch does.",
           "d": "Here the pad id is not the EOS, so masking by id hides only the padding."}[right]
    return choice(answer, PAD_EOS_CHOICES, right, why, {
        letter: two_step("pad_eos", "Compare the two counts the cell printed: what do their labels never hold?",
                         "Their line masks by id, and the pad id is the EOS id: which label disappears, and "
                         "what does a model never graded on it never learn?")
        for letter in PAD_EOS_CHOICES if letter != right})
