"""Pictures the notebooks draw with matplotlib (the drawing code is boilerplate; the numbers come from configs)."""

from __future__ import annotations

import io
import math
import time

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle
from transformers import LlamaConfig

from course_utils.architecture import size_summary
from course_utils.data import show_tokens
from course_utils.lora import check_rank_alpha
from course_utils.memory import GPUS, TrainingMemory

PART_COLORS = {"weights": "#6baed6", "LoRA adapter": "#fd8d3c", "gradients": "#fdd0a2",
               "optimizer states": "#9e9ac8", "activations": "#a1d99b", "16-bit copies (autocast)": "#e7969c"}
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


def draw_memory_bars(estimates: dict[str, TrainingMemory], ax=None, gpus: dict[str, float] | None = None,
                     title: str = "Training memory, by part", log: bool = False):
    """One stacked bar per estimate (weights, adapter, gradients, optimizer states, activations), in GB,
    with the GPUs' memory drawn as dashed lines, up to the first GPU the tallest bar fits on."""
    gpus = GPUS if gpus is None else gpus
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.5, 5))
    labels = list(estimates)
    bottoms = [0.0] * len(labels)
    for part, color in PART_COLORS.items():
        heights = [estimates[k].parts().get(part, 0) / 1e9 for k in labels]
        if not any(heights):  # a part none of the estimates has (the autocast copies of full fine-tuning)
            continue
        ax.bar(labels, heights, bottom=bottoms, color=color, edgecolor="#555555", lw=0.5, label=part,
               width=0.6 if len(labels) > 1 else 0.4)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for total, x in zip(bottoms, range(len(labels))):
        ax.text(x, total, f"{total:,.1f} GB", ha="center", va="bottom", fontsize=9)
    sizes: dict[float, list[str]] = {}
    for name, gb in gpus.items():
        sizes.setdefault(gb, []).append(name)
    tallest = max(bottoms)
    # Show the GPUs up to the first one the tallest bar fits on, so that small bars stay readable.
    top = tallest if log else max(tallest, min([gb for gb in sizes if gb >= tallest], default=max(sizes)))
    shown = sorted(gb for gb in sizes if gb <= top)
    for gb in shown:  # the GPUs as dashed lines
        ax.axhline(gb, color="#cb181d", ls="--", lw=0.9)
    for gb, label in gpu_labels({gb: sizes[gb] for gb in shown}, top, log):  # named to the right of the axes
        ax.text(1.01, gb, label, color="#cb181d", fontsize=8, va="center", transform=ax.get_yaxis_transform())
    ax.set_xlim(-0.7, len(labels) - 0.3)
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, top * 1.12)
    ax.set_ylabel("memory (GB = 10^9 bytes)")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16 if len(labels) > 1 and any("\n" in x for x in labels)
                                                   else -0.09), ncol=len(PART_COLORS), fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def gpu_labels(sizes: dict[float, list[str]], top: float, log: bool = False,
               min_gap: float = 0.05) -> list[tuple[float, str]]:
    """(height, text) labels for GPU lines: lines closer than `min_gap` of the axis share one label, so that
    the small GPUs under a 405B bar read "16-80 GB: T4 ... H100" instead of a pile of overlapping names."""
    place = (lambda gb: math.log10(gb)) if log else (lambda gb: gb)
    span = (place(top) - place(min(sizes))) if log else top
    groups: list[list[float]] = []
    for gb in sorted(sizes):
        if groups and place(gb) - place(groups[-1][0]) < min_gap * max(span, 1e-9):
            groups[-1].append(gb)
        else:
            groups.append([gb])
    labels = []
    for group in groups:
        names = " / ".join(n for gb in group for n in sizes[gb])
        size = f"{group[0]:g} GB" if len(group) == 1 else f"{group[0]:g}-{group[-1]:g} GB"
        labels.append((group[-1] if len(group) > 1 else group[0], f"{size}: {names}"))
    return labels


def sharp_png(fig):
    """`fig` as an IPython Image drawn at twice its dpi and shown at its normal size: sharp on a projector."""
    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi * 2, bbox_inches="tight")
    return Image(data=buffer.getvalue(), retina=True)


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


