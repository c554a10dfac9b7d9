"""Counting a Llama's parameters from its config alone, in closed form (no model is built).

Every weight of a `LlamaForCausalLM` sits in one of these places (V = vocabulary, d = hidden size,
f = MLP size, h = attention heads, k = key/value heads, e = head dim, L = layers):

    embed_tokens              V x d
    per decoder layer:
      q_proj                  d x (h e)      (+ h e  bias when config.attention_bias)
      k_proj, v_proj          d x (k e)      (+ k e  bias each)
      o_proj                  (h e) x d      (+ d    bias)
      gate_proj, up_proj      d x f          (+ f    bias each, when config.mlp_bias)
      down_proj               f x d          (+ d    bias)
      input_layernorm, post_attention_layernorm   d each (RMSNorm has a scale, no bias)
    norm                      d              (the final RMSNorm)
    lm_head                   d x V          (0 new parameters when tied to embed_tokens)

`count_params(config)` is the sum; `param_breakdown(config)` keeps the pieces apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import LlamaConfig

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
NORMS = ("input_layernorm", "post_attention_layernorm")
LINEAR_KINDS = ATTENTION + MLP  # the Linear layers inside a decoder layer (what LoRA and NF4 act on)


def head_dim(config: LlamaConfig) -> int:
    """The width of one attention head: `config.head_dim` when given, else hidden_size / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def linear_shapes(config: LlamaConfig) -> dict[str, tuple[int, int]]:
    """(in_features, out_features) of every Linear in one decoder layer, by kind."""
    d, f, e = config.hidden_size, config.intermediate_size, head_dim(config)
    q, kv = config.num_attention_heads * e, config.num_key_value_heads * e
    return {
        "q_proj": (d, q), "k_proj": (d, kv), "v_proj": (d, kv), "o_proj": (q, d),
        "gate_proj": (d, f), "up_proj": (d, f), "down_proj": (f, d),
    }


def has_bias(config: LlamaConfig, kind: str) -> bool:
    """Whether a Linear of this kind carries a bias (Llama 3.1: never)."""
    flag = "attention_bias" if kind in ATTENTION else "mlp_bias"
    return bool(getattr(config, flag, False))


def linear_params(in_features: int, out_features: int, bias: bool = False) -> int:
    """in x out weights, plus out biases when there is a bias."""
    return in_features * out_features + (out_features if bias else 0)


@dataclass
class ParamBreakdown:
    """A model's parameters split by component; `per_layer` holds one decoder layer, module by module."""

    per_layer: dict[str, int]
    num_layers: int
    embeddings: int
    final_norm: int
    lm_head: int  # 0 when tied to the embeddings (the same tensor is used twice, counted once)
    tied: bool
    components: dict[str, int] = field(init=False)

    def __post_init__(self):
        layers = self.num_layers
        self.components = {
            "embeddings": self.embeddings,
            "attention": layers * sum(self.per_layer[k] for k in ATTENTION),
            "mlp": layers * sum(self.per_layer[k] for k in MLP),
            "norms": layers * sum(self.per_layer[k] for k in NORMS) + self.final_norm,
            "lm_head": self.lm_head,
        }

    @property
    def layer(self) -> int:
        """Parameters of one decoder layer."""
        return sum(self.per_layer.values())

    @property
    def total(self) -> int:
        return sum(self.components.values())


def param_breakdown(config: LlamaConfig) -> ParamBreakdown:
    """The closed-form count of a Llama-family config, split by component, per layer and in total."""
    _check(config)
    per_layer = {kind: linear_params(i, o, has_bias(config, kind)) for kind, (i, o) in linear_shapes(config).items()}
    per_layer.update({norm: config.hidden_size for norm in NORMS})
    tied = bool(getattr(config, "tie_word_embeddings", False))
    embeddings = config.vocab_size * config.hidden_size
    return ParamBreakdown(per_layer=per_layer, num_layers=config.num_hidden_layers, embeddings=embeddings,
                          final_norm=config.hidden_size, lm_head=0 if tied else embeddings, tied=tied)


def count_params(config: LlamaConfig) -> int:
    """Every parameter of a `LlamaForCausalLM` built from `config`, from the config alone."""
    return param_breakdown(config).total


def _check(config) -> None:
    needed = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads")
    missing = [n for n in needed if getattr(config, n, None) is None]
    if missing:
        raise ValueError(f"This config lacks {', '.join(missing)}; pass a Llama-family config, "
                         "e.g. course_utils.configs.load_config('llama-3.1-8b').")
