"""Memory arithmetic: the bytes of a model's weights at each precision, and what training adds.

`weight_bytes(config, precision)` is the memory a loaded model holds, tensor by tensor, as bitsandbytes and
transformers store it (checked against real loads in tests/test_memory.py):

- fp32 / fp16 / bf16: every parameter at 4 / 2 / 2 bytes, plus the two rotary-frequency buffers
  (`inv_freq`, `original_inv_freq`: head_dim / 2 float32 each), which `get_memory_footprint()` counts too.
- int8 (LLM.int8, `load_in_8bit`): each Linear inside the decoder layers keeps 1 byte per weight and one
  float32 scale per output row (`SCB`); everything else stays in the load dtype (`unquantized`, bf16 by default).
- nf4 (`load_in_4bit`, QLoRA's storage): each Linear inside the decoder layers keeps 4 bits per weight, packed
  two to a byte, and one absmax per block of 64 weights, as float32, or, with double quantization, as 8 bits
  (the absmax minus their mean, quantized again in blocks of 256 with one float32 absmax per block, plus the
  float32 mean and a 256-entry float32 code table). Every quantized layer also carries its 16-entry NF4 code.
  Embeddings, norms and `lm_head` are not quantized and stay in the load dtype.

`training_memory(config, method, ...)` adds gradients, optimizer states and activations for full fine-tuning,
LoRA and QLoRA, and says which GPUs the total fits. course_utils.footprint measures the same on a real model.
With `prepared=True` (QLoRA after `prepare_model_for_kbit_training`, under fp16/bf16 autocast, as notebook 06
trains) it also counts fp32 embeddings, norms, lm_head and residual stream, and autocast's 16-bit copies of
lm_head and the adapters (held to a measurement in tests/test_saved_tensors.py). The activation model itself
is course_utils.activations; `suggest` says what to change when a run does not fit a GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from transformers import LlamaConfig

from course_utils.activations import METHODS, activation_bytes, autocast_copy_bytes
from course_utils.lora import COURSE_RANK, lora_shapes, target_kinds
from course_utils.params import LINEAR_KINDS, head_dim, linear_shapes, param_breakdown
from course_utils.quantization import DOUBLE_QUANT_BLOCK_SIZE, NF4_BLOCK_SIZE

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "nf4")
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
CODE_8BIT_ENTRIES = 256  # the float32 code table of the 8-bit quantization of the absmax
CODE_4BIT_ENTRIES = 16  # the float32 NF4 code table every 4-bit layer carries

# GPUs the verdict speaks of, memory in GB (1e9 bytes): the T4 as Colab offers it (15 GB), the others as sold.
GPUS: dict[str, float] = {"T4": 15, "L4": 24, "A100 40GB": 40, "A100 80GB": 80, "H100": 80}
HEADROOM = 0.02  # fraction of a GPU kept free for the CUDA context and the allocator's fragmentation (assumed)

# The optimizers the course trains with, by the names transformers' Trainer uses (`optim=`): torch's AdamW, and
# bitsandbytes' 8-bit AdamW, plain or paged (the same bytes: paging moves them to CPU memory when the GPU is full).
OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
BNB_8BIT_MIN_SIZE = 4096  # bitsandbytes keeps 32-bit optimizer states for tensors smaller than this
COPIES_PART = "16-bit copies (autocast)"  # the name of TrainingMemory.autocast_copies in parts()


# ----------------------------------------------------------------------------------------------- weights

def nf4_bytes(n_weights: int, double_quant: bool = True, blocksize: int = NF4_BLOCK_SIZE) -> dict[str, int]:
    """The bytes bitsandbytes stores for one 4-bit (NF4) weight matrix of `n_weights` weights, by tensor."""
    blocks = math.ceil(n_weights / blocksize)
    out = {"packed 4-bit weights": math.ceil(n_weights / 2), "NF4 code": 4 * CODE_4BIT_ENTRIES}
    if double_quant:
        out["absmax (8-bit)"] = blocks
        out["nested absmax, mean, code (fp32)"] = 4 * (math.ceil(blocks / DOUBLE_QUANT_BLOCK_SIZE) + 1 + CODE_8BIT_ENTRIES)
    else:
        out["absmax (fp32)"] = 4 * blocks
    return out


def int8_bytes(in_features: int, out_features: int) -> dict[str, int]:
    """The bytes of one LLM.int8 weight matrix: 1 byte per weight, one float32 scale per output row."""
    return {"int8 weights": in_features * out_features, "row scales (fp32)": 4 * out_features}


def rotary_buffer_bytes(config: LlamaConfig) -> int:
    """`inv_freq` and `original_inv_freq`: head_dim / 2 float32 each, held by every loaded Llama."""
    return 2 * (head_dim(config) // 2) * 4


def weight_breakdown(config: LlamaConfig, precision: str = "bf16", double_quant: bool = True,
                     unquantized: str = "bf16") -> dict[str, int]:
    """`weight_bytes` split into its parts: quantized Linears, their constants, what stays unquantized, buffers.

    `unquantized` is the dtype of the modules int8 and nf4 leave alone (embeddings, norms, lm_head, biases).
    """
    precision = check_choice(precision, PRECISIONS, "precision")
    unquantized = check_choice(unquantized, tuple(FLOAT_BYTES), "unquantized")
    b = param_breakdown(config)
    if precision in FLOAT_BYTES:
        return {"parameters": b.total * FLOAT_BYTES[precision], "rotary buffers (fp32)": rotary_buffer_bytes(config)}
    out: dict[str, int] = {}
    for i, o in linear_shapes(config).values():
        parts = nf4_bytes(i * o, double_quant) if precision == "nf4" else int8_bytes(i, o)
        for name, nbytes in parts.items():
            out[name] = out.get(name, 0) + config.num_hidden_layers * nbytes
    others = b.total - config.num_hidden_layers * sum(i * o for i, o in linear_shapes(config).values())
    out[f"embeddings, norms, lm_head, biases ({unquantized})"] = others * FLOAT_BYTES[unquantized]
    out["rotary buffers (fp32)"] = rotary_buffer_bytes(config)
    return out


def weight_bytes(config: LlamaConfig, precision: str = "bf16", double_quant: bool = True,
                 unquantized: str = "bf16") -> int:
    """Bytes a loaded model holds for its weights at `precision` ("fp32", "fp16", "bf16", "int8" or "nf4").

    For "nf4", `double_quant=True` (QLoRA's setting) stores the absmax constants in 8 bits; False keeps them
    in float32. Example: `weight_bytes(load_config("llama-3.1-8b"), "nf4", double_quant=True)`.
    """
    return sum(weight_breakdown(config, precision, double_quant, unquantized).values())


# ---------------------------------------------------------------------------------------------- training

def optimizer_bytes(tensor_sizes: list[int], optimizer: str = "adamw", state_bytes: int = 4) -> int:
    """Optimizer memory for trainable tensors of the given sizes.

    AdamW (torch.optim.AdamW) keeps two moments per weight, `state_bytes` each (the parameter's own dtype),
    and a float32 step counter per tensor.
    8-bit AdamW (bitsandbytes) keeps 1 byte per moment plus one float32 absmax per 256 values, and two
    256-entry float32 code tables shared by all tensors; tensors under 4096 values keep 32-bit moments.
    """
    optimizer = check_choice(optimizer, OPTIMIZERS, "optimizer")
    total = 0
    if optimizer != "adamw" and any(n >= BNB_8BIT_MIN_SIZE for n in tensor_sizes):
        total += 2 * 4 * 256  # the two float32 code tables, shared by all tensors of the optimizer
    for n in tensor_sizes:
        if optimizer == "adamw":
            total += 2 * n * state_bytes + 4  # exp_avg, exp_avg_sq and a float32 step counter (torch.optim.AdamW)
        elif n < BNB_8BIT_MIN_SIZE:
            total += 2 * n * 4
        else:
            total += 2 * (n + 4 * math.ceil(n / 256))
    return total


@dataclass
class TrainingMemory:
    """A training-memory estimate in bytes, by part, with the GPUs it fits."""

    method: str
    weights: int  # the model being trained (frozen base, or all weights), as stored
    adapter: int  # LoRA matrices (0 for full fine-tuning)
    gradients: int
    optimizer: int
    activations: int
    trainable_params: int
    settings: dict = field(default_factory=dict)
    activation_parts: dict = field(default_factory=dict)
    config: LlamaConfig | None = field(default=None, repr=False)
    autocast_copies: int = 0  # 16-bit copies of fp32 weights kept for the backward pass (prepared QLoRA only)
    copy_parts: dict = field(default_factory=dict)
    trainable_tensors: int = 0  # how many tensors the optimizer updates (each has its own AdamW step counter)

    @property
    def total(self) -> int:
        return self.weights + self.adapter + self.gradients + self.optimizer + self.activations + self.autocast_copies

    def parts(self) -> dict[str, int]:
        """The parts of the stacked bar, in bytes ("16-bit copies (autocast)" only when there are any)."""
        out = {"weights": self.weights, "LoRA adapter": self.adapter, "gradients": self.gradients,
               "optimizer states": self.optimizer, "activations": self.activations}
        if self.autocast_copies:
            out[COPIES_PART] = self.autocast_copies
        return out

    def fits(self, gpu: str, headroom: float = HEADROOM) -> bool:
        """Whether the total fits in the GPU's memory ("T4", any case), keeping `headroom` of it free."""
        return fits_gpu(self.total, gpu, headroom)

    def fitting_gpus(self) -> list[str]:
        return [g for g in GPUS if self.fits(g)]

    def verdict(self) -> str:
        """One sentence: the total and which GPUs it fits."""
        return f"About {readable_bytes(self.total)} in total; {where_it_fits(self.total)}."

    def suggestion(self, gpu: str = "T4") -> str:
        """What to change so that this run fits `gpu` (empty when it already fits)."""
        return suggest(self, gpu)


def fits_gpu(total: int, gpu: str, headroom: float = HEADROOM) -> bool:
    """Whether `total` bytes fit the GPU ("T4", any case), keeping `headroom` of it free."""
    return total <= GPUS[check_choice(gpu, tuple(GPUS), "GPU")] * 1e9 * (1 - headroom)


def where_it_fits(total: int) -> str:
    """"fits on T4, L4 (keeping 2% free)", or "fits on none of ..." for `total` bytes."""
    fits = [g for g in GPUS if fits_gpu(total, g)]
    where = f"fits on {', '.join(fits)}" if fits else "fits on none of " + ", ".join(GPUS)
    return f"{where} (keeping {HEADROOM:.0%} free)"


def readable_bytes(n: float) -> str:
    """Bytes as GB with one decimal, or as MB below 1 GB (a small model's run is not "0.0 GB")."""
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def training_memory(config: LlamaConfig, method: str = "qlora", rank: int = 16, targets=("q_proj", "v_proj"),
                    batch_size: int = 1, seq_len: int = 512, gradient_checkpointing: bool = True,
                    optimizer: str = "adamw", compute_dtype: str = "bf16", adapter_dtype: str = "fp32",
                    double_quant: bool = True, prepared: bool = False, lora_dropout: float = 0.0) -> TrainingMemory:
    """Estimate the memory of one training step, by part.

    method: "full" (fp32 weights, gradients and AdamW), "full-mixed" (16-bit weights and gradients, fp32
    master weights and AdamW moments, as in the ZeRO paper), "lora" (frozen 16-bit base + adapters) or
    "qlora" (frozen NF4 base + adapters). `rank` and `targets` (module names such as "q_proj", or "all-linear")
    describe the adapters; `compute_dtype` is the 16-bit type of activations and unquantized weights;
    `adapter_dtype` is the adapters' storage (PEFT keeps them in fp32 by default); `lora_dropout` > 0 adds the
    dropout masks. `prepared` (QLoRA only): the base went through `prepare_model_for_kbit_training` and trains
    under autocast to `compute_dtype`, so embeddings, norms and lm_head are fp32, the residual stream is fp32,
    and autocast's 16-bit copies of lm_head and the adapters count ("16-bit copies (autocast)").
    """
    method = check_choice(method, METHODS, "method")
    compute_dtype = check_choice(compute_dtype, tuple(FLOAT_BYTES), "compute_dtype")
    adapter_dtype = check_choice(adapter_dtype, tuple(FLOAT_BYTES), "adapter_dtype")
    for name, value in (("rank", rank), ("batch_size", batch_size), ("seq_len", seq_len)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive whole number, got {value!r}.")
    targets = tuple(target_kinds(targets)) if method in ("lora", "qlora") else LINEAR_KINDS
    settings = dict(method=method, rank=rank, targets=targets, batch_size=batch_size, seq_len=seq_len,
                    gradient_checkpointing=gradient_checkpointing, optimizer=optimizer, compute_dtype=compute_dtype,
                    adapter_dtype=adapter_dtype, double_quant=double_quant, prepared=prepared,
                    lora_dropout=lora_dropout)
    if method == "full":
        compute_dtype = "fp32"
    a = FLOAT_BYTES[compute_dtype]
    if method in ("full", "full-mixed"):
        b = param_breakdown(config)
        sizes = ([b.embeddings, b.lm_head] + [i * o for i, o in linear_shapes(config).values()] * config.num_hidden_layers
                 + [config.hidden_size] * (2 * config.num_hidden_layers + 1))
        sizes = [n for n in sizes if n]
        n_train = sum(sizes)
        weights = weight_bytes(config, compute_dtype)
        gradients = n_train * a
        master = 4 * n_train if method == "full-mixed" else 0  # fp32 copy the optimizer updates
        opt = master + optimizer_bytes(sizes, optimizer, state_bytes=4)
        adapter = 0
    else:
        sizes = [r * c for r, c in lora_shapes(config, rank, targets)]
        n_train = sum(sizes)
        unquantized = "fp32" if prepared else compute_dtype
        weights = (weight_bytes(config, "nf4", double_quant, unquantized=unquantized) if method == "qlora"
                   else weight_bytes(config, compute_dtype))
        adapter = n_train * FLOAT_BYTES[adapter_dtype]
        gradients = adapter
        opt = optimizer_bytes(sizes, optimizer, state_bytes=FLOAT_BYTES[adapter_dtype])
    acts = activation_bytes(config, batch_size, seq_len, method, targets, rank, gradient_checkpointing,
                            compute_bytes=a, adapter_bytes=FLOAT_BYTES[adapter_dtype], prepared=prepared,
                            lora_dropout=lora_dropout)
    copies = autocast_copy_bytes(config, targets, rank, gradient_checkpointing, a) if prepared else {}
    return TrainingMemory(method, weights, adapter, gradients, opt, sum(acts.values()), n_train, settings, acts,
                          config, autocast_copies=sum(copies.values()), copy_parts=copies,
                          trainable_tensors=len(sizes))


def suggested_settings(estimate: TrainingMemory, gpu: str = "T4") -> tuple[list[str], dict] | None:
    """The fewest changes, from a short ladder of levers, that make the estimate fit `gpu`.

    Returns (the changes in words, the `training_memory` keyword arguments that fit), ([], the current
    settings) when it already fits, or None when even the whole ladder does not fit.
    """
    s, config = dict(estimate.settings), estimate.config
    if config is None:
        raise ValueError("This estimate has no config; make it with training_memory(config, ...).")
    if estimate.fits(gpu):  # fits() reads the GPU's name in any case, or says which GPUs there are
        return [], s
    ladder = []  # the biggest levers first
    if not s["gradient_checkpointing"]:
        ladder.append(("turn on gradient checkpointing", {"gradient_checkpointing": True}))
    if s["method"] in ("full", "full-mixed"):
        if s["optimizer"] == "adamw":
            ladder.append(("use 8-bit AdamW", {"optimizer": "adamw_8bit"}))
        ladder.append(("train a LoRA adapter instead of all weights", {"method": "lora"}))
        ladder.append(("train a QLoRA adapter (LoRA on a frozen NF4 base)", {"method": "qlora"}))
    if s["method"] == "lora":
        ladder.append(("store the frozen base in NF4 (QLoRA)", {"method": "qlora"}))
    for bs in (s["batch_size"] // 2, s["batch_size"] // 4, 1):
        if 1 <= bs < s["batch_size"] and all(c.get("batch_size") != bs for _, c in ladder):
            ladder.append((f"lower the batch size to {bs} (gradient accumulation keeps the effective batch)",
                           {"batch_size": bs}))
    for sl in (s["seq_len"] // 2, s["seq_len"] // 4):
        if sl >= 64:
            ladder.append((f"shorten the sequences to {sl} tokens", {"seq_len": sl}))

    def apply(steps):
        settings = dict(s)
        for _, change in steps:
            settings.update(change)
        return settings

    chosen: list[tuple[str, dict]] = []
    for step in ladder:  # walk down the ladder until it fits ...
        chosen.append(step)
        if training_memory(config, **apply(chosen)).fits(gpu):
            break
    else:
        return None
    for step in list(chosen[:-1]):  # ... then drop the steps it does not need
        trial = [c for c in chosen if c is not step]
        if training_memory(config, **apply(trial)).fits(gpu):
            chosen = trial
    return [words for words, _ in chosen], apply(chosen)


def suggest(estimate: TrainingMemory, gpu: str = "T4") -> str:
    """A sentence saying what to change so that the estimate fits `gpu` ("" when it already fits)."""
    gpu = check_choice(gpu, tuple(GPUS), "GPU")
    found = suggested_settings(estimate, gpu)
    if found is None:
        return (f"It does not fit on the {gpu} even with gradient checkpointing, QLoRA, batch size 1 and shorter "
                "sequences; choose a smaller model or a bigger GPU.")
    steps, settings = found
    if not steps:
        return ""
    fitted = training_memory(estimate.config, **settings)
    adapter = f" with {describe_adapter(fitted.settings)}" if fitted.method in ("lora", "qlora") else ""
    return f"To fit on the {gpu}: " + "; ".join(steps) + f"; about {fitted.total / 1e9:.1f} GB{adapter}."


def describe_adapter(settings: dict) -> str:
    """The adapters of a LoRA or QLoRA estimate's settings in words: "LoRA r=16 on q_proj, v_proj"."""
    targets = tuple(settings["targets"])
    where = (f"all seven linear modules ({', '.join(LINEAR_KINDS)})" if set(targets) == set(LINEAR_KINDS)
             else ", ".join(targets))
    return f"LoRA r={settings['rank']} on {where}"


# ------------------------------------------------------------------------------------------------ checks

def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    """The choice `value` names, in any case and with spaces around ("BF16", "t4"); else a clear error."""
    for choice in choices:
        if isinstance(value, str) and value.strip().lower() == choice.lower():
            return choice
    raise ValueError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")


def preset_settings(train_config, rank: int = COURSE_RANK, targets: tuple[str, ...] | None = None,
                    prepared: bool = True) -> dict:
    """The `training_memory` keyword arguments of QLoRA training with a `training.TrainConfig` preset.

    The preset's batch size, sequence length, checkpointing, optimizer, compute dtype, LoRA targets (unless
    `targets` is given) and dropout, and `prepared` (notebook 06 and benchmarks/train_gpu.py run
    `prepare_model_for_kbit_training`, then train under autocast).
    """
    return dict(method="qlora", rank=rank, targets=tuple(train_config.lora_targets if targets is None else targets),
                batch_size=train_config.batch_size, seq_len=train_config.max_length, optimizer=train_config.optimizer,
                gradient_checkpointing=train_config.gradient_checkpointing, lora_dropout=train_config.lora_dropout,
                compute_dtype="bf16" if train_config.mixed_precision == "bf16" else "fp16", prepared=prepared)


def preset_memory(config: LlamaConfig, train_config, rank: int = COURSE_RANK,
                  targets: tuple[str, ...] | None = None, prepared: bool = True) -> TrainingMemory:
    """The estimated peak memory of QLoRA training with a `training.TrainConfig` preset (bytes by part)."""
    return training_memory(config, **preset_settings(train_config, rank, targets, prepared))
