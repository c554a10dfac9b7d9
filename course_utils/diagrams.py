"""Pictures that explain before the code, drawn with matplotlib from a model's numbers: the Llama stack, one
decoder layer with LoRA's target modules, grouped-query attention's head groups, LoRA's data flow and its
matrices to scale, and QLoRA as a whole. (Charts of measured or estimated numbers are in `plots`.)"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from transformers import LlamaConfig

from course_utils.architecture import size_summary
from course_utils.lora import check_rank_alpha

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
    for y_from, y_to, dx in ((0.3, 3.7, 0.35), (3.7, 7.3, 0.55)):  # residual (skip) connections
        ax.plot([xr + 2.3, xr + 2.3 + dx, xr + 2.3 + dx], [y_from, y_from, y_to], color="#2b8cbe", lw=1.2)
        _arrow(ax, xr + 2.3 + dx, y_to, xr + 2.3, y_to, color="#2b8cbe")
    ax.text(xr + 3.2, 3.7, "residual\nconnections", color="#2b8cbe", fontsize=8, ha="center", rotation=90)
    ax.plot([x + 1.8, xr - 2.3], [4.0, 4.25], ls=":", color="#999999")
    ax.set_title(f"{title}: {s['layers']} decoder layers, hidden size {d:,}, vocabulary {v:,}", fontsize=11)
    return fig


def draw_lora_to_scale(in_features: int, out_features: int, r: int, name: str = "W", ax=None):
    """The frozen W (out x in) beside B (out x r) and A (r x in), every side drawn to the same scale.

    B and A sit as in a matrix product: B to the left of the (dashed) out x in area that B A would fill, A above it.
    The patches carry labels "W", "B", "A" and "B A" so tests can measure them.
    """
    check_rank_alpha(r, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.6))
    unit = 1.0 / max(in_features, out_features)  # one row or column, in drawing units
    w, h, thin = in_features * unit, out_features * unit, r * unit
    gap, pad = 0.3, 0.03
    xb = w + gap                  # B's left edge
    xp = xb + thin + pad          # the product area's left edge
    ya = h + pad                  # A's bottom edge
    orange = "#e6550d"
    ax.add_patch(Rectangle((0, 0), w, h, fc="#9ecae1", ec="#333333", lw=0.8, label="W"))
    ax.add_patch(Rectangle((xb, 0), thin, h, fc=orange, ec=orange, lw=0.6, label="B"))
    ax.add_patch(Rectangle((xp, ya), w, thin, fc=orange, ec=orange, lw=0.6, label="A"))
    ax.add_patch(Rectangle((xp, 0), w, h, fc="none", ec="#999999", lw=1, ls="--", label="B A"))
    ax.text(w / 2, h / 2, f"{name}  (frozen)\n{out_features:,} x {in_features:,}\n= {in_features * out_features:,} numbers",
            ha="center", va="center", fontsize=10)
    ax.text(w + gap / 2, h / 2, "+", ha="center", va="center", fontsize=18)
    ax.text(xb + thin / 2, -0.03, f"B\n{out_features:,} x {r}", ha="center", va="top", fontsize=9, color=orange)
    ax.text(xp + w / 2, ya + thin + 0.02, f"A   {r} x {in_features:,}", ha="center", va="bottom", fontsize=9, color=orange)
    trainable = r * (in_features + out_features)
    ax.text(xp + w / 2, h / 2, f"B A has the shape of {name},\nbut only B and A are stored and trained:\n"
            f"r (in + out) = {trainable:,} numbers\n= {trainable / (in_features * out_features):.2%} of {name}",
            ha="center", va="center", fontsize=9, color="#a63603")
    ax.set_xlim(-0.02, xp + w + 0.02)
    ax.set_ylim(-0.2, ya + thin + 0.12)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"W x + (alpha / r) B A x, drawn to scale: rank r = {r}", fontsize=11)
    return ax


def draw_lora_data_flow(in_features: int, out_features: int, r: int, ax=None):
    """How x flows through a LoRA layer: through the frozen W (top) and through A then B (bottom), summed into h.

    Every box is sized by its shape, on one scale: W is in wide and out tall, A is in wide and r tall, B is r wide
    and out tall, and each vector (x, W x, A x, B A x, h) is a thin column as tall as its length. A side thinner
    than a visible line is drawn at that line's width (its label says the real shape). The patches carry the labels
    "x", "W", "Wx", "A", "Ax", "B", "BAx" and "h", so tests can measure them.
    """
    check_rank_alpha(r, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 5.2))
    unit = 2.0 / max(in_features, out_features)  # the largest side is 2 drawing units
    thin = 0.05                                   # the width of a vector, and the least side drawn

    def side(n):
        return max(n * unit, thin)

    blue, orange, grey = "#9ecae1", "#fd8d3c", "#dddddd"
    y_top, y_bot, gap = 1.35, -1.35, 0.55
    boxes = {}

    def box(label, x0, y_mid, w, h, color, text=None, where="inside"):
        ax.add_patch(Rectangle((x0, y_mid - h / 2), w, h, fc=color, ec="#333333", lw=0.8, label=label))
        boxes[label] = (x0, y_mid, w, h)
        if text is not None:
            if where == "inside":
                ax.text(x0 + w / 2, y_mid, text, ha="center", va="center", fontsize=11)
            elif where == "left":
                ax.text(x0 - 0.08, y_mid, text, ha="right", va="center", fontsize=11)
            elif where == "above":
                ax.text(x0 + w / 2, y_mid + h / 2 + 0.06, text, ha="center", va="bottom", fontsize=10)
            else:
                ax.text(x0 + w / 2, y_mid - h / 2 - 0.06, text, ha="center", va="top", fontsize=10)
        return x0 + w

    def link(label_from, label_to):
        x0, y0, w0, _ = boxes[label_from]
        x1, y1, _, _ = boxes[label_to]
        _arrow(ax, x0 + w0 + 0.02, y0, x1 - 0.02, y1)

    right = box("x", 0, 0, thin, side(in_features), grey, f"x\n{in_features:,}", "left")
    # top: the frozen base
    end_w = box("W", right + gap, y_top, side(in_features), side(out_features), blue,
                f"W (frozen)\n{out_features:,} x {in_features:,}")
    end_wx = box("Wx", end_w + gap, y_top, thin, side(out_features), blue, f"W x\n{out_features:,}", "above")
    # bottom: the adapter, A then B
    end_a = box("A", right + gap, y_bot, side(in_features), side(r), orange,
                f"A (trained)  {r:,} x {in_features:,}", "above")
    end_ax = box("Ax", end_a + gap, y_bot, thin, side(r), orange, f"A x\n{r:,}", "below")
    end_b = box("B", end_ax + gap, y_bot, side(r), side(out_features), orange,
                f"B (trained)\n{out_features:,} x {r:,}", "above")
    end_bax = box("BAx", end_b + gap, y_bot, thin, side(out_features), orange, f"B A x\n{out_features:,}", "below")
    for a, b in (("x", "W"), ("x", "A"), ("W", "Wx"), ("A", "Ax"), ("Ax", "B"), ("B", "BAx")):
        link(a, b)
    # the sum
    x_sum = max(end_wx, end_bax) + gap + 0.8
    ax.add_patch(plt.Circle((x_sum, 0), 0.16, fc="white", ec="#333333", lw=1.2))
    ax.text(x_sum, 0, "+", ha="center", va="center", fontsize=16)
    _arrow(ax, end_wx + 0.02, y_top, x_sum - 0.1, 0.12)
    _arrow(ax, end_bax + 0.02, y_bot, x_sum - 0.1, -0.12)
    ax.text((end_bax + x_sum) / 2 + 0.12, y_bot / 2 - 0.1, "x alpha / r", ha="left", va="center",
            fontsize=11, color="#a63603")
    end_h = box("h", x_sum + 0.16 + gap, 0, thin, side(out_features), "#c7e9c0", f"h\n{out_features:,}", "below")
    _arrow(ax, x_sum + 0.17, 0, end_h - thin - 0.02, 0)
    ax.set_xlim(-0.9, end_h + 0.5)
    ax.set_ylim(y_bot - side(out_features) / 2 - 0.55, y_top + side(out_features) / 2 + 0.55)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(f"h = W x + (alpha / r) B A x, boxes to scale (r = {r}):\n"
                 "the frozen base path (top) and the adapter's detour (bottom)", fontsize=12)
    return ax



def draw_qlora(compute: str = "bf16", optimizer: str = "paged_adamw_8bit", ax=None):
    """QLoRA as a whole, for one adapted layer: the frozen base weight stored in 4-bit NF4 and dequantized to
    the 16-bit `compute` dtype for each matrix multiplication, the LoRA pair A and B beside it in fp32 (the only
    parameters that get gradients), and the optimizer's states in paged memory that spills to CPU RAM."""
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 5.6))
    ax.set_xlim(0, 13.2)
    ax.set_ylim(0, 6.4)
    ax.axis("off")
    ax.add_patch(Rectangle((0.1, 0.15), 10.9, 5.75, fill=False, ls="--", ec="#888888", lw=1.2))
    ax.text(0.3, 5.65, "GPU memory", fontsize=11, color="#555555", va="center")
    fs = 11
    _box(ax, 0.9, 4.1, 1.1, 0.7, "x", COLORS["io"], fs)
    # the frozen path: 4-bit storage, 16-bit compute
    _box(ax, 3.0, 4.85, 2.3, 0.9, "W in NF4\n4 bits, frozen", COLORS["attn"], fs)
    _box(ax, 5.7, 4.85, 2.3, 0.9, f"dequantize to\n{compute}, per block", "#d9ecf7", fs)
    _box(ax, 8.2, 4.85, 1.9, 0.9, f"W x\nin {compute}", COLORS["attn"], fs)
    # the adapter path: fp32, trainable
    _box(ax, 3.0, 3.3, 2.3, 0.9, "A  (r x in)\nfp32, trains", "#fd8d3c", fs)
    _box(ax, 5.7, 3.3, 2.3, 0.9, "B  (out x r)\nfp32, trains", "#fd8d3c", fs)
    _box(ax, 8.2, 3.3, 1.9, 0.9, "x alpha / r", "#fdd0a2", fs)
    ax.add_patch(plt.Circle((9.75, 4.1), 0.28, fc="white", ec="#444444"))
    ax.text(9.75, 4.1, "+", ha="center", va="center", fontsize=14)
    _box(ax, 10.45, 4.1, 0.75, 0.6, "h", COLORS["io"], fs)
    for (x0, y0), (x1, y1) in [((1.45, 4.25), (1.85, 4.8)), ((1.45, 3.95), (1.85, 3.35)), ((4.15, 4.85), (4.55, 4.85)),
                               ((6.85, 4.85), (7.25, 4.85)), ((4.15, 3.3), (4.55, 3.3)), ((6.85, 3.3), (7.25, 3.3)),
                               ((9.15, 4.7), (9.55, 4.3)), ((9.15, 3.5), (9.55, 3.9)), ((10.03, 4.1), (10.07, 4.1))]:
        _arrow(ax, x0, y0, x1, y1)
    # backward: gradients reach A and B only
    _arrow(ax, 9.6, 3.8, 5.9, 2.85, color="#d62728", ls="--", connectionstyle="arc3,rad=-0.3")
    ax.text(8.1, 2.2, "backward: gradients for A and B only\n(none for the 4-bit W)", color="#d62728",
            ha="center", va="center", fontsize=fs)
    # what stays in higher precision, and the optimizer's states
    _box(ax, 2.7, 1.0, 4.6, 1.0, "embeddings, norms, lm_head: frozen,\nfp32 after prepare_model_for_kbit_training",
         COLORS["embed"], 10)
    _box(ax, 8.6, 1.0, 4.0, 1.0, f"optimizer states ({optimizer}):\nAdam's 2 moments of A and B",
         "#9e9ac8", 10)
    _box(ax, 12.3, 1.0, 1.6, 1.0, "CPU RAM", "#eeeeee", fs)
    _arrow(ax, 10.65, 1.0, 11.45, 1.0, style="<|-|>", ls="--")
    ax.text(12.3, 2.05, "paged out when\nthe GPU runs short", ha="center", va="center", fontsize=10)
    ax.set_title(f"QLoRA: a 4-bit base, {compute} compute, fp32 adapters, a paged optimizer", fontsize=13)
    return ax