def plot_loss_mask(tokenizer, example: dict, per_row: int = 14, ax=None):
    """The tokens of an encoded example in reading order: grey = prompt (no loss), orange = graded by the loss."""
    shown = show_tokens(tokenizer, example)
    rows = (len(shown) + per_row - 1) // per_row
    if ax is None:
        _, ax = plt.subplots(figsize=(per_row * 0.95, rows * 0.55 + 0.6))
    for i, (token, _, counted) in enumerate(shown):
        r, c = divmod(i, per_row)
        text = token.replace("Ġ", "␣").replace("Ċ", "\\n")
        ax.add_patch(FancyBboxPatch((c + 0.05, -r - 0.4), 0.9, 0.8, boxstyle="round,pad=0.02",
                                    color="tab:orange" if counted else "0.85"))
        ax.text(c + 0.5, -r, text, ha="center", va="center", fontsize=8, family="monospace")
    ax.set_xlim(0, per_row)
    ax.set_ylim(-rows + 0.4, 0.6)
    ax.axis("off")
    n_loss = sum(counted for *_, counted in shown)
    ax.set_title(f"{len(shown)} tokens; the loss grades the {n_loss} orange ones (the answer and EOS)", fontsize=10)
    return ax


class LivePlot:
    """A loss curve that redraws in place in a notebook (an IPython display handle), at most every `every_s`
    seconds; its last state stays in the notebook's output. Outside a notebook it only records the points.

    Readable from the back of a room: a log loss axis (a loss falling from 8 to 0.05 stays visible all the way
    down), a smoothed line without lag at the start (bias-corrected, as Adam corrects its averages), large text,
    and a picture drawn at twice the resolution.
    """

    def __init__(self, total_steps: int, title: str = "Training loss", every_s: float = 2.0, smooth: float = 0.8):
        self.total_steps, self.title, self.every_s, self.smooth = total_steps, title, every_s, smooth
        self.steps: list[int] = []
        self.losses: list[float] = []
        self._last_draw = 0.0
        self._fig = self._handle = None
        self._live = _in_notebook()

    def update(self, step: int, loss: float, force: bool = False) -> None:
        self.steps.append(step)
        self.losses.append(loss)
        if self._live and (force or time.perf_counter() - self._last_draw >= self.every_s):
            self.draw()

    def smoothed(self) -> list[float]:
        """Exponential moving average of the losses, divided by 1 - smooth^t so it starts at the first loss."""
        return bias_corrected_average(self.losses, self.smooth)

    def figure(self):
        if self._fig is None:
            self._fig, self._ax = plt.subplots(figsize=(8, 3.8))
            plt.close(self._fig)  # shown through the display handle only, never twice
        ax = self._ax
        ax.clear()
        ax.plot(self.steps, self.losses, color="tab:blue", alpha=0.3, lw=1.2, label="loss per step")
        if self.losses:
            ax.plot(self.steps, self.smoothed(), color="tab:blue", lw=3, label="smoothed")
            ax.set_title(f"{self.title}: step {self.steps[-1] + 1}/{self.total_steps}, "
                         f"loss {self.smoothed()[-1]:.3f}", fontsize=13)
            ax.set_yscale("log")
            low, high = min(self.losses), max(self.losses)
            ax.set_ylim(low / 1.3, high * 1.3)
        ax.set_xlim(0, max(self.total_steps, 1))
        ax.set_xlabel("optimizer step", fontsize=12)
        ax.set_ylabel("loss on the answers (log)", fontsize=12)
        ax.tick_params(labelsize=11)
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="upper right", fontsize=11)
        self._fig.tight_layout()
        return self._fig

    def draw(self) -> None:
        from IPython.display import display
        picture = sharp_png(self.figure())
        if self._handle is None:
            self._handle = display(picture, display_id=True)
        else:
            self._handle.update(picture)
        self._last_draw = time.perf_counter()

    def close(self) -> None:
        """Draw the final state."""
        if self._live and self.steps:
            self.draw()


def bias_corrected_average(values: list[float], beta: float) -> list[float]:
    """Exponential moving average with Adam's bias correction: avg_t / (1 - beta^t), so no lag towards zero
    (or towards the first value) at the start; a constant series stays that constant."""
    out, avg = [], 0.0
    for t, value in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * value
        out.append(avg / (1 - beta ** t))
    return out


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and type(shell).__name__ != "TerminalInteractiveShell"
