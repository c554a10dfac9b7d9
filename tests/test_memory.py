"""weight_bytes and training_memory against the references: transformers' own footprint on the meta device,
real bitsandbytes loads (NF4, int8) on the CPU, PEFT's trainable count, and the bytes a real training step holds.

How the NF4 check measures: a random-weight Llama is saved to a temporary folder, loaded with
`BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)` on the CPU,
and every tensor it holds is counted: parameters (the packed 4-bit weights), buffers, and each quantized
weight's `quant_state` (absmax, NF4 code, offset, and the nested absmax and code of double quantization).
"""

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig

from course_utils.architecture import empty_model, random_model
from course_utils.configs import known_names, load_config
from course_utils.footprint import measure_training_step, model_bytes
from course_utils.lora import lora_params
from course_utils.memory import (COPIES_PART, GPUS, PRECISIONS, activation_bytes, optimizer_bytes, preset_memory,
                                 suggested_settings, training_memory, weight_breakdown, weight_bytes)
from course_utils.params import LINEAR_KINDS, count_params, linear_shapes
from course_utils.quantization import nf4_bits_per_param

# Odd sizes on purpose: weight counts that are not multiples of 64 or of 64 x 256 exercise the rounding up.
SMALL = dict(vocab_size=515, hidden_size=200, intermediate_size=300, num_hidden_layers=4, num_attention_heads=5,
             num_key_value_heads=1, max_position_embeddings=128, tie_word_embeddings=False)


def meta_footprint(config, dtype) -> int:
    """transformers' own count for a model loaded at `dtype`, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.get_memory_footprint()


@pytest.mark.parametrize("name", known_names())
@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_float_weights_equal_get_memory_footprint(name, precision, dtype):
    config = load_config(name)
    assert weight_bytes(config, precision) == meta_footprint(config, dtype)


def test_the_8b_in_bf16_is_what_the_meta_model_holds():
    config = load_config("llama-3.1-8b")
    assert weight_bytes(config, "bf16") == meta_footprint(config, torch.bfloat16) == 16_060_523_008


def save_random_llama(folder, config: dict):
    """A LlamaForCausalLM with seeded random bf16 weights, saved to `folder` for from_pretrained to quantize."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**config)).to(torch.bfloat16).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def saved_small_llama(tmp_path_factory):
    return save_random_llama(tmp_path_factory.mktemp("small-llama"), SMALL)


def load_quantized(folder, quantization_config, dtype=torch.bfloat16):
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=quantization_config, device_map="cpu",
                                                dtype=dtype)


@pytest.mark.parametrize("double_quant", [True, False])
def test_nf4_prediction_equals_a_real_bitsandbytes_load(saved_small_llama, double_quant):
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=double_quant,
                            bnb_4bit_compute_dtype=torch.bfloat16)
    model = load_quantized(saved_small_llama, qc)
    config = LlamaConfig(**SMALL)
    kinds = {type(m).__name__ for n, m in model.named_modules() if n.endswith(LINEAR_KINDS)}
    assert kinds == {"Linear4bit"} and type(model.lm_head).__name__ == "Linear", "only the decoder's Linears are 4-bit"
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    measured = model_bytes(model)
    assert weight_bytes(config, "nf4", double_quant=double_quant) == measured
    # get_memory_footprint() counts parameters and buffers only: the quantization constants are missing.
    parts = weight_breakdown(config, "nf4", double_quant=double_quant)
    constants = sum(v for k, v in parts.items() if "absmax" in k or "code" in k)
    assert model.get_memory_footprint() == measured - constants


def test_int8_prediction_equals_a_real_bitsandbytes_load(saved_small_llama):
    model = load_quantized(saved_small_llama, BitsAndBytesConfig(load_in_8bit=True), dtype=torch.float16)
    assert weight_bytes(LlamaConfig(**SMALL), "int8", unquantized="fp16") == model_bytes(model)


