"""Checkers for notebook 04, LoRA with PEFT on Llama. The answers come from the configs (closed form)."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.exercises import (choice, close, describe, not_a_number, not_names, plain, report,
                                    two_step, unready)
from course_utils.lora import lora_params
from course_utils.params import LINEAR_KINDS, MLP


def check_70b_all_linear(answer: int) -> bool:
    """Trainable parameters of LoRA with r = 16 and target_modules="all-linear" on Llama 3.1 70B."""
    n = lora_params(load_config("llama-3.1-70b"), 16, "all-linear")
    if not_a_number(answer):
        return False
    ok = close(answer, n)
    return report(ok, f"{n:,} trainable parameters: all seven projections in each of the 80 layers.",
                  "" if ok else two_step("nb04.70b_all_linear", "Let PEFT count, as section 3 did for the 8B: the "
                                         "70B on the meta device costs no memory.",
                                         "get_peft_model(..., low_cpu_mem_usage=True) on the 70B built on the meta "
                                         "device, or add up r * (in + out) over the seven Linear layers and multiply "
                                         "by the number of layers."))


def check_mlp_targets(answer) -> bool:
    """A `target_modules` list that puts LoRA on every Linear of the MLP and on nothing else."""
    if isinstance(answer, str) or answer is None:
        return report(False, "", "Give a list of module names, like [\"q_proj\", \"v_proj\"] (that one is attention).")
    if not_names(answer, "module names"):
        return False
    names = set(answer)
    unknown = names - set(LINEAR_KINDS)
    hint = (f"{', '.join(sorted(unknown))} is not a Linear layer of Llama: the names are {', '.join(LINEAR_KINDS)}."
            if unknown else "The MLP of a decoder layer has three Linear layers; look at model.model.layers[0].mlp.")
    return report(names == set(MLP), "gate_proj, up_proj and down_proj: the whole MLP.", hint)


def check_adapter_megabytes(answer: float) -> bool:
    """Size in MB (10^6 bytes) of the 8B's adapter with r = 64 on q_proj and v_proj, stored in fp32."""
    n = lora_params(load_config("llama-3.1-8b"), 64, ["q_proj", "v_proj"])
    mb = n * 4 / 1e6
    if not_a_number(answer):
        return False
    return report(close(answer, mb, rel=0.01), f"{n:,} parameters x 4 bytes = {mb:,.1f} MB.",
                  "Count the trainable parameters first, then 4 bytes each (fp32), divided by 1e6.")


# ----------------------------------------------------------------------------------------------------------
# Exercises 4, 6 and 8: what "all-linear" picks, how to get a plain model back, why the adapter is fp32
# ----------------------------------------------------------------------------------------------------------

# Exercise 8 (Going deeper), multiple choice: the options as the notebook prints them (nb04.FP32_ADAPTER).
FP32_ADAPTER = {
    "a": "Many small steps add up in A and B, and bf16 rounds away a step under 1/256 of a value.",
    "b": "fp32 matrix products are faster than bf16 ones on a GPU, and the adapter runs at every step.",
    "c": "The frozen base is stored in fp32 as well, and W x + B A x needs one dtype for both parts.",
    "d": "safetensors, the format the adapter is saved in, holds fp32 tensors only, and no bf16 ones.",
}
_FP32_ADAPTER_RIGHT = "a"



