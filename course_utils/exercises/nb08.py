"""Checkers for notebook 08, past one GPU. The answers are computed with course_utils.distributed."""

from __future__ import annotations

from course_utils.configs import load_config
from course_utils.distributed import GPU_COUNTS, gpus_needed, per_gpu_memory
from course_utils.exercises import as_number, choice, close, not_a_number, report, unready
from course_utils.memory import training_memory
from course_utils.params import ATTENTION

# Exercise 1: a full fine-tune (mixed precision) of Llama 3.1 70B on 80 GB GPUs under FSDP / ZeRO-3.
FULL_70B_RUN = dict(method="full-mixed", batch_size=1, seq_len=1024, gradient_checkpointing=True)
# Exercise 2: LoRA r = 16 on q, k, v, o of Llama 3.1 8B, AdamW, on 4 GPUs under FSDP.
LORA_8B_RUN = dict(method="lora", rank=16, targets=ATTENTION, batch_size=1, seq_len=1024)


def full_70b_gpus() -> int:
    """The fewest A100 80GB (of GPU_COUNTS) a full mixed-precision fine-tune of the 70B needs under FSDP."""
    return gpus_needed(training_memory(load_config("llama-3.1-70b"), **FULL_70B_RUN), "A100 80GB", "fsdp")


def check_full_70b_gpus(answer) -> bool:
    """How many 80 GB GPUs (the fewest of 1, 2, 4, ..., 64) FULL_70B_RUN needs under FSDP / ZeRO-3."""
    if not_a_number(answer, whole=True):
        return False
    right = full_70b_gpus()
    given = as_number(answer, whole=True)
    if given is None:
        return report(False, "", "Estimate nb08.FULL_70B_RUN with training_memory, then try per_gpu_memory(..., n, "
                      "'fsdp').fits('A100 80GB') for n = 1, 2, 4, ... (or ask gpus_needed).")
    if given not in GPU_COUNTS:
        return report(False, "", f"Answer with one of the counts {', '.join(map(str, GPU_COUNTS))}: "
                      "the fewest that fits.")
    share = per_gpu_memory(training_memory(load_config("llama-3.1-70b"), **FULL_70B_RUN), given, "fsdp")
    if share.fits("A100 80GB"):
        hint = "That many fit, but fewer would too: halve the count and check again."
    elif share.total - share.gathered <= 80e9 * 0.98:
        hint = "The sharded states fit that many, but FSDP also gathers whole units to compute: count them too."
    else:
        hint = "One GPU's share is still more than 80 GB there: weights, gradients and states are split N ways."
    return report(given == right, f"{right} GPUs: about {share.total / 1e9:.0f} GB per GPU, 16 bytes per weight "
                  "split 32 ways, plus activations and the gathered units.", hint)


def lora_optimizer_bytes() -> int:
    """Per-GPU optimizer bytes of LORA_8B_RUN on 4 GPUs under FSDP."""
    return per_gpu_memory(training_memory(load_config("llama-3.1-8b"), **LORA_8B_RUN), 4, "fsdp").optimizer


def check_lora_optimizer_bytes(answer) -> bool:
    """The bytes of AdamW's states one of 4 GPUs holds for LoRA r = 16 on q, k, v, o of the 8B under FSDP."""
    if not_a_number(answer):
        return False
    right = lora_optimizer_bytes()
    one = training_memory(load_config("llama-3.1-8b"), **LORA_8B_RUN).optimizer
    if close(answer, one, rel=1e-3):
        hint = "That is what one GPU alone holds; FSDP splits the optimizer states over the 4 GPUs."
    elif close(answer, right / 2, rel=1e-3) or close(answer, right * 2, rel=1e-3):
        hint = "AdamW keeps two float32 moments per trainable weight (8 bytes), and FSDP splits them 4 ways."
    else:
        hint = "Count the adapter's trainable weights (lora_params), 8 bytes of AdamW moments each, over 4 GPUs."
    return report(close(answer, right, rel=1e-4), f"{right:,} bytes ({right / 1e6:.1f} MB): a quarter of the "
                  "moments; the 4-byte step counters (one per tensor) stay whole on every GPU.", hint)


SHARDS_WEIGHTS = {"a": "DDP (DistributedDataParallel)", "b": "ZeRO-2", "c": "FSDP / ZeRO-3",
                  "d": "none of them: every GPU needs all the weights to compute"}


def check_shards_weights(answer) -> bool:
    """Which strategy shards the weights themselves (not only gradients and optimizer states)?"""
    return choice(answer, SHARDS_WEIGHTS, "c", "FSDP / ZeRO-3 keeps 1/N of every weight and gathers one unit "
                  "(a decoder layer) at a time to compute with it.",
                  {"a": "DDP replicates everything; it only splits the batch.",
                   "b": "ZeRO-2 splits gradients and optimizer states; its weights are whole on every GPU.",
                   "d": "Every GPU needs a layer's whole weights while it computes that layer, but not all layers "
                        "at once."}, names=True)


