"""Past one GPU: what each of N GPUs holds under data parallelism, ZeRO-2 and FSDP / ZeRO-3.

`per_gpu_memory(estimate, n_gpus, strategy)` starts from a one-GPU `memory.training_memory` estimate (its
TrainingMemory parts) and applies the sharding rules, so that N = 1 gives notebook 02's numbers exactly:

- "ddp" (DistributedDataParallel): every GPU holds everything; only the batch is split.
- "zero2" (ZeRO stage 2): gradients and optimizer states are sharded N ways; the weights are replicated.
- "fsdp" (FSDP, ZeRO stage 3): weights, adapters, gradients and optimizer states are sharded N ways. What is
  not a parameter stays whole on every GPU: the rotary buffers, the NF4 constants (absmax, codes: bitsandbytes
  keeps them in each weight's quant_state), and AdamW's per-tensor step counters. For compute, FSDP gathers
  whole units for a while (`gathered`): the root (embeddings, final norm, lm_head), which FSDP2 keeps gathered
  from the forward pass through the backward pass, two decoder layers (the one computing and the next one,
  prefetched), and one layer's gradients before they are reduce-scattered. That is the recipe of
  `scripts/distributed_lora.py`: `fully_shard` on every decoder layer, then on the root.
Activations do not shrink: each GPU runs its own micro-batch (`batch_size` in the estimate is per GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import LlamaConfig

from course_utils.memory import (COPIES_PART, FLOAT_BYTES, GPUS, HEADROOM, TrainingMemory, check_choice, fits_gpu,
                                 readable_bytes, rotary_buffer_bytes, where_it_fits, weight_breakdown)
from course_utils.params import param_breakdown

STRATEGIES = ("ddp", "zero2", "fsdp")
STRATEGY_LABELS = {"ddp": "DDP", "zero2": "ZeRO-2", "fsdp": "FSDP / ZeRO-3"}
ALIASES = {"ddp": "ddp", "dp": "ddp", "zero2": "zero2", "zero-2": "zero2", "fsdp": "fsdp", "zero3": "fsdp",
           "zero-3": "fsdp", "fsdp/zero-3": "fsdp", "fsdp / zero-3": "fsdp"}
GPU_COUNTS = (1, 2, 4, 8, 16, 32, 64)
GATHERED_PART = "gathered for compute (FSDP)"
STEP_COUNTER_BYTES = 4  # torch.optim.AdamW keeps one float32 step counter per tensor, whole on every rank

# Llama 2 70B, the model of Answer.AI's FSDP-QLoRA on two 24 GB GPUs ("You can now train a 70b language model at
# home", answer.ai, 6 March 2024), from its published config.json (meta-llama/Llama-2-70b-hf): 80 layers,
# hidden 8192, MLP 28672, 64 heads, 8 KV heads, a 32,000-token vocabulary, untied embeddings.
LLAMA2_70B = dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                  num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False)


def llama2_70b_config() -> LlamaConfig:
    """The config of Llama 2 70B (LLAMA2_70B), for the FSDP-QLoRA case."""
    return LlamaConfig(**LLAMA2_70B)


def check_strategy(strategy: str) -> str:
    """"ddp", "zero2" or "fsdp" from any usual spelling ("DDP", "ZeRO-2", "ZeRO-3", "FSDP / ZeRO-3")."""
    key = strategy.strip().lower() if isinstance(strategy, str) else None
    if key in ALIASES:
        return ALIASES[key]
    raise ValueError(f"Unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)} "
                     "(DDP, ZeRO-2, FSDP / ZeRO-3).")


def check_gpus(n_gpus) -> int:
    """`n_gpus` when it is a whole number of at least 1; else a sentence."""
    if isinstance(n_gpus, bool) or not isinstance(n_gpus, int) or n_gpus < 1:
        raise ValueError(f"The number of GPUs must be a whole number of at least 1, not {n_gpus!r}.")
    return n_gpus


@dataclass
class PerGPUMemory:
    """What one of `n_gpus` GPUs holds under `strategy`, in bytes, by part (the parts of a TrainingMemory)."""

    strategy: str
    n_gpus: int
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    activations: int
    autocast_copies: int
    gathered: int
    one_gpu: TrainingMemory

    @property
    def method(self) -> str:
        return self.one_gpu.method

    @property
    def total(self) -> int:
        return sum(self.parts().values())

    def parts(self) -> dict[str, int]:
        """TrainingMemory's parts per GPU, and what FSDP gathers for compute when there is any."""
        out = {"weights": self.weights, "LoRA adapter": self.adapter, "gradients": self.gradients,
               "optimizer states": self.optimizer, "activations": self.activations}
        if self.autocast_copies:
            out[COPIES_PART] = self.autocast_copies
        if self.gathered:
            out[GATHERED_PART] = self.gathered
        return out

    def fits(self, gpu: str, headroom: float = HEADROOM) -> bool:
        """Whether one GPU's share fits the GPU ("L4", any case), keeping `headroom` of it free."""
        return fits_gpu(self.total, gpu, headroom)

    def verdict(self) -> str:
        return (f"{STRATEGY_LABELS[self.strategy]} on {self.n_gpus} GPU{'s' * (self.n_gpus > 1)}: about "
                f"{readable_bytes(self.total)} per GPU; {where_it_fits(self.total)}.")