def check_all_linear_names(answer) -> bool:
    """The module kinds that target_modules="all-linear" adapts in a Llama: a list or set of names. Full module
    names ("model.layers.0.self_attn.q_proj", as in PEFT's `targeted_module_names`) count by their last part."""
    if isinstance(answer, str):
        return report(False, "", "Give a list or set of module names, like [\"q_proj\", \"v_proj\"], not one string.")
    if not_names(answer, "module names"):
        return False
    if answer is None or not answer:
        return report(False, "", "Look at section 1's table, or at which Linear layers PEFT wrapped in section 7.")
    names = {name.split(".")[-1] for name in answer}
    unknown = names - set(LINEAR_KINDS) - {"lm_head"}
    if unknown:
        hint = f"{', '.join(sorted(unknown))} is not a Linear layer of Llama; every decoder layer has seven."
    elif "lm_head" in names:
        hint = "One of these is the output layer over the whole vocabulary: does \"all-linear\" take it?"
    else:
        hint = f"Only {len(names)} of the kinds: \"all-linear\" takes every Linear inside the decoder layers."
    return report(names == set(LINEAR_KINDS), f"{', '.join(LINEAR_KINDS)}: the seven projections of every decoder "
                  "layer; lm_head, the output layer, is left out.", hint)


def check_fp32_adapter(answer: str) -> bool:
    """Why does PEFT keep the adapter in fp32 when the base computes in bf16? One letter of FP32_ADAPTER."""
    hints = {"b": "On GPUs with bf16, bf16 products are the fast ones; section 6 added 0.001 to 1.0 in both "
                  "dtypes: what happened?",
             "c": "Here the base is bf16 (section 6 built one), and PEFT casts the input to the adapter's dtype "
                  "where they differ: what is left as a reason?",
             "d": "safetensors stores bf16 fine (Hugging Face ships bf16 models that way); think about what "
                  "training does to A and B, step after step."}
    return choice(answer, FP32_ADAPTER, _FP32_ADAPTER_RIGHT,
                   "A 1e-3 step on a value near 1 vanishes in bf16 and counts in fp32, and the adapter is small "
                   "enough that fp32 costs little; get_peft_model casts bf16 and fp16 adapters to fp32 (its "
                   "autocast_adapter_dtype=True).", hints)


# Exercise 6: PEFT's methods that a student may name, and what each one leaves behind.
_NOT_PLAIN = {
    "unload": "unload() removes the LoRA layers without folding them in: the plain model computes what the "
              "base did, not what the adapted model did.",
    "disable_adapter": "disable_adapter() switches the adapters off inside a with block; the LoRA layers stay.",
    "merge_adapter": "merge_adapter() folds B A into the weights but keeps the LoRA layers around them.",
    "merge": "merge() folds B A into one layer's weight and keeps the LoRA layer around it.",
    "get_base_model": "get_base_model() returns the model inside the PEFT wrapper, LoRA layers and all.",
    "delete_adapter": "delete_adapter() throws the adapter away: what is left computes what the base did.",
}


def check_plain_model(answer) -> bool:
    """Which PEFT method turns the adapted model into a plain LlamaForCausalLM that computes what the adapted
    model computed, with no LoRA layer left? Its name ("merge_and_unload"), or the method itself."""
    if callable(answer) and hasattr(answer, "__name__"):
        answer = answer.__name__
    if answer is None:
        return report(False, "", "Name a method of the PEFT model; section 7 ends with it.")
    if not isinstance(answer, str):
        return report(False, "", f"Expected the method's name as a string, got {describe(answer)}.")
    name = answer.strip().removesuffix("()").split(".")[-1]
    if name == "merge_and_unload":
        return report(True, "merge_and_unload() folds each (alpha / r) B A into its base weight and removes the "
                      "LoRA layers: a plain model for serving.", "")
    return report(False, "", _NOT_PLAIN.get(name, f"{answer!r} is not the PEFT method asked for: it must fold the "
                                                   "adapter in and remove the LoRA layers."))


# ----------------------------------------------------------------------------------------------------------
# Exercise 7, diagnose: a classmate's adapter that does not learn
# ----------------------------------------------------------------------------------------------------------

CLASSMATE_SETTINGS = {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "lora_dropout": 1.0}
BLAME = {"a": "r", "b": "lora_alpha", "c": "target_modules", "d": "lora_dropout"}


def classmate_config():
    """The classmate's LoraConfig: one setting of CLASSMATE_SETTINGS keeps the adapter from learning anything."""
    from peft import LoraConfig
    return LoraConfig(task_type="CAUSAL_LM", **CLASSMATE_SETTINGS)


