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