FITS_405B = {"a": "full fine-tuning (mixed precision)", "b": "LoRA on a bf16 base", "c": "QLoRA (NF4 base)",
             "d": "all three"}


def check_405b_on_a_node(answer) -> bool:
    """Which way of training Llama 3.1 405B fits one node of 8 x 80 GB under FSDP (1 x 512 tokens)?"""
    return choice(answer, FITS_405B, "c", "Only the NF4 base (216 GB) leaves room: sharded 8 ways it is 27 GB "
                  "per GPU; the bf16 weights alone, 812 GB, are more than the node's 640 GB.",
                  {"a": "16 bytes per weight for 405 billion weights: terabytes, not 640 GB.",
                   "b": "The frozen bf16 weights alone are 2 bytes x 405 billion: compare with 8 x 80 GB.",
                   "d": "Compare the weights alone, at each precision, with 8 x 80 GB."}, names=True)


QUANT_STORAGE = {
    "a": "FSDP shards a unit as one flat tensor of one dtype, and the norms are bf16",
    "b": "it makes the 4-bit matrix products run faster on the GPUs that compute in bf16",
    "c": "it stores each 4-bit weight in 16 bits, so it costs 4x the memory",
    "d": "bitsandbytes cannot dequantize weights kept in uint8 storage on a GPU",
}


def check_quant_storage(answer) -> bool:
    """Why QLoRA under FSDP sets bnb_4bit_quant_storage=torch.bfloat16."""
    return choice(answer, QUANT_STORAGE, "a", "FSDP (FSDP1, as Answer.AI used it) flattens a unit's parameters "
                  "into one tensor of one dtype; the same packed bytes, seen as bf16 elements (4 weights each), join "
                  "the layer's bf16 norms in it, and FSDP shards it and gathers it back.",
                  {"b": "The storage dtype is how the packed bytes are labelled; the kernel does the same work.",
                   "c": "Check the parameter's bytes in section 7: the same bytes, fewer elements.",
                   "d": "bitsandbytes dequantizes uint8 storage everywhere; the problem is FSDP's, not the kernel's."})


# ----------------------------------------------------------------------------------------------------------
# Exercise 6: predict, then run: gradient accumulation, 4 micro-batches of 2 against one batch of 8
# ----------------------------------------------------------------------------------------------------------

ACCUMULATION = {
    "a": "the same, to float32 rounding: the same 8 examples, the same tokens",
    "b": "a different one: a token counts for more in a micro-batch of fewer",
    "c": "the same direction, another length: only the loss's scale changed",
}


def accumulation_figures(accumulated, one_batch) -> tuple[float, float]:
    """How far the accumulated gradient is from the batch's, relative to the batch's norm, and the cosine of the
    angle between them (computed in float64)."""
    accumulated, one_batch = accumulated.double().flatten(), one_batch.double().flatten()
    relative = ((accumulated - one_batch).norm() / one_batch.norm()).item()
    cosine = (accumulated @ one_batch / (accumulated.norm() * one_batch.norm())).item()
    return relative, cosine


def what_accumulation_did(accumulated, one_batch) -> str:
    """Which of ACCUMULATION two measured gradients show: equal to float32 rounding, or the same direction at
    another length, or another direction."""
    relative, cosine = accumulation_figures(accumulated, one_batch)
    if relative < 1e-4:
        return "a"
    return "c" if cosine > 1 - 1e-6 else "b"


def check_accumulation(prediction, accumulated=None, one_batch=None) -> bool:
    """Exercise 6: the student's prediction (a letter of ACCUMULATION) against the gradients the run measured."""
    ran = hasattr(accumulated, "double") and hasattr(one_batch, "double")  # two tensors
    if unready(prediction, ran, "Run the cell that computes both gradients; it passes them here.",
               f" ({', '.join(ACCUMULATION)}), run its cell, then this one again: the checker compares it with what "
               "the run measured."):
        return False
    happened = what_accumulation_did(accumulated, one_batch)
    relative, cosine = accumulation_figures(accumulated, one_batch)
    measured = f"relative difference {relative:.1e}, cosine {cosine:.7f}"
    praise = {"a": f"The run says ({measured}). Each token of the 8 examples weighs the same in both gradients.",
              "b": f"The run says ({measured}). Each micro-batch's mean divides by its own token count, so a token "
                   "of a short micro-batch weighs more than one of a long one; weigh each loss by its share of the "
                   "batch's tokens instead (n_i / N, not 1 / 4), as section 5's script does across processes.",
              "c": f"The run says ({measured}): the same direction, only the length differs."}[happened]
    return choice(prediction, ACCUMULATION, happened, praise,
                  {letter: f"The run says ({happened}): {ACCUMULATION[happened]} ({measured}). Why? Write both "
                   "losses as sums over tokens, and see what each token is divided by." for letter in ACCUMULATION})
