"""Knobs to turn in class: ipywidgets calculators whose logic is plain Python (tested without a browser).

Works with ipywidgets 7.7.1 (Colab) and 8.x: only Dropdown, SelectMultiple, Checkbox, HTML, Output, HBox and
VBox are used, each observed through `observe(..., names="value")`.

- `MemoryCalculator` (notebook 02): model, method, precision, LoRA rank and targets, batch size, sequence length,
  gradient checkpointing and optimizer -> a stacked bar of the training memory against the GPUs, the verdict
  and a suggestion.
"""

from __future__ import annotations

import html

import matplotlib.pyplot as plt

from course_utils.configs import known_names, load_config
from course_utils.memory import GPUS, HEADROOM, METHODS, OPTIMIZERS, TrainingMemory, check_choice, training_memory
from course_utils.params import LINEAR_KINDS
from course_utils.plots import draw_memory_bars

METHOD_LABELS = {"full": "full fine-tuning, fp32", "full-mixed": "full fine-tuning, mixed precision",
                 "lora": "LoRA (16-bit base)", "qlora": "QLoRA (NF4 base)"}


class MemoryCalculator:
    """The training-memory calculator of notebook 02. `show()` displays it; `update()` recomputes.

    `estimate` (a TrainingMemory), `figure`, `verdict` and `suggestion` hold the current state, so a test can
    set a widget's value and check what was computed and drawn.
    """

    def __init__(self, model: str = "llama-3.1-8b", method: str = "qlora", precision: str = "bf16", rank: int = 16,
                 targets=("q_proj", "k_proj", "v_proj", "o_proj"), batch_size: int = 1, seq_len: int = 1024,
                 gradient_checkpointing: bool = True, optimizer: str = "adamw", gpu: str = "T4"):
        import ipywidgets as w

        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be a positive whole number such as 16, not {rank!r} ({type(rank).__name__}).")
        ranks = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, rank})  # any rank asked for joins the dropdown
        model = check_choice(model, tuple(known_names()), "model")  # in any case: "Llama-3.1-8B", "BF16", "t4"
        precision = check_choice(precision, ("bf16", "fp16"), "precision")
        gpu = check_choice(gpu, tuple(GPUS), "GPU")
        style = {"description_width": "130px"}
        self.widgets = {
            "model": w.Dropdown(options=[n for n in known_names()], value=model, description="model", style=style),
            "method": w.Dropdown(options=[(METHOD_LABELS[m], m) for m in METHODS], value=method,
                                 description="method", style=style),
            "precision": w.Dropdown(options=["bf16", "fp16"], value=precision, description="compute precision",
                                    style=style),
            "rank": w.Dropdown(options=ranks, value=rank, description="LoRA rank r", style=style),
            "targets": w.SelectMultiple(options=list(LINEAR_KINDS), value=tuple(targets), rows=7,
                                        description="LoRA targets", style=style),
            "batch_size": w.Dropdown(options=[1, 2, 4, 8, 16, 32, 64], value=batch_size, description="batch size",
                                     style=style),
            "seq_len": w.Dropdown(options=[128, 256, 512, 1024, 2048, 4096, 8192], value=seq_len,
                                  description="sequence length", style=style),
            "gradient_checkpointing": w.Checkbox(value=gradient_checkpointing, description="gradient checkpointing",
                                                 indent=False),
            "optimizer": w.Dropdown(options=list(OPTIMIZERS), value=optimizer, description="optimizer", style=style),
            "gpu": w.Dropdown(options=list(GPUS), value=gpu, description="suggest for GPU", style=style),
        }
        self.verdict_box = w.HTML()
        self.output = w.Output()
        self.estimate: TrainingMemory | None = None
        self.figure = None
        self.verdict = self.suggestion = ""
        for widget in self.widgets.values():
            widget.observe(lambda _change: self.update(), names="value")
        self.update()

    def settings(self) -> dict:
        """The widgets' values as `training_memory` keyword arguments."""
        v = {name: widget.value for name, widget in self.widgets.items()}
        return dict(method=v["method"], rank=v["rank"], targets=tuple(v["targets"]),
                    batch_size=v["batch_size"], seq_len=v["seq_len"],
                    gradient_checkpointing=v["gradient_checkpointing"], optimizer=v["optimizer"],
                    compute_dtype=v["precision"])

    def update(self) -> None:
        """Recompute the estimate, redraw the chart and rewrite the verdict from the widgets' values."""
        name, gpu = self.widgets["model"].value, self.widgets["gpu"].value
        lora = self.widgets["method"].value in ("lora", "qlora")
        self.widgets["rank"].disabled = self.widgets["targets"].disabled = not lora
        self.widgets["precision"].disabled = self.widgets["method"].value == "full"  # plain fp32 training
        if lora and not self.widgets["targets"].value:
            self.verdict_box.value = "<b>Pick at least one LoRA target module</b> (Ctrl or Cmd + click picks several)."
            return
        try:
            self.estimate = training_memory(load_config(name), **self.settings())
        except ValueError as err:  # a rank too big for the model's layers: say so instead of a traceback
            self.estimate, self.verdict, self.suggestion = None, str(err), ""
            self.verdict_box.value = f"<b style='color:#cb181d'>{html.escape(self.verdict)}</b>"
            return
        self.verdict = self.estimate.verdict()
        self.suggestion = self.estimate.suggestion(gpu)
        if self.figure is not None:
            plt.close(self.figure)
        fig, ax = plt.subplots(figsize=(8, 4.5))
        draw_memory_bars({METHOD_LABELS[self.estimate.method]: self.estimate}, ax=ax,
                         title=f"{name}: training memory by part")
        self.figure = fig
        fits = self.estimate.fits(gpu)
        color = "#238b45" if fits else "#cb181d"
        note = self.suggestion or f"It fits on the {gpu} (keeping {HEADROOM:.0%} free)."
        self.verdict_box.value = (f"<b style='color:{color}'>{html.escape(self.verdict)}</b><br>"
                                  f"{html.escape(note)}<br><small>{self.parts_text()}</small>")
        self.output.clear_output(wait=True)
        with self.output:
            from IPython.display import display
            display(fig)
        plt.close(fig)  # shown through the Output widget only, not a second time by the notebook's backend

    def parts_text(self) -> str:
        """The estimate's parts in GB, one line."""
        return " · ".join(f"{k} {v / 1e9:.2f} GB" for k, v in self.estimate.parts().items())

    def show(self):
        """Display the calculator: knobs on the left, chart and verdict on the right."""
        import ipywidgets as w
        from IPython.display import display
        knobs = w.VBox(list(self.widgets.values()))
        display(w.HBox([knobs, w.VBox([self.output, self.verdict_box])]))
