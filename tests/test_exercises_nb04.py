"""Notebook 04's new exercise checkers: the right answer passes, wrong answers and answers of the wrong type get a
one-line "❌" sentence (never a traceback), the blank gets the hint, and no hint gives the answer away. The right
answers come from PEFT itself on meta-device models, not from the checkers."""

from __future__ import annotations

import torch
from peft import LoraConfig, get_peft_model

from course_utils.architecture import empty_model
from course_utils.configs import load_config
from course_utils.exercises import nb04
from tests.test_exercises import ODD, assert_right, assert_wrong_words, verdict


def peft_on_meta(name, **settings):
    config = LoraConfig(r=4, lora_alpha=8, **settings)
    return get_peft_model(empty_model(load_config(name)), config, low_cpu_mem_usage=True)


def test_all_linear_names_are_what_peft_targets(capsys):
    model = peft_on_meta("llama-3.1-8b", target_modules="all-linear")
    full_names = model.targeted_module_names
    kinds = {name.split(".")[-1] for name in full_names}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert len(full_names) == 7 * 32 and not any("lm_head" in n for n in full_names)
    assert_right(capsys, nb04.check_all_linear_names, sorted(kinds))
    assert_right(capsys, nb04.check_all_linear_names, kinds)
    assert_right(capsys, nb04.check_all_linear_names, full_names)  # PEFT's own list counts by last part
    out = assert_wrong_words(capsys, nb04.check_all_linear_names, sorted(kinds | {"lm_head"}))
    assert "output layer" in out
    out = assert_wrong_words(capsys, nb04.check_all_linear_names, ["q_proj", "k_proj", "v_proj", "o_proj"])
    assert "Only 4" in out and "gate_proj" not in out
    out = assert_wrong_words(capsys, nb04.check_all_linear_names, sorted(kinds - {"k_proj"}) + ["mlp"])
    assert "mlp is not a Linear layer" in out
    assert "section 1" in verdict(capsys, nb04.check_all_linear_names, None)[1]
    assert "not one string" in verdict(capsys, nb04.check_all_linear_names, "all-linear")[1]
    for odd in ODD:
        assert_wrong_words(capsys, nb04.check_all_linear_names, odd, "gate_proj")


def test_fp32_adapter_on_a_bf16_base(capsys):
    # what the right option says, measured: PEFT casts the adapter of a bf16 base to fp32,
    # and a 1e-3 step on 1.0 vanishes in bf16
    model = empty_model(load_config("course-llama")).to(torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"]), low_cpu_mem_usage=True)
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.base_layer.weight.dtype == torch.bfloat16 and layer.lora_A["default"].weight.dtype == torch.float32
    one = torch.tensor(1.0, dtype=torch.bfloat16)
    assert one + torch.tensor(1e-3, dtype=torch.bfloat16) == one
    assert torch.tensor(1.0) + 1e-3 != torch.tensor(1.0)
    assert "1/256" in nb04.FP32_ADAPTER["a"]
    assert_right(capsys, nb04.check_fp32_adapter, "a")
    assert_right(capsys, nb04.check_fp32_adapter, "(A)")
    for wrong in ("b", "c", "d"):
        out = assert_wrong_words(capsys, nb04.check_fp32_adapter, wrong, "(a)")
        assert len(out) > 40
    assert "Answer with one letter" in verdict(capsys, nb04.check_fp32_adapter, None)[1]
    assert "got 'z' (str)" in verdict(capsys, nb04.check_fp32_adapter, "z")[1]
    for odd in ODD:
        assert_wrong_words(capsys, nb04.check_fp32_adapter, odd, "(a)")


def test_plain_model_is_merge_and_unload(capsys):
    model = peft_on_meta("course-llama", target_modules=["q_proj"])
    plain = model.merge_and_unload()
    assert type(plain).__name__ == "LlamaForCausalLM" and not any(hasattr(m, "lora_A") for m in plain.modules())
    model = peft_on_meta("course-llama", target_modules=["q_proj"])
    for right in ("merge_and_unload", "merge_and_unload()", "peft_model.merge_and_unload()",
                  model.merge_and_unload):
        assert_right(capsys, nb04.check_plain_model, right)
    for wrong, words in [("unload", "without folding"), ("disable_adapter", "switches the adapters off"),
                         ("get_base_model", "LoRA layers and all"), ("merge_adapter", "keeps the LoRA layers"),
                         ("save_pretrained", "is not the PEFT method")]:
        out = assert_wrong_words(capsys, nb04.check_plain_model, wrong, "merge_and_unload")
        assert words in out, out
    assert "section 7" in verdict(capsys, nb04.check_plain_model, None)[1]
    for odd in ODD:
        out = assert_wrong_words(capsys, nb04.check_plain_model, odd, "merge_and_unload")
        assert "Expected the method's name as a string" in out or "is not the PEFT method" in out


def test_the_classmates_adapter_learns_nothing_and_dropout_is_to_blame(capsys):
    """Exercise 7, diagnose: with lora_dropout = 1.0 no step changes the loss; with 0.1 the same run learns."""
    import copy

    from peft import get_peft_model

    from course_utils.architecture import random_model

    base = random_model(load_config("course-llama"))
    ids = torch.randint(3, 100, (1, 12), generator=torch.Generator().manual_seed(0))

    def losses(config):
        model = get_peft_model(copy.deepcopy(base), config)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-3)
        model.train()
        out = []
        for _ in range(5):
            loss = model(input_ids=ids, labels=ids).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            out.append(loss.item())
        return out

    theirs = losses(nb04.classmate_config())
    assert max(theirs) - min(theirs) < 1e-6, theirs
    fixed = nb04.classmate_config()
    fixed.lora_dropout = 0.1
    assert losses(fixed)[-1] < theirs[-1] - 0.01
    for right in ("d", "lora_dropout", " LoRA_Dropout "):
        assert_right(capsys, nb04.check_classmate_bug, right)
    for wrong in ("a", "b", "c", "r", "target_modules"):
        assert_wrong_words(capsys, nb04.check_classmate_bug, wrong, "lora_dropout", "(d)")