def draw_gqa_groups(config: LlamaConfig, title: str = "Llama", ax=None):
    """Grouped-query attention drawn from the config: one square per query head (top), coloured by the key/value
    head it shares (bottom, as wide as its group). The patches carry the labels "q0", "q1", ... and "kv0", ..."""
    s = size_summary(config)
    n_q, n_kv, group = s["attention heads"], s["key/value heads"], s["heads per KV group"]
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 2.4))
    cmap = plt.get_cmap("tab10" if n_kv <= 10 else "tab20" if n_kv <= 20 else "hsv")
    colors = [cmap(i if n_kv <= 20 else i / n_kv) for i in range(n_kv)]
    for i in range(n_q):
        ax.add_patch(Rectangle((i + 0.05, 1.6), 0.9, 0.9, fc=colors[i // group], ec="#333333", lw=0.5, label=f"q{i}"))
        ax.plot([i + 0.5, i + 0.5], [1.6, 0.7], color=colors[i // group], lw=0.8)
        if n_q <= 40:
            ax.text(i + 0.5, 2.05, str(i), ha="center", va="center", fontsize=7 if n_q > 16 else 9)
    for j in range(n_kv):
        ax.add_patch(Rectangle((j * group + 0.05, 0), group - 0.1, 0.7, fc=colors[j], ec="#333333", lw=0.8,
                               label=f"kv{j}"))
        ax.text(j * group + group / 2, 0.35, f"KV {j}" if group > 1 else str(j), ha="center", va="center", fontsize=8)
    ax.text(-0.4, 2.05, f"{n_q} query heads", ha="right", va="center", fontsize=9)
    ax.text(-0.4, 0.35, f"{n_kv} key/value heads", ha="right", va="center", fontsize=9)
    ax.set_xlim(-0.2 * n_q - 2, n_q + 0.2)
    ax.set_ylim(-0.1, 2.6)
    ax.axis("off")
    ax.set_title(f"{title}: {n_q} query heads share {n_kv} key/value heads, {group} query heads per KV head",
                 fontsize=10)
    return ax


def draw_decoder_layer_targets(config: LlamaConfig, title: str = "Llama", ax=None):
    """One LlamaDecoderLayer left to right: its two RMSNorms, the seven Linear kinds with their (in -> out) sizes
    and the two residual adds; each Linear is coloured by whether PEFT's default (q_proj, v_proj) or only
    "all-linear" makes it a LoRA target. Patches are labelled by module name ("q_proj", "input_layernorm", ...)
    and "residual add"."""
    from course_utils.lora import TARGET_SETS
    from course_utils.params import LINEAR_KINDS, linear_shapes
    default, shapes = TARGET_SETS["q, v (PEFT's default)"], linear_shapes(config)
    fill = {"default": "#f16913", "all-linear": "#fdd0a2", "norm": COLORS["norm"], "op": COLORS["attn"],
            "io": COLORS["io"]}
    if ax is None:
        _, ax = plt.subplots(figsize=(14, 4))
    at = {"x": (0.5, 0), "input_layernorm": (2.25, 0), "q_proj": (4.05, 1.05), "k_proj": (4.05, 0),
          "v_proj": (4.05, -1.05), "attention": (5.85, 0), "o_proj": (7.65, 0), "add 1": (9, 0),
          "post_attention_layernorm": (10.45, 0), "gate_proj": (12.25, 0.7), "up_proj": (12.25, -0.7),
          "SwiGLU": (14.05, 0), "down_proj": (15.85, 0), "add 2": (17.2, 0), "out": (18.55, 0)}
    text = {"x": "hidden x", "out": "hidden out", "attention": "attention:\nRoPE on q, k,\nsoftmax, x v",
            "input_layernorm": "input_\nlayernorm\n(RMSNorm)",
            "post_attention_layernorm": "post_attention_\nlayernorm\n(RMSNorm)",
            "SwiGLU": "SwiGLU:\nSiLU(gate) * up"}
    for name, (x, y) in at.items():
        if name.startswith("add"):
            ax.add_patch(plt.Circle((x, y), 0.22, fc="white", ec="#2b8cbe", lw=1.5, label="residual add"))
            ax.text(x, y, "+", ha="center", va="center", fontsize=14, color="#2b8cbe")
            continue
        kind = ("default" if name in default else "all-linear") if name in LINEAR_KINDS else \
            "norm" if "layernorm" in name else "io" if name in ("x", "out") else "op"
        label = f"{name}\n{shapes[name][0]:,} -> {shapes[name][1]:,}" if name in LINEAR_KINDS else text.get(name, name)
        ax.add_patch(FancyBboxPatch((x - 0.75, y - 0.38), 1.5, 0.76, boxstyle="round,pad=0.02,rounding_size=0.08",
                                    fc=fill[kind], ec="#444444", lw=1, label=name))
        ax.text(x, y, label, ha="center", va="center", fontsize=7)
    edge = {name: 0.22 if name.startswith("add") else 0.77 for name in at}
    flow = [("x", "input_layernorm"), *[("input_layernorm", k) for k in ("q_proj", "k_proj", "v_proj")],
            *[(k, "attention") for k in ("q_proj", "k_proj", "v_proj")], ("attention", "o_proj"), ("o_proj", "add 1"),
            ("add 1", "post_attention_layernorm"), ("post_attention_layernorm", "gate_proj"),
            ("post_attention_layernorm", "up_proj"), ("gate_proj", "SwiGLU"), ("up_proj", "SwiGLU"),
            ("SwiGLU", "down_proj"), ("down_proj", "add 2"), ("add 2", "out")]
    for a, b in flow:
        _arrow(ax, at[a][0] + edge[a], at[a][1], at[b][0] - edge[b], at[b][1])
    for x_from, y_from, add, words in ((0.5, 0.4, "add 1", "residual: x + self_attn(...)"),
                                       (9.45, 0, "add 2", "residual: h + mlp(...)")):
        ax.plot([x_from, x_from, at[add][0]], [y_from, 1.75, 1.75], color="#2b8cbe", lw=1.2)
        _arrow(ax, at[add][0], 1.75, at[add][0], 0.22, color="#2b8cbe")
        ax.text((x_from + at[add][0]) / 2, 1.8, words, color="#2b8cbe", fontsize=8, ha="center", va="bottom")
    swatches = [Rectangle((0, 0), 1, 1, fc=fill[k], ec="#444444") for k in ("default", "all-linear", "norm")]
    ax.legend(swatches, [f"LoRA target by PEFT's default: {', '.join(default)}",
                         'added by target_modules="all-linear"', "RMSNorm: no Linear, no LoRA"],
              loc="lower center", ncol=3, fontsize=8.5, frameon=False, bbox_to_anchor=(0.5, -0.06))
    ax.set_xlim(-0.3, 19.4)
    ax.set_ylim(-1.9, 2.2)
    ax.axis("off")
    ax.set_title(f"{title}: one LlamaDecoderLayer; its seven Linear layers are what LoRA can target", fontsize=11)
    return ax


def draw_adapter_to_use(ax=None):
    """The ways out of the notebook for a trained adapter (notebook 09): kept apart and loaded beside others on one
    base (PEFT, or a serving engine's multi-LoRA), or merged into a 16-bit copy of the base and saved as
    safetensors (what serving engines and converters load), then converted to GGUF (llama.cpp, Ollama)."""
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 4.6))
    ax.set_xlim(0, 12.4)
    ax.set_ylim(0, 5)
    ax.axis("off")
    fs = 10
    _box(ax, 1.3, 2.5, 2.2, 1.1, "trained adapter\nlora_A, lora_B\n(a few MB)", "#fd8d3c", fs)
    _box(ax, 4.7, 3.9, 2.9, 1.1, "one base + many adapters\nload_adapter, set_adapter,\nadapter_names= per row",
         COLORS["attn"], fs)
    _box(ax, 4.7, 1.1, 2.9, 1.1, "merge into the base\nW + (alpha / r) B A,\ncast to 16-bit", COLORS["mlp"], fs)
    _box(ax, 8.2, 3.9, 2.6, 1.1, "serving engines with\nmulti-LoRA (vLLM, S-LoRA):\none copy of the base", "#d9ecf7",
         fs)
    _box(ax, 8.2, 1.1, 2.6, 1.1, "safetensors folder\n+ tokenizer: transformers,\nvLLM, converters", "#d9ecf7", fs)
    _box(ax, 11.2, 1.1, 2.0, 1.1, "GGUF (F16, Q8_0):\nllama.cpp, Ollama", COLORS["norm"], fs)
    for (x0, y0), (x1, y1) in [((2.4, 2.8), (3.25, 3.7)), ((2.4, 2.2), (3.25, 1.3)), ((6.15, 3.9), (6.9, 3.9)),
                               ((6.15, 1.1), (6.9, 1.1)), ((9.5, 1.1), (10.2, 1.1))]:
        _arrow(ax, x0, y0, x1, y1)
    ax.set_title("From a trained adapter to a served model", fontsize=13)
    return ax
