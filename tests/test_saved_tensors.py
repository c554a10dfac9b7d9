"""The prepared-QLoRA estimate (`training_memory(..., prepared=True)`, what `preset_memory` uses) against what
autograd really keeps for the backward pass.

A small Llama is loaded in NF4 (bitsandbytes on the CPU), put through `prepare_model_for_kbit_training` and given
a LoRA adapter, as notebook 06 does; one forward pass with labels runs under `torch.autocast("cpu", bf16)`, and
`torch.autograd.graph.saved_tensors_hooks` records every tensor saved for the backward pass (each storage once,
parameters excluded). With gradient checkpointing the layers save nothing: their inputs are held by the
checkpoints (recorded by the same hook) and cos/sin by the checkpointed calls (recorded by a forward pre-hook).

The formula misses one thing on purpose: in the first layer nothing before the adapters needs a gradient, so its
input norm and the copies of its q, k, v lora_A are not kept; hence "within 3%" (measured ~1.5% lower here).
LoRA dropout is 0: on a CPU dropout keeps a float mask, on a GPU (what the estimate is for) a bool one.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from transformers import LlamaConfig

from course_utils.memory import COPIES_PART, training_memory
from course_utils.quantization import bitsandbytes_problem, bnb_4bit_config
from course_utils.training import enable_gradient_checkpointing
from tests.test_memory import load_quantized, save_random_llama

# A large vocabulary for the size, so that lm_head's 16-bit copy is a big share of what is kept, as on the 8B.
CONFIG = dict(vocab_size=2048, hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
RANK, BATCH, SEQ = 8, 2, 32
TOLERANCE = 0.03
NOT_SAVED_IN_FORWARD = ("one recomputed layer", "logits and their gradient", "one dequantized weight")

pytestmark = pytest.mark.skipif(bitsandbytes_problem() is not None, reason=str(bitsandbytes_problem()))


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory):
    return save_random_llama(tmp_path_factory.mktemp("saved-tensors-llama"), CONFIG)


def prepared_qlora(folder, checkpointing: bool):
    model = load_quantized(folder, bnb_4bit_config(torch.bfloat16))
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=2 * RANK, lora_dropout=0.0, target_modules=TARGETS))
    if checkpointing:
        enable_gradient_checkpointing(model)
    return model.train()


def saved_for_backward(model, input_ids) -> dict[int, torch.Tensor]:
    """Every non-parameter tensor kept for the backward pass of one autocast forward, by storage."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, torch.Tensor] = {}

    def keep(t):
        if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
            kept.setdefault(t.untyped_storage().data_ptr(), t)
        return t

    def pre_hook(module, args, kwargs):  # cos/sin reach the (checkpointed) layers as keyword arguments
        for t in kwargs.get("position_embeddings") or ():
            keep(t)

    layers = model.base_model.model.model.layers
    handles = [layer.register_forward_pre_hook(pre_hook, with_kwargs=True) for layer in layers]
    try:
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, labels=input_ids).loss
    finally:
        for h in handles:
            h.remove()
    loss.backward()  # the graph is whole
    return kept


def nbytes(kept: dict[int, torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in kept.values())


def forward_part(estimate) -> int:
    """The estimate's bytes that the forward pass keeps: activations and autocast's copies, less the parts that
    only exist during the backward pass (with checkpointing, the recomputed layer and its adapters' copies)."""
    acts = sum(v for k, v in estimate.activation_parts.items() if k not in NOT_SAVED_IN_FORWARD)
    copies = dict(estimate.copy_parts)
    if estimate.settings["gradient_checkpointing"]:
        copies.pop("LoRA matrices (16-bit copies)", None)
    return acts + sum(copies.values())


@pytest.mark.parametrize("checkpointing", [False, True], ids=["no checkpointing", "checkpointing"])
def test_prepared_qlora_estimate_matches_the_saved_tensors(saved_folder, checkpointing):
    config = LlamaConfig(**CONFIG)
    model = prepared_qlora(saved_folder, checkpointing)
    assert model.base_model.model.lm_head.weight.dtype == torch.float32, "prepare_model_for_kbit_training upcasts it"
    torch.manual_seed(1)
    kept = saved_for_backward(model, torch.randint(3, config.vocab_size, (BATCH, SEQ)))
    measured = nbytes(kept)
    # autocast's bf16 copy of the fp32 lm_head is among them, whole
    size = config.vocab_size * config.hidden_size
    lm_head = [t for t in kept.values() if t.dtype == torch.bfloat16 and t.numel() == size]
    assert len(lm_head) == 1
    # with checkpointing the layer inputs are kept in fp32 (the prepared residual stream)
    if checkpointing:
        inputs = [t for t in kept.values() if t.shape == (BATCH, SEQ, config.hidden_size)]
        assert inputs and all(t.dtype == torch.float32 for t in inputs)

    settings = dict(rank=RANK, targets=TARGETS, batch_size=BATCH, seq_len=SEQ, gradient_checkpointing=checkpointing,
                    compute_dtype="bf16")
    estimate = training_memory(config, "qlora", prepared=True, **settings)
    assert COPIES_PART in estimate.parts()
    predicted = forward_part(estimate)
    old = forward_part(training_memory(config, "qlora", **settings))
    print(f"checkpointing={checkpointing}: measured {measured:,} B, formula {predicted:,} B "
          f"({measured / predicted:.3f}), formula without prepared {old:,} B ({measured / old:.3f})")
    assert measured == pytest.approx(predicted, rel=TOLERANCE)
    # The formula without prepared=True (a 16-bit model, no copies) misses lm_head's copy and the fp32 stream:
    assert abs(old - measured) > 5 * TOLERANCE * measured, (old, measured)