def misspelt_run(target_modules):
    """What the notebook's exercise 5 cell measures: get_peft_model on the 8B (meta device), its error, the modules
    it adapted and every warning raised."""
    import warnings

    outcome = {"error": None, "adapted": []}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            outcome["adapted"] = peft_on_meta("llama-3.1-8b", target_modules=target_modules).targeted_module_names
        except Exception as err:
            outcome["error"] = f"{type(err).__name__}: {err}"
    outcome["warnings"] = [str(w.message) for w in caught]
    return outcome


def test_the_misspelt_target_is_judged_against_what_the_run_measured(capsys):
    """Exercise 5, predict then run. PEFT 0.20.0 and 0.21.2 were both run on ["q_proj", "v_prj"]: q_proj in every
    layer, no error and no warning about v_prj, so (b). The right letter is the run's, never a fixed one."""
    outcome = misspelt_run(["q_proj", "v_prj"])
    assert outcome["error"] is None and len(outcome["adapted"]) == 32
    assert nb04.what_peft_did(outcome) == "b", outcome
    assert_right(capsys, lambda a: nb04.check_misspelt_target(a, outcome), "b")
    assert_right(capsys, lambda a: nb04.check_misspelt_target(a, outcome), "(B)")
    for wrong in ("a", "c", "d"):
        ok, out = verdict(capsys, lambda a: nb04.check_misspelt_target(a, outcome), wrong)
        assert ok is False and "The run says (b)" in out, out
    ok, out = verdict(capsys, lambda a: nb04.check_misspelt_target(a, outcome), None)
    assert ok is False and "(b)" not in out and "MY_PREDICTION" in out, "a blank must not be told the answer"
    assert "Run the cell" in verdict(capsys, nb04.check_misspelt_target, "b")[1]
    assert "Run the cell" in verdict(capsys, lambda a: nb04.check_misspelt_target(a, {"error": None}), "b")[1]
    for odd in ODD:
        assert verdict(capsys, lambda a: nb04.check_misspelt_target(a, outcome), odd)[0] is False


def test_the_misspelt_hint_nudges_first_and_gives_the_reason_second(capsys):
    outcome = misspelt_run(["q_proj", "v_prj"])
    first = verdict(capsys, lambda a: nb04.check_misspelt_target(a, outcome), "a")[1]
    second = verdict(capsys, lambda a: nb04.check_misspelt_target(a, outcome), "c")[1]
    assert "raises only when no name matches" not in first and "Why?" in first, first
    assert "raises only when no name matches" in second and "a second hint" in second, second


def test_what_happened_reads_each_outcome_and_the_checker_follows_it(capsys):
    """Each option, from a real run where PEFT can give it (an error when no name matches, v_proj adapted when it
    is spelt right) or from the outcome another PEFT could give (a warning about v_prj)."""
    nothing = misspelt_run(["q_prj", "v_prj"])
    assert nothing["error"] and nb04.what_peft_did(nothing) == "a"
    both = misspelt_run(["q_proj", "v_proj"])
    assert nb04.what_peft_did(both) == "d"
    q_only = [f"model.layers.{i}.self_attn.q_proj" for i in range(32)]
    warned = {"error": None, "adapted": q_only, "warnings": ["target module 'v_prj' matched nothing"]}
    silent = {"error": None, "adapted": q_only, "warnings": ["`is_gradient_checkpointing` is deprecated"]}
    assert nb04.what_peft_did(warned) == "c" and nb04.what_peft_did(silent) == "b"
    assert nb04.what_peft_did({"error": None, "adapted": [], "warnings": []}) is None
    for outcome, right in ((nothing, "a"), (both, "d"), (warned, "c")):
        assert_right(capsys, lambda a: nb04.check_misspelt_target(a, outcome), right)
        ok, out = verdict(capsys, lambda a: nb04.check_misspelt_target(a, outcome), "b")
        assert ok is False and f"The run says ({right})" in out, out
    ok, out = verdict(capsys, lambda a: nb04.check_misspelt_target(a, {"error": None, "adapted": [],
                                                                         "warnings": []}), "b")
    assert ok is False and "none of the options" in out, out


def test_the_misspelt_options_are_of_comparable_length():
    lengths = {letter: len(text) for letter, text in nb04.MISSPELT.items()}
    assert lengths["b"] < max(lengths.values()) and max(lengths.values()) <= 1.25 * min(lengths.values()), lengths