def test_model_bytes_counts_a_tied_table_once():
    config = load_config("course-llama")
    model = random_model(config)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model_bytes(model) == model.get_memory_footprint() == weight_bytes(config, "fp32")


def test_bits_per_weight_follow_the_qlora_paper():
    # QLoRA paper (Dettmers et al. 2023, section 3): 32/64 = 0.5 bits per weight for the absmax constants,
    # 8/64 + 32/(64*256) = 0.127 bits with double quantization.
    assert nf4_bits_per_param(double_quant=False) - 4 == pytest.approx(0.5)
    assert nf4_bits_per_param(double_quant=True) - 4 == pytest.approx(0.127, abs=5e-4)


def test_nf4_of_the_8b_sits_between_its_parts():
    config = load_config("llama-3.1-8b")
    nf4 = weight_bytes(config, "nf4")
    linears = config.num_hidden_layers * sum(i * o for i, o in linear_shapes(config).values())
    rest = count_params(config) - linears
    assert nf4 == pytest.approx(linears * nf4_bits_per_param(double_quant=True) / 8 + rest * 2, rel=1e-4)


def test_bad_input_says_what_to_do():
    config = load_config("course-llama")
    with pytest.raises(ValueError, match="fp32, fp16, bf16, int8, nf4"):
        weight_bytes(config, "fp8")
    with pytest.raises(ValueError, match="q_proj"):
        training_memory(config, "lora", targets=["query"])
    with pytest.raises(ValueError, match="batch_size"):
        training_memory(config, "lora", batch_size=0)
    with pytest.raises(ValueError, match="full, full-mixed, lora, qlora"):
        training_memory(config, "adapter")


@pytest.mark.parametrize("rank,targets", [(32, ["q_proj", "k_proj", "v_proj", "o_proj"]), (8, ["q_proj", "v_proj"]),
                                          (16, list(LINEAR_KINDS))])