def replicated_weight_bytes(estimate: TrainingMemory) -> int:
    """The bytes of the weights part that are no parameters, so FSDP does not shard them: the rotary buffers,
    and for QLoRA the NF4 constants bitsandbytes keeps in each weight's quant_state."""
    config, s = estimate.config, estimate.settings
    if config is None:
        raise ValueError("This estimate has no config; make it with training_memory(config, ...).")
    if estimate.method != "qlora":
        return rotary_buffer_bytes(config)
    parts = weight_breakdown(config, "nf4", s["double_quant"], "fp32" if s["prepared"] else s["compute_dtype"])
    kept = [k for k in parts if k != "packed 4-bit weights" and not k.startswith("embeddings")]
    return sum(parts[k] for k in kept)


def unit_bytes(estimate: TrainingMemory) -> dict[str, int]:
    """The unsharded bytes of FSDP's units: the root (embeddings, final norm, lm_head) and one decoder layer
    (its weights as stored and its adapters)."""
    config, s = estimate.config, estimate.settings
    b = param_breakdown(config)
    if estimate.method == "qlora":
        dtype = "fp32" if s["prepared"] else s["compute_dtype"]
    else:
        dtype = "fp32" if estimate.method == "full" else s["compute_dtype"]
    root = (b.embeddings + b.lm_head + config.hidden_size) * FLOAT_BYTES[dtype]
    layers = estimate.weights - replicated_weight_bytes(estimate) - root
    layer = layers // config.num_hidden_layers + estimate.adapter // config.num_hidden_layers
    return {"root": root, "layer": layer}


def per_gpu_memory(estimate: TrainingMemory, n_gpus: int, strategy: str = "fsdp") -> PerGPUMemory:
    """One GPU's share of `estimate` (a `training_memory` result) on `n_gpus` GPUs under `strategy`.

    Example: `per_gpu_memory(training_memory(load_config("llama-3.1-70b"), "qlora"), 2, "fsdp").total`.
    """
    strategy, n = check_strategy(strategy), check_gpus(n_gpus)
    e = estimate
    if n == 1 or strategy == "ddp":
        return PerGPUMemory(strategy, n, e.weights, e.adapter, e.gradients, e.optimizer, e.activations,
                            e.autocast_copies, 0, e)
    counters = STEP_COUNTER_BYTES * e.trainable_tensors if e.settings.get("optimizer") == "adamw" else 0
    optimizer = counters + (e.optimizer - counters) // n
    gradients = e.gradients // n
    if strategy == "zero2":
        return PerGPUMemory(strategy, n, e.weights, e.adapter, gradients, optimizer, e.activations,
                            e.autocast_copies, 0, e)
    kept = replicated_weight_bytes(e)
    units = unit_bytes(e)
    layer_gradients = e.gradients // e.config.num_hidden_layers
    gathered = units["root"] + 2 * units["layer"] + layer_gradients
    return PerGPUMemory(strategy, n, kept + (e.weights - kept) // n, e.adapter // n, gradients, optimizer,
                        e.activations, e.autocast_copies, gathered, e)


def gpus_needed(estimate: TrainingMemory, gpu: str, strategy: str = "fsdp",
                counts: tuple[int, ...] = GPU_COUNTS) -> int | None:
    """The fewest GPUs of kind `gpu`, from `counts`, whose per-GPU share fits; None when none does."""
    return next((n for n in counts if per_gpu_memory(estimate, n, strategy).fits(gpu)), None)


def needs_sentence(estimate: TrainingMemory, gpu: str, strategy: str = "fsdp") -> str:
    """One sentence: how many GPUs of kind `gpu` this run needs under `strategy`."""
    gpu, strategy = check_choice(gpu, tuple(GPUS), "GPU"), check_strategy(strategy)
    n = gpus_needed(estimate, gpu, strategy)
    label = STRATEGY_LABELS[strategy]
    if n is None:
        return (f"Under {label}, not even {GPU_COUNTS[-1]} x {gpu} hold one GPU's share"
                + (": DDP gives every GPU all of it." if strategy == "ddp" else "."))
    share = per_gpu_memory(estimate, n, strategy)
    return f"Under {label} this run needs {n} x {gpu} ({readable_bytes(share.total)} per GPU)."


def predicted_process_bytes(estimate: TrainingMemory, n_gpus: int, strategy: str) -> dict[str, int]:
    """What one process of `scripts/distributed_lora.py` should hold: its parameters and buffers (frozen
    weights and adapters), its gradients and its optimizer states, in bytes."""
    share = per_gpu_memory(estimate, n_gpus, strategy)
    return {"parameters and buffers": share.weights + share.adapter, "gradients": share.gradients,
            "optimizer states": share.optimizer}