def check_classmate_bug(answer) -> bool:
    """Which setting of the classmate's config is to blame: a letter of BLAME, or the setting's name."""
    hints = {"a": "r = 8 is a usual rank; a smaller rank learns less, not nothing. Look for a setting that turns "
                  "the adapter's contribution to zero during training.",
             "b": "alpha = 16 with r = 8 is the usual scale of 2 (section 2); alpha = 0 would be the culprit.",
             "c": "q_proj and v_proj are in every Llama layer (section 1); print their_model.targeted_module_names "
                  "to see both wrapped."}
    return choice(answer, BLAME, "d", "lora_dropout = 1.0 zeroes every input of the adapters in training, so "
                  "B A x is 0 and no gradient reaches A or B: the loss never moves. 0.1 was meant.", hints,
                  blank="Answer with a letter of nb04.BLAME or a setting's name. What does each setting do to "
                        "B A x during training?", names=True)


# ----------------------------------------------------------------------------------------------------------
# Exercise 5: predict, then run: a misspelt name in target_modules
# ----------------------------------------------------------------------------------------------------------

MISSPELT = {
    "a": "It stops with an error that names 'v_prj', before it adapts any layer.",
    "b": "It adapts q_proj in every layer and says nothing at all about 'v_prj'.",
    "c": "It warns that 'v_prj' matched nothing, then adapts q_proj in every layer.",
    "d": "It reads 'v_prj' as v_proj, so q_proj and v_proj both get an adapter.",
}


def what_peft_did(outcome: dict) -> str | None:
    """Which of MISSPELT a run of get_peft_model with target_modules=["q_proj", "v_prj"] shows. `outcome` is what
    the notebook's cell measured: {"error": the error as text or None, "adapted": PEFT's targeted_module_names,
    "warnings": the text of every warning raised}. None when no option says what happened."""
    if outcome.get("error"):
        return "a"
    kinds = {name.split(".")[-1] for name in outcome.get("adapted", [])}
    if "v_proj" in kinds:
        return "d"
    if kinds == {"q_proj"}:
        return "c" if any("v_prj" in str(w) for w in outcome.get("warnings", [])) else "b"
    return None


def check_misspelt_target(prediction, outcome: dict | None = None) -> bool:
    """Exercise 5: the student's prediction (a letter of MISSPELT) against what the run measured."""
    ran = isinstance(outcome, dict) and {"error", "adapted", "warnings"} <= outcome.keys()
    if unready(prediction, ran, "Run the cell that calls get_peft_model with the misspelt name; it passes its "
               "outcome (a dict with error, adapted and warnings) here.", f" ({', '.join(MISSPELT)}) in the cell "
               "above and run both cells again: the checker compares it with what the run measured."):
        return False
    happened = what_peft_did(outcome)
    if happened is None:
        return report(False, "", "Your run did something none of the options say (no error, and q_proj is not "
                      "what was adapted): print outcome to see what it measured.")
    why = ("PEFT matches each name of target_modules against the end of every module's name, and raises only "
           "when no name matches anything.")
    praise = {"a": f"{why} Here nothing matched, so it raised.",
              "b": f"{why} q_proj matched, so the adapter trains on half the layers you meant, without a word: "
                   "print targeted_module_names after get_peft_model.",
              "c": f"{why} This PEFT also warned about the name that matched nothing: read the warnings.",
              "d": "PEFT matched a name you did not write: print targeted_module_names to see which."}[happened]
    wrong = isinstance(prediction, str) and plain(prediction) in MISSPELT and plain(prediction) != happened
    hint = "" if not wrong else two_step(
        "nb04.misspelt", f"The run says ({happened}): {MISSPELT[happened]} Why? Think of how PEFT decides that a "
        "module is a target, and of when it has a reason to complain.", why)
    return choice(prediction, MISSPELT, happened, praise, {letter: hint for letter in MISSPELT})
