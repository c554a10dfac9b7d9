"""LoRA from scratch, the reference that notebooks 03 and 04 check themselves (and PEFT) against.

A frozen `nn.Linear` computes `W x`. LoRA adds a pair of small trainable matrices, `A` (r x in) and `B` (out x r):

    h = W x + (alpha / r) * B A x

`B` starts at zero, so at step 0 the adapted layer computes exactly what the frozen one did. Only `A` and `B`
train: `r * (in + out)` numbers instead of `in * out`. After training, `W + (alpha / r) B A` can be merged into
one matrix, so the adapted model runs as fast as the base.

The names and initialisation follow PEFT (`peft/tuners/lora/layer.py`): `lora_A` gets kaiming-uniform with
`a = sqrt(5)` (the default of `nn.Linear`), `lora_B` gets zeros, and the scale is `lora_alpha / r`.
"""

from __future__ import annotations

import math
import numbers
import re
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from transformers import LlamaConfig

from course_utils.architecture import module_kind, modules_by_kind
from course_utils.params import ATTENTION, LINEAR_KINDS, MLP, linear_shapes

# The target modules are the Linear layers of a decoder layer, by the names PEFT's `target_modules` uses:
# params.ATTENTION (q, k, v, o), params.MLP (gate, up, down), params.LINEAR_KINDS (all seven).
ALL_LINEAR = "all-linear"  # PEFT's shorthand: every Linear layer except the output layer (lm_head)

# The adapter the course trains in notebook 06, on every profile: r = 32, alpha = 64, dropout 0.1 on q, k, v, o.
COURSE_RANK, COURSE_ALPHA, COURSE_DROPOUT = 32, 64, 0.1
COURSE_TARGETS = ATTENTION

# Target sets the notebooks compare. PEFT's default for Llama (target_modules=None) is q_proj and v_proj.
TARGET_SETS: dict[str, tuple[str, ...]] = {
    "q, v (PEFT's default)": ("q_proj", "v_proj"),
    "attention: q, k, v, o": ATTENTION,
    "MLP: gate, up, down": MLP,
    "all-linear (all seven)": LINEAR_KINDS,
}


# ----------------------------------------------------------------------------------------------------------
# Checking the knobs: rank, alpha, dropout, target names
# ----------------------------------------------------------------------------------------------------------

def check_rank_alpha(r, alpha) -> None:
    """Raise a clear error unless `r` is a positive whole number and `alpha` a positive number."""
    if isinstance(r, bool) or not isinstance(r, numbers.Integral):
        raise TypeError(f"The rank r must be a whole number such as 8 or 16, not {r!r} ({type(r).__name__}). "
                        "It is the number of rows of A and columns of B.")
    if r <= 0:
        raise ValueError(f"The rank r must be at least 1 (you gave {r}): it is the number of rows of A and columns "
                         "of B. Typical values are 4 to 64.")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"lora_alpha must be a number such as 16 or 32, not {alpha!r} ({type(alpha).__name__}).")
    if not alpha > 0:
        raise ValueError(f"lora_alpha must be positive (you gave {alpha}): the adapter's output is multiplied by "
                         "alpha / r, so alpha = 0 switches the adapter off and a negative alpha flips its sign. "
                         "A common choice is alpha = 2 * r.")


def check_dropout(p) -> None:
    """Raise a clear error unless `p` is a probability in [0, 1)."""
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= p < 1:
        raise ValueError(f"lora_dropout is the probability of zeroing an input of the adapter; it must be in [0, 1), "
                         f"for example 0.05 (you gave {p!r}).")


def check_rank_fits(r: int, n_in: int, n_out: int, name: str) -> None:
    """Raise a clear error when the rank is not below the layer's smaller side: then B A is no low-rank update."""
    if r >= min(n_in, n_out):
        raise ValueError(f"rank {r} >= min(in, out) = {min(n_in, n_out)} of {name}: a low-rank adapter must be smaller "
                         f"than the layer; pick r < {min(n_in, n_out)}.")


def _check_rank_fits_modules(model: nn.Module, names: list[str], r: int) -> None:
    """`check_rank_fits` for the named Linear layers of `model`: the smallest one decides."""
    layers = {module_kind(n): model.get_submodule(n) for n in names}
    if layers:
        kind = min(layers, key=lambda k: min(layers[k].in_features, layers[k].out_features))
        check_rank_fits(r, layers[kind].in_features, layers[kind].out_features, kind)


