"""Pictures the notebooks draw with matplotlib (the drawing code is boilerplate; the numbers come from configs)."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from transformers import LlamaConfig

from course_utils.architecture import size_summary

COLORS = {"embed": "#f6d38b", "norm": "#c9e4ca", "attn": "#9ecae1", "mlp": "#fdae6b", "head": "#d4b9da", "io": "#eeeeee"}


def _box(ax, x, y, w, h, text, color, fontsize=9):
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                fc=color, ec="#444444", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=fontsize)


def _arrow(ax, x0, y0, x1, y1, style="-|>", color="#444444", **kw):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=10, color=color, lw=1, **kw))


def draw_llama_stack(config: LlamaConfig, title: str = "Llama", ax=None):
    """The model as a stack (left) and one decoder layer opened up (right), labelled with the config's sizes."""
    s = size_summary(config)
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 7.5))
    else:
        fig = ax.figure
    ax.set_xlim(0, 11)
    ax.set_ylim(-0.2, 10.4)
    ax.axis("off")
    d, v, f = s["hidden size"], s["vocabulary"], s["MLP size"]

    # Left: the whole stack, bottom to top.
    x = 2.2
    left = [
        (0.3, "token ids  (batch, seq)", "io"),
        (1.4, f"embed_tokens\n{v:,} x {d:,}", "embed"),
        (4.0, f"LlamaDecoderLayer  x {s['layers']}\n(one opened up on the right)", "attn"),
        (6.6, f"norm (RMSNorm)  {d:,}", "norm"),
        (7.7, f"lm_head\n{d:,} -> {v:,}" + ("  (tied to embed_tokens)" if s["tied embeddings"] else ""), "head"),
        (8.8, f"logits  (batch, seq, {v:,})", "io"),
    ]
    for i, (y, text, kind) in enumerate(left):
        h = 2.2 if kind == "attn" else 0.7
        _box(ax, x, y, 3.6, h, text, COLORS[kind])
        if i:
            prev_y, prev_kind = left[i - 1][0], left[i - 1][2]
            y0 = prev_y + (1.1 if prev_kind == "attn" else 0.35)
            _arrow(ax, x, y0, x, y - (1.1 if kind == "attn" else 0.35))
    for k in range(3):  # the repeated layers as a deck of cards
        ax.add_patch(FancyBboxPatch((x - 1.8 + 0.08 * (k + 1), 2.9 + 0.08 * (k + 1)), 3.6, 2.2,
                                    boxstyle="round,pad=0.02,rounding_size=0.08", fc="none", ec="#999999", lw=0.7))

    # Right: one decoder layer, bottom to top, with its two residual connections.
    xr = 7.6
    kv = s["key/value heads"] * s["head dim"]
    right = [
        (0.3, f"hidden  (batch, seq, {d:,})", "io"),
        (1.2, "input_layernorm (RMSNorm)", "norm"),
        (2.35, f"self_attn\nq_proj {d:,}->{s['attention heads'] * s['head dim']:,}  ({s['attention heads']} heads)\n"
               f"k_proj, v_proj {d:,}->{kv:,}  ({s['key/value heads']} KV heads, GQA)\nrotary embeddings on q, k;  o_proj -> {d:,}", "attn"),
        (3.7, "+  residual", "io"),
        (4.6, "post_attention_layernorm (RMSNorm)", "norm"),
        (5.95, f"mlp\ngate_proj, up_proj {d:,}->{f:,}\nSiLU(gate) * up\ndown_proj {f:,}->{d:,}", "mlp"),
        (7.3, "+  residual", "io"),
        (8.2, f"hidden  (batch, seq, {d:,})", "io"),
    ]
    heights = {"attn": 1.25, "mlp": 1.25}
    for i, (y, text, kind) in enumerate(right):
        h = heights.get(kind, 0.55)
        _box(ax, xr, y, 4.6, h, text, COLORS[kind], fontsize=8.5)
        if i:
            py, pk = right[i - 1][0], right[i - 1][2]
            _arrow(ax, xr, py + heights.get(pk, 0.55) / 2, xr, y - h / 2)
    for y_from, y_to, frac in ((0.3, 3.62, -0.10), (3.78, 7.3, -0.16)):  # residual (skip) connections
        ax.add_patch(FancyArrowPatch((xr + 2.3, y_from), (xr + 2.3, y_to), connectionstyle=f"bar,fraction={frac}",
                                     arrowstyle="-|>", mutation_scale=10, color="#2b8cbe", lw=1.2))
    ax.text(xr + 3.05, 5.3, "residual\nconnections", color="#2b8cbe", fontsize=8, ha="center", rotation=90)
    ax.plot([x + 1.8, xr - 2.3], [4.0, 4.25], ls=":", color="#999999")
    ax.set_title(f"{title}: {s['layers']} decoder layers, hidden size {d:,}, vocabulary {v:,}", fontsize=11)
    return fig
