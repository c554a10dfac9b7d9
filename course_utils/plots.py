"""Charts of numbers the notebooks compute or measure (memory by part, the loss mask, the live loss curve), drawn
with matplotlib; `sharp_png` draws any figure at twice its resolution. (Explanatory drawings are in `diagrams`.)"""

from __future__ import annotations

import io
import math
import time

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from course_utils.data import show_tokens
from course_utils.distributed import GATHERED_PART
from course_utils.memory import GPUS, TrainingMemory

PART_COLORS = {"weights": "#6baed6", "LoRA adapter": "#fd8d3c", "gradients": "#fdd0a2",
               "optimizer states": "#9e9ac8", "activations": "#a1d99b", "16-bit copies (autocast)": "#e7969c",
               GATHERED_PART: "#bdbdbd"}  # what FSDP all-gathers for compute (course_utils.distributed)


def draw_memory_bars(estimates: dict[str, TrainingMemory], ax=None, gpus: dict[str, float] | None = None,
                     title: str = "Training memory, by part", log: bool = False):
    """One stacked bar per estimate (weights, adapter, gradients, optimizer states, activations), in GB,
    with the GPUs' memory drawn as dashed lines, up to the first GPU the tallest bar fits on."""
    gpus = GPUS if gpus is None else gpus
    if ax is None:
        fig, ax = plt.subplots(figsize=(9.5, 5))
    labels = list(estimates)
    bottoms = [0.0] * len(labels)
    small = not log and max(e.total for e in estimates.values()) < 1e9  # a small model's run: in MB, no GPU lines
    scale, unit = (1e6, "MB") if small else (1e9, "GB")
    for part, color in PART_COLORS.items():
        heights = [estimates[k].parts().get(part, 0) / scale for k in labels]
        if not any(heights):  # a part none of the estimates has (the autocast copies of full fine-tuning)
            continue
        ax.bar(labels, heights, bottom=bottoms, color=color, edgecolor="#555555", lw=0.5, label=part,
               width=0.6 if len(labels) > 1 else 0.4)
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    for total, x in zip(bottoms, range(len(labels))):
        ax.text(x, total, f"{total:,.1f} {unit}", ha="center", va="bottom", fontsize=9)
    if small:
        least = min(gpus, key=gpus.get)
        top = max(bottoms)
        ax.text(0.02, 0.95, f"The smallest GPU here, the {least}, has {gpus[least]:g} GB: "
                f"{gpus[least] * 1e9 / (top * scale):,.0f}x this.", transform=ax.transAxes, fontsize=10,
                va="top", color="#cb181d")
    else:
        sizes: dict[float, list[str]] = {}
        for name, gb in gpus.items():
            sizes.setdefault(gb, []).append(name)
        tallest = max(bottoms)
        # Show the GPUs up to the first one the tallest bar fits on, so that small bars stay readable.
        top = tallest if log else max(tallest, min([gb for gb in sizes if gb >= tallest], default=max(sizes)))
        shown = sorted(gb for gb in sizes if gb <= top)
        for gb in shown:  # the GPUs as dashed lines
            ax.axhline(gb, color="#cb181d", ls="--", lw=0.9)
        for gb, label in gpu_labels({gb: sizes[gb] for gb in shown}, top, log):  # named right of the axes
            ax.text(1.01, gb, label, color="#cb181d", fontsize=8, va="center", transform=ax.get_yaxis_transform())
    ax.set_xlim(-0.7, len(labels) - 0.3)
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, top * 1.12)
    ax.set_ylabel(f"memory ({unit} = 10^{9 if unit == 'GB' else 6} bytes)")
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

    def __init__(self, total_steps: int, title: str = "Training loss", every_s: float = 5.0, smooth: float = 0.8):
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


def draw_field_curves(curve: list[dict], fields, threshold: float, title: str, ax=None):
    """Per-field accuracy against optimizer steps, from rows {"step": n, "field_accuracy": {field: share}}, with
    the threshold at which a field counts as learned dotted."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    for field in fields:
        ax.plot([row["step"] for row in curve], [row["field_accuracy"][field] for row in curve],
                marker="o", label=f"'{field}'")
    ax.axhline(threshold, ls=":", color="gray")
    ax.set_xlabel("optimizer steps", fontsize=11)
    ax.set_ylabel("right on the probe", fontsize=11)
    ax.set_title(title, fontsize=12)
    ax.legend(fontsize=10, ncol=5, loc="lower right")
    return ax