def target_kinds(target_modules: str | Iterable[str]) -> list[str]:
    """The Llama target kinds named by `target_modules` ("all-linear", one name, or names from
    params.LINEAR_KINDS), in model order; a clear error for anything else."""
    if isinstance(target_modules, str):
        if target_modules.strip().lower() == ALL_LINEAR:
            return list(LINEAR_KINDS)
        target_modules = [target_modules]
    names = list(target_modules or [])
    if not names:
        raise ValueError(f"Name at least one target module: any of {', '.join(LINEAR_KINDS)}, or '{ALL_LINEAR}'.")
    unknown = [n for n in names if n not in LINEAR_KINDS]
    if unknown:
        raise ValueError(f"A Llama decoder layer has no Linear layer called {', '.join(map(repr, unknown))}. "
                         f"The target modules it has are {', '.join(LINEAR_KINDS)} (or '{ALL_LINEAR}' for all seven).")
    return [k for k in LINEAR_KINDS if k in names]


# ----------------------------------------------------------------------------------------------------------
# Counting: the closed form
# ----------------------------------------------------------------------------------------------------------

def linear_shape(config: LlamaConfig, kind: str) -> tuple[int, int]:
    """(in_features, out_features) of one target kind in every decoder layer of a Llama config."""
    shapes = linear_shapes(config)
    if kind not in shapes:
        target_kinds([kind])  # raises the clear error
    return shapes[kind]


def lora_params_per_layer(config: LlamaConfig, r: int, kind: str) -> int:
    """Trainable numbers of one adapter on one module: A is r x in, B is out x r, so r * (in + out)."""
    check_rank_alpha(r, 1)
    n_in, n_out = linear_shape(config, kind)
    check_rank_fits(r, n_in, n_out, kind)
    return r * (n_in + n_out)


def _check_rank_fits_kinds(config: LlamaConfig, r: int, kinds: list[str]) -> None:
    """`check_rank_fits` for target kinds of a config: the smallest one decides."""
    check_rank_alpha(r, 1)
    kind = min(kinds, key=lambda k: min(linear_shape(config, k)))
    check_rank_fits(r, *linear_shape(config, kind), kind)


def lora_params(config: LlamaConfig, r: int, target_modules: str | Iterable[str]) -> int:
    """Trainable parameters of LoRA with rank `r` on `target_modules` in every decoder layer: sum of r * (in + out)."""
    kinds = target_kinds(target_modules)
    _check_rank_fits_kinds(config, r, kinds)
    return config.num_hidden_layers * sum(lora_params_per_layer(config, r, k) for k in kinds)


def lora_shapes(config: LlamaConfig, r: int, target_modules: str | Iterable[str]) -> list[tuple[int, int]]:
    """Shapes (rows, cols) of every LoRA matrix of the model: A is r x in, B is out x r, per target, per layer.
    Their sizes add up to `lora_params`; the memory estimates need them one by one (per-tensor optimizer state)."""
    check_rank_alpha(r, 1)
    shapes = []
    kinds = target_kinds(target_modules)
    _check_rank_fits_kinds(config, r, kinds)
    for kind in kinds:
        n_in, n_out = linear_shape(config, kind)
        shapes += [(r, n_in), (n_out, r)] * config.num_hidden_layers
    return shapes


def lora_summary(config: LlamaConfig, r: int, target_modules: str | Iterable[str], base_params: int,
                 bytes_per_param: float = 4.0) -> dict:
    """What the notebooks show for one choice: trainable count, all parameters, share and adapter size in MB.

    `all params` and `share` follow PEFT's `print_trainable_parameters` (the base plus the adapter); the size is
    `trainable * bytes_per_param / 1e6` (PEFT keeps adapter weights in fp32, 4 bytes, by default).
    """
    trainable = lora_params(config, r, target_modules)
    total = base_params + trainable
    return {"trainable": trainable, "all": total, "share": trainable / total,
            "megabytes": trainable * bytes_per_param / 1e6}


# ----------------------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------------------

