"""Build Llama models without memory (the meta device) and walk their modules."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

# What each named piece of a Llama does; the notebooks print these next to the modules.
MODULE_ROLES: dict[str, str] = {
    "embed_tokens": "token id -> vector (embedding table)",
    "q_proj": "attention: queries, one per head",
    "k_proj": "attention: keys, shared by a group of heads (GQA)",
    "v_proj": "attention: values, shared by a group of heads (GQA)",
    "o_proj": "attention: mixes the heads back into the hidden size",
    "gate_proj": "MLP: the gate, passed through SiLU",
    "up_proj": "MLP: the value that the gate scales",
    "down_proj": "MLP: back down to the hidden size",
    "input_layernorm": "RMSNorm before attention",
    "post_attention_layernorm": "RMSNorm before the MLP",
    "norm": "final RMSNorm after the last layer",
    "rotary_emb": "rotary position embeddings (no weights)",
    "lm_head": "vector -> a score for every token in the vocabulary",
}


def empty_model(config: LlamaConfig) -> LlamaForCausalLM:
    """A `LlamaForCausalLM` on the meta device: real shapes, no memory, built in well under a second."""
    with torch.device("meta"):
        return LlamaForCausalLM(config)


def random_model(config: LlamaConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    """A real model with random weights (fixed seed), for forward passes on the CPU."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(dtype).eval()


def num_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of a model, each shared tensor counted once (tied embeddings)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def module_kind(name: str) -> str:
    """The last part of a module's dotted name: `model.layers.3.self_attn.q_proj` -> `q_proj`."""
    return name.rsplit(".", 1)[-1]


def modules_by_kind(model: nn.Module, module_type: type = nn.Module) -> dict[str, list[str]]:
    """Leaf modules of `model` grouped by kind, in order: {"q_proj": ["model.layers.0.self_attn.q_proj", ...]}."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name, module in model.named_modules():
        if name and not list(module.children()) and isinstance(module, module_type):
            groups[module_kind(name)].append(name)
    return dict(groups)


def layer_table(model: LlamaForCausalLM, layer: int = 0) -> list[dict]:
    """One row per module with weights in one decoder layer: name, role, weight shape, parameters."""
    rows = []
    for name, module in model.model.layers[layer].named_modules():
        weight = getattr(module, "weight", None)
        if name and isinstance(weight, torch.Tensor):
            rows.append({
                "module": name,
                "role": MODULE_ROLES.get(module_kind(name), ""),
                "weight shape": tuple(weight.shape),
                "params": weight.numel() + (module.bias.numel() if getattr(module, "bias", None) is not None else 0),
            })
    return rows


def size_summary(config: LlamaConfig) -> dict:
    """The config's architecture numbers that the notebooks compare across sizes."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {
        "layers": config.num_hidden_layers,
        "hidden size": config.hidden_size,
        "attention heads": config.num_attention_heads,
        "key/value heads": config.num_key_value_heads,
        "heads per KV group": config.num_attention_heads // config.num_key_value_heads,
        "head dim": head_dim,
        "MLP size": config.intermediate_size,
        "vocabulary": config.vocab_size,
        "tied embeddings": bool(config.tie_word_embeddings),
        "context length": config.max_position_embeddings,
    }


def trace_shapes(model: nn.Module, *args, kinds: set[str] | None = None, **kwargs) -> list[tuple[str, tuple]]:
    """Run `model(*args, **kwargs)` and return (module name, output shape) for every module, in call order."""
    trace: list[tuple[str, tuple]] = []
    hooks = []
    for name, module in model.named_modules():
        if name and (kinds is None or module_kind(name) in kinds):
            def hook(_mod, _inp, out, name=name):
                out = out[0] if isinstance(out, tuple) else out
                if isinstance(out, torch.Tensor):
                    trace.append((name, tuple(out.shape)))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(*args, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return trace