def test_lora_params_equal_peft_on_the_meta_8b(rank, targets):
    config = load_config("llama-3.1-8b")
    model = get_peft_model(empty_model(config), LoraConfig(r=rank, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_params(config, rank, targets) == trainable
    if rank == 32 and len(targets) == 4:
        assert trainable == 27_262_976  # PEFT's print_trainable_parameters on the meta-device 8B


def test_8bit_adamw_states_equal_bitsandbytes():
    import bitsandbytes as bnb
    params = [torch.nn.Parameter(torch.randn(300, 200)), torch.nn.Parameter(torch.randn(64, 90)),
              torch.nn.Parameter(torch.randn(100))]
    opt = bnb.optim.AdamW8bit(params, lr=1e-3)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    states = {t.data_ptr(): t.numel() * t.element_size()
              for s in opt.state.values() for t in s.values() if isinstance(t, torch.Tensor)}
    assert optimizer_bytes([p.numel() for p in params], "adamw_8bit") == sum(states.values())


def build(config, dtype):
    """A random-weight model as from_pretrained leaves it at `dtype` (the rotary buffers stay float32)."""
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=dtype).train()


def tiny_batch(config, batch=2, seq=64):
    torch.manual_seed(1)
    return torch.randint(0, config.vocab_size, (batch, seq))


def check_step(model, config, estimate):
    opt_params = [p for p in model.parameters() if p.requires_grad]
    measured = measure_training_step(model, tiny_batch(config), torch.optim.AdamW(opt_params, lr=1e-4))
    assert measured["weights"] + measured["trainable weights"] == estimate.weights + estimate.adapter
    assert measured["trainable weights"] == estimate.adapter
    assert measured["gradients"] == estimate.gradients
    assert measured["optimizer states"] == estimate.optimizer
    saved = sum(v for k, v in estimate.activation_parts.items()
                if k not in ("logits and their gradient", "one dequantized weight"))
    # Within 10%: in the first layer, nothing before the first adapter needs a gradient, so less is kept there.
    assert measured["activations (saved for backward)"] == pytest.approx(saved, rel=0.10)


@pytest.mark.parametrize("dtype,name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
def test_full_fine_tuning_step_matches_the_estimate(dtype, name):
    config = LlamaConfig(**SMALL)
    model = build(config, dtype)
    method = "full" if name == "fp32" else "full-mixed"
    estimate = training_memory(config, method, batch_size=2, seq_len=64, gradient_checkpointing=False,
                               compute_dtype=name)
    if method == "full-mixed":  # plain torch keeps bf16 moments and no fp32 master copy; compare those parts
        n = estimate.trainable_params
        tensors = sum(1 for _ in model.parameters())
        estimate.optimizer = 2 * n * 2 + 4 * tensors
    check_step(model, config, estimate)


@pytest.mark.parametrize("targets", [["q_proj", "v_proj"], ["o_proj", "down_proj"], list(LINEAR_KINDS)])
def test_lora_step_matches_the_estimate(targets):
    config = LlamaConfig(**SMALL)
    base = build(config, torch.bfloat16)
    model = get_peft_model(base, LoraConfig(r=8, target_modules=targets))
    assert next(p for p in model.parameters() if p.requires_grad).dtype == torch.float32, "PEFT keeps adapters in fp32"
    estimate = training_memory(config, "lora", rank=8, targets=targets, batch_size=2, seq_len=64,
                               gradient_checkpointing=False, compute_dtype="bf16")
    check_step(model, config, estimate)


def test_qlora_step_matches_the_estimate(saved_small_llama):
    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                            bnb_4bit_compute_dtype=torch.bfloat16)
    base = load_quantized(saved_small_llama, qc).train()
    model = get_peft_model(base, LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    config = LlamaConfig(**SMALL)
    estimate = training_memory(config, "qlora", rank=8, targets=["q_proj", "v_proj"], batch_size=2, seq_len=64,
                               gradient_checkpointing=False, compute_dtype="bf16")
    check_step(model, config, estimate)


def test_checkpointing_keeps_one_input_per_layer():
    config = load_config("llama-3.1-8b")
    with_gc = activation_bytes(config, 1, 1024, "lora", gradient_checkpointing=True)
    without = activation_bytes(config, 1, 1024, "lora", gradient_checkpointing=False)
    assert with_gc["layer inputs (checkpoints)"] == config.num_hidden_layers * 1024 * config.hidden_size * 2
    assert with_gc["one recomputed layer"] * config.num_hidden_layers == without["decoder layers"]


def test_t4_preset_for_the_8b_is_about_11_gb_and_fits():
    # The preset of notebook 06: Llama 3.1 8B in NF4 after prepare_model_for_kbit_training, LoRA r=32 on all seven
    # projections (dropout 0.1), batch 4 x 96 tokens, checkpointing, paged 8-bit AdamW, fp16 autocast on a T4.
    from course_utils.training import PRESETS
    config = load_config("llama-3.1-8b")
    estimate = preset_memory(config, PRESETS["t4"])
    assert estimate.settings["prepared"] and estimate.settings["lora_dropout"] == 0.1
    assert 10.5e9 < estimate.total < 10.8e9 and estimate.fits("T4") and estimate.suggestion("T4") == ""
    assert "About 10.7 GB" in estimate.verdict() and "T4" in estimate.verdict()
    # lm_head (fp32 once prepared) copied to fp16 for the backward pass: 128,256 x 4,096 x 2 bytes
    assert estimate.copy_parts["lm_head (16-bit copy)"] == 128_256 * 4_096 * 2 == 1_050_673_152
    assert estimate.parts()[COPIES_PART] == estimate.autocast_copies == sum(estimate.copy_parts.values())
    # the checkpointed layer inputs are fp32 (the residual stream of a prepared model): 32 x 384 tokens x 4096 x 4
    assert estimate.activation_parts["layer inputs (checkpoints)"] == 32 * 4 * 96 * 4096 * 4
    plain = preset_memory(config, PRESETS["t4"], prepared=False)  # a 16-bit model without autocast's copies
    assert COPIES_PART not in plain.parts() and estimate.total - plain.total > 3.2e9


def test_prepared_applies_to_qlora_only():
    config = load_config("course-llama")
    with pytest.raises(ValueError, match="qlora"):
        training_memory(config, "lora", prepared=True)
    assert training_memory(config, "qlora").parts().keys() == training_memory(config, "lora").parts().keys()


def test_lora_dropout_adds_one_mask_byte_per_adapter_input():
    config = load_config("llama-3.1-8b")
    kw = dict(rank=8, targets=["q_proj", "v_proj"], batch_size=1, seq_len=64, gradient_checkpointing=False)
    for prepared in (False, True):
        without = training_memory(config, "qlora", prepared=prepared, **kw).activations
        with_dropout = training_memory(config, "qlora", prepared=prepared, lora_dropout=0.1, **kw).activations
        assert with_dropout - without == 32 * 64 * 2 * config.hidden_size  # layers x tokens x targets x d


def test_full_fine_tuning_of_the_8b_fits_no_listed_gpu_and_the_suggestion_fits():
    config = load_config("llama-3.1-8b")
    estimate = training_memory(config, "full", batch_size=4, seq_len=2048, gradient_checkpointing=False)
    assert estimate.weights + estimate.gradients + estimate.optimizer >= 16 * count_params(config)
    assert estimate.fitting_gpus() == [] and "none" in estimate.verdict()
    for gpu in GPUS:
        steps, settings = suggested_settings(estimate, gpu)
        assert steps and training_memory(config, **settings).fits(gpu)
        assert estimate.suggestion(gpu).startswith(f"To fit on the {gpu}")


def test_an_impossible_fit_says_so():
    estimate = training_memory(load_config("llama-3.1-405b"), "full")
    assert suggested_settings(estimate, "T4") is None
    assert "does not fit" in estimate.suggestion("T4")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_is_below_fp32(precision):
    config = load_config("llama-3.2-1b")
    assert weight_bytes(config, precision) <= weight_bytes(config, "fp32")
    assert math.isclose(weight_bytes(config, "fp16"), weight_bytes(config, "bf16"))


def test_exercise_checkers_accept_the_reference_answers():
    from course_utils.exercises import nb02
    config = load_config("llama-3.1-70b")
    peft = get_peft_model(empty_model(config), LoraConfig(r=8, target_modules=["q_proj", "v_proj"]))
    assert nb02.check_lora_params(sum(p.numel() for p in peft.parameters() if p.requires_grad))
    assert nb02.check_nf4_gb(weight_bytes(load_config("llama-3.2-3b"), "nf4") / 1e9 * 1.005)  # within 1%
    assert not nb02.check_nf4_gb(weight_bytes(load_config("llama-3.2-3b"), "bf16") / 1e9)
    assert not nb02.check_lora_params(None)


def test_precisions_and_gpu_names_are_read_in_any_case():
    config = load_config("llama-3.1-8b")
    assert weight_bytes(config, "BF16") == weight_bytes(config, "bf16")
    assert weight_bytes(config, "NF4", unquantized="FP16") == weight_bytes(config, "nf4", unquantized="fp16")
    upper = training_memory(config, "qlora", compute_dtype="BF16", adapter_dtype="FP32", optimizer="AdamW")
    assert upper.total == training_memory(config, "qlora").total
    full = training_memory(config, "full")
    assert full.fits("h100 ") == full.fits("H100") and upper.fits("t4") == upper.fits("T4")
    assert full.suggestion("t4").startswith("To fit on the T4")
    with pytest.raises(ValueError, match="Unknown GPU 'T5'; choose one of T4, L4, A100 40GB, A100 80GB, H100"):
        full.fits("T5")