class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: `base(x) + (alpha / r) * B A x`.

    A (r x in) starts kaiming-uniform as PEFT's `lora_A`, B (out x r) starts at zero as PEFT's `lora_B`, so the
    layer starts out computing exactly what `base` does. `merge()` folds the update into `base.weight`.
    A and B take the base's dtype, or float32 when the base is stored in 4 bits (as PEFT does).
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps an nn.Linear, not a {type(base).__name__}.")
        check_rank_alpha(r, alpha)
        check_rank_fits(r, base.in_features, base.out_features, f"nn.Linear({base.in_features}, {base.out_features})")
        check_dropout(dropout)
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        dtype = base.weight.dtype if base.weight.dtype.is_floating_point else torch.float32
        like = {"device": base.weight.device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(r, base.in_features, **like))
        self.B = nn.Parameter(torch.zeros(base.out_features, r, **like))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False

    def delta_weight(self) -> torch.Tensor:
        """The change LoRA makes to W: (alpha / r) * B @ A, an out x in matrix of rank at most r."""
        return self.scale * (self.B @ self.A)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        if self.merged:
            return h
        x = x.to(self.A.dtype)  # a 4-bit base computes in fp16 or bf16 while A and B stay float32
        return h + ((self.dropout(x) @ self.A.T @ self.B.T) * self.scale).to(h.dtype)

    @torch.no_grad()
    def merge(self) -> None:
        """W <- W + (alpha / r) B A: one matrix again, as fast as the base layer."""
        if self.merged:
            raise RuntimeError("This LoRALinear is already merged; call unmerge() first.")
        if not self.base.weight.dtype.is_floating_point:
            raise TypeError("The base weight is quantized (4-bit), so B A can't simply be added to it; PEFT's "
                            "merge_and_unload() dequantizes, merges and quantizes again.")
        self.base.weight += self.delta_weight()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """W <- W - (alpha / r) B A: back to the frozen weight and a separate adapter."""
        if not self.merged:
            raise RuntimeError("This LoRALinear is not merged; there is nothing to unmerge.")
        self.base.weight -= self.delta_weight()
        self.merged = False

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}, merged={self.merged}"


# ----------------------------------------------------------------------------------------------------------
# Models: which Linear layers there are, and swapping them for LoRALinear
# ----------------------------------------------------------------------------------------------------------

def target_module_table(model: nn.Module) -> list[dict]:
    """One row per kind of Linear layer: how many there are, their (out, in) shape, and whether "all-linear" takes them."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = []
    for kind, names in modules_by_kind(model, nn.Linear).items():
        first = model.get_submodule(names[0])
        rows.append({"kind": kind, "count": len(names), "shape": (first.out_features, first.in_features),
                     "params each": first.weight.numel(), "in all-linear": first is not output})
    return rows


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a name in a target list: the whole module name, or its last dotted parts."""
    return name == target or name.endswith("." + target)


def _describe(module: nn.Module) -> str:
    type_name = type(module).__name__
    inner = list(dict.fromkeys(module_kind(n) for n, m in module.named_modules() if isinstance(m, nn.Linear)))
    if inner:
        return f"a {type_name}, a block that holds the Linear layers {', '.join(inner)}: name those instead"
    if "Norm" in type_name:
        return f"a {type_name}, which scales each dimension by one number; it has no weight matrix for A and B to adapt"
    if isinstance(module, nn.Embedding):
        return f"an {type_name} (a lookup table of token vectors), not an nn.Linear"
    return f"a {type_name}, not an nn.Linear"


def resolve_targets(model: nn.Module, target_modules: str | Iterable[str]) -> list[str]:
    """Full names of the Linear layers that `target_modules` picks, matched the way PEFT matches them.

    "all-linear" is every Linear except the output layer (lm_head), as in PEFT. A name the model lacks, or one
    that is not a Linear layer, raises an error that lists the target modules the model does have.
    """
    linear = modules_by_kind(model, nn.Linear)
    have = f"The Linear layers of this model are: {', '.join(f'{k} ({len(v)}x)' for k, v in linear.items())}."
    if isinstance(target_modules, str):
        if target_modules.lower() == ALL_LINEAR:
            output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
            return [n for names in linear.values() for n in names if model.get_submodule(n) is not output]
        if target_modules in linear:
            raise ValueError(f"Pass the target modules as a list: target_modules=[{target_modules!r}]. A single string "
                             f"is read by PEFT as a pattern that must match a module's whole name. {have}")
        target_modules = [target_modules]
    targets = list(target_modules or [])
    if not targets:
        raise ValueError(f"Name at least one target module. {have} Or use '{ALL_LINEAR}'.")
    modules = dict(model.named_modules())
    chosen: list[str] = []
    for target in targets:
        hits = [n for n in modules if n and _matches(n, target)]
        if not hits:
            raise ValueError(f"This model has no module called {target!r}. {have}")
        not_linear = [n for n in hits if not isinstance(modules[n], nn.Linear)]
        if not_linear:
            raise ValueError(f"{target!r} is {_describe(modules[not_linear[0]])}. LoRA adapts Linear layers (a matrix W "
                             f"gets the update B A). {have}")
        chosen += [n for n in hits if n not in chosen]
    return [n for n in modules if n in chosen]  # model order


def add_lora_layers(model: nn.Module, target_modules: str | Iterable[str], r: int, alpha: float,
                    dropout: float = 0.0) -> nn.Module:
    """LoRA from scratch on a whole model: freeze every weight, then swap each target Linear for a LoRALinear
    (in place; returns the model). PEFT's `get_peft_model` does the same with its own layer class."""
    check_rank_alpha(r, alpha)
    check_dropout(dropout)
    names = resolve_targets(model, target_modules)
    _check_rank_fits_modules(model, names, r)  # before any layer is swapped
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, LoRALinear(getattr(parent, child), r, alpha, dropout))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The LoRALinear layers of a model, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


# ----------------------------------------------------------------------------------------------------------
# PEFT, with its confusing errors said plainly
# ----------------------------------------------------------------------------------------------------------

def lora_config(model: nn.Module, r: int, lora_alpha: float, target_modules: str | Iterable[str],
                lora_dropout: float = 0.0, **kwargs):
    """PEFT's `LoraConfig`, after checking r, alpha, dropout and every target name against `model`."""
    from peft import LoraConfig
    check_rank_alpha(r, lora_alpha)
    check_dropout(lora_dropout)
    _check_rank_fits_modules(model, resolve_targets(model, target_modules), r)
    if not isinstance(target_modules, str):
        target_modules = list(target_modules)
    return LoraConfig(r=r, lora_alpha=lora_alpha, target_modules=target_modules, lora_dropout=lora_dropout, **kwargs)


def _plain_peft_error(err: Exception, model: nn.Module) -> str | None:
    """A sentence for a PEFT error that confuses students, or None to let the original through."""
    text = str(err)
    linear = modules_by_kind(model, nn.Linear)
    have = f"The Linear layers of this model are: {', '.join(linear)}."
    if "not found in the base model" in text:
        return (f"PEFT found none of the target modules in this model (a single string is a pattern that must "
                f"match a module's whole name; a list of names is simpler). {have}")
    if (m := re.match(r"Target module (\w+)", text)) and "is not supported" in text:
        return (f"PEFT can't put LoRA on a {m.group(1)}: target modules must be Linear layers (or embeddings). "
                f"Name the Linear layers inside it instead. {have}")
    if "`r` should be a positive integer" in text or "must be tuple of ints" in text:
        return "The rank r must be a whole number of at least 1, such as 8 or 16."
    if "dropout probability" in text:
        return "lora_dropout must be a probability in [0, 1), for example 0.05."
    return None


def get_lora_model(model: nn.Module, config):
    """`peft.get_peft_model(model, config)` with checks first and PEFT's confusing errors re-said plainly.

    A model on the meta device keeps its adapters on the meta device too (`low_cpu_mem_usage=True`).
    """
    from peft import get_peft_model
    check_rank_alpha(config.r, config.lora_alpha)
    check_dropout(config.lora_dropout)
    targets = config.target_modules
    if isinstance(targets, str):  # "all-linear", or a pattern that must match a module's whole name
        if targets.lower() == ALL_LINEAR or targets in modules_by_kind(model, nn.Linear):
            _check_rank_fits_modules(model, resolve_targets(model, targets), config.r)
    elif targets is not None:  # PEFT silently skips a misspelt name when another one matches, and takes any rank
        _check_rank_fits_modules(model, resolve_targets(model, sorted(targets)), config.r)
    on_meta = any(p.is_meta for p in model.parameters())
    try:
        return get_peft_model(model, config, low_cpu_mem_usage=on_meta)
    except (ValueError, TypeError) as err:
        plain = _plain_peft_error(err, model)
        if plain is None:
            raise
        raise ValueError(plain) from None


def weights_bytes_on_disk(model_id: str) -> int | None:
    """Bytes of a model's weight files (*.safetensors, else *.bin): a local folder, or a Hub model already in the
    local cache (nothing is downloaded). None when the files can't be found."""
    folder = Path(model_id)
    if not folder.is_dir():
        try:
            from huggingface_hub import snapshot_download
            folder = Path(snapshot_download(model_id, local_files_only=True,
                                            allow_patterns=["*.safetensors", "*.bin", "*.json"]))
        except Exception:
            return None
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    return sum(f.stat().st_size for f in files) or None
