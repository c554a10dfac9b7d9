"""Knobs to turn in class: ipywidgets calculators whose logic is plain Python (tested without a browser).

Works with ipywidgets 7.7.1 (Colab) and 8.x: only Dropdown, SelectMultiple, SelectionSlider, Checkbox, HTML,
Output, HBox and VBox are used, each observed through `observe(..., names="value")`.

- `MemoryCalculator` (notebook 02): model, method, precision, LoRA rank, targets and dropout, QLoRA's k-bit
  preparation, batch size, sequence length, gradient checkpointing and optimizer, number of GPUs and strategy
  (DDP, ZeRO-2, FSDP / ZeRO-3, from course_utils.distributed) -> a stacked bar of the training memory per GPU
  against the GPUs, the verdict and a suggestion (with several GPUs: how many of the chosen kind it needs).
  `MemoryCalculator.from_preset(model, PRESETS["t4"])` starts from a `training.TrainConfig` preset, exactly as `memory.preset_memory` estimates it.
- `LoraCalculator` (notebook 04): model, rank, target modules, adapter precision -> trainable parameters, share,
  adapter size and a bar per target module.

Both display as one box (CSS class `course-calculator`) whose chart sits in an Output widget (`course-chart`)
and whose verdict is an HTML widget (`course-verdict`). A saved notebook can't bring a widget back to life, so
`show()` also gives the box a sentence and a picture of its current state, which GitHub, nbconvert and a
notebook opened before running show instead of a raw widget repr (scripts/run_notebooks.py keeps only those).
"""

from __future__ import annotations

import base64
import html

import matplotlib.pyplot as plt
from transformers import LlamaConfig

from course_utils.configs import known_names, load_config
from course_utils.distributed import (GPU_COUNTS, STRATEGIES, STRATEGY_LABELS, check_gpus, check_strategy,
                                      needs_sentence, per_gpu_memory)
from course_utils.lora import lora_params, lora_summary
from course_utils.memory import (GPUS, HEADROOM, METHODS, OPTIMIZERS, TrainingMemory, check_choice, preset_settings,
                                 readable_bytes, training_memory)
from course_utils.params import LINEAR_KINDS
from course_utils.plots import draw_memory_bars, sharp_png

METHOD_LABELS = {"full": "full fine-tuning, fp32", "full-mixed": "full fine-tuning, mixed precision",
                 "lora": "LoRA (16-bit base)", "qlora": "QLoRA (NF4 base)"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
KNOB_WIDTH = "340px"  # wide enough for the longest option ("full fine-tuning, mixed precision")
DESCRIPTION_WIDTH = "140px"
DROPOUTS = (0.0, 0.05, 0.1)


def _check_rank(rank) -> int:
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive whole number such as 16, not {rank!r} ({type(rank).__name__}).")
    return rank


class _Calculator:
    """What both calculators share: the chart in an Output widget, the verdict, and `show()`."""

    sentence = "An interactive calculator: run this cell in Jupyter or Colab to turn its knobs."

    def __init__(self) -> None:
        import ipywidgets as w

        self.verdict_box = w.HTML(layout=w.Layout(width="100%"))
        self.verdict_box.add_class("course-verdict")
        self.output = w.Output(layout=w.Layout(min_height="120px"))
        self.output.add_class("course-chart")
        self.figure = self._png = None
        self.verdict = ""

    def _draw(self, fig) -> None:
        """Show `fig` as the chart (replacing the last one) and keep it for tests and the saved picture."""
        from IPython.display import display

        if self.figure is not None and self.figure is not fig:
            plt.close(self.figure)
        self.figure, self._png = fig, sharp_png(fig)
        self.output.clear_output(wait=True)
        with self.output:
            display(self._png)
        plt.close(fig)  # shown through the Output widget only, not a second time by the notebook's backend

    def _no_chart(self, message_html: str) -> None:
        """A message instead of a chart (no stale chart left beside it)."""
        if self.figure is not None:
            plt.close(self.figure)
        self.figure = self._png = None
        self.output.clear_output()
        self.verdict_box.value = message_html

    def box(self):
        raise NotImplementedError

    def mimebundle(self) -> tuple[dict, dict]:
        """(data, metadata): the live widget for a notebook; a sentence and the chart for what can't run it."""
        box = self.box()
        metadata = {}
        data = {"text/plain": f"{self.sentence} Shown: {self.verdict}" if self.verdict else self.sentence,
                WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": box.model_id}}
        if self._png is not None:
            data["image/png"] = base64.b64encode(self._png.data).decode()
            metadata["image/png"] = {"width": self._png.width, "height": self._png.height}
        return data, metadata

    def show(self) -> None:
        """Display the calculator: knobs on the left, chart and verdict on the right."""
        from IPython.display import display
        data, metadata = self.mimebundle()
        display(data, metadata=metadata, raw=True)


class MemoryCalculator(_Calculator):
    """The training-memory calculator of notebook 02. `show()` displays it; `update()` recomputes.

    `estimate` (a TrainingMemory), `figure`, `verdict` and `suggestion` hold the current state, so a test can
    set a widget's value and check what was computed and drawn.
    """

    def __init__(self, model: str = "llama-3.1-8b", method: str = "qlora", precision: str = "bf16", rank: int = 16,
                 targets=("q_proj", "k_proj", "v_proj", "o_proj"), batch_size: int = 1, seq_len: int = 1024,
                 gradient_checkpointing: bool = True, optimizer: str = "adamw", gpu: str = "T4",
                 lora_dropout: float = 0.0, prepared: bool = False, n_gpus: int = 1, strategy: str = "fsdp"):
        import ipywidgets as w

        super().__init__()
        rank = _check_rank(rank)
        optimizer = check_choice(optimizer, OPTIMIZERS, "optimizer")
        ranks = sorted({1, 2, 4, 8, 16, 32, 64, 128, 256, rank})  # any rank asked for joins the dropdown
        model = check_choice(model, tuple(known_names()), "model")  # in any case: "Llama-3.1-8B", "BF16", "t4"
        precision = check_choice(precision, ("bf16", "fp16"), "precision")
        gpu = check_choice(gpu, tuple(GPUS), "GPU")
        n_gpus, strategy = check_gpus(n_gpus), check_strategy(strategy)
        knob = dict(style={"description_width": DESCRIPTION_WIDTH}, layout=w.Layout(width=KNOB_WIDTH))
        self.widgets = {
            "model": w.Dropdown(options=[n for n in known_names()], value=model, description="model", **knob),
            "method": w.Dropdown(options=[(METHOD_LABELS[m], m) for m in METHODS], value=method,
                                 description="method", **knob),
            "precision": w.Dropdown(options=["bf16", "fp16"], value=precision, description="compute precision",
                                    **knob),
            "rank": w.Dropdown(options=ranks, value=rank, description="LoRA rank r", **knob),
            "targets": w.SelectMultiple(options=list(LINEAR_KINDS), value=tuple(targets), rows=7,
                                        description="LoRA targets", **knob),
            "lora_dropout": w.Dropdown(options=sorted({*DROPOUTS, lora_dropout}), value=lora_dropout,
                                       description="LoRA dropout", **knob),
            # prepare_model_for_kbit_training: fp32 embeddings, norms and lm_head, training under autocast
            "prepared": w.Checkbox(value=prepared, description="QLoRA: prepared for k-bit training", indent=False,
                                   layout=w.Layout(width=KNOB_WIDTH)),
            "batch_size": w.Dropdown(options=sorted({1, 2, 4, 8, 16, 32, 64, batch_size}), value=batch_size,
                                     description="batch size", **knob),
            "seq_len": w.Dropdown(options=sorted({128, 256, 512, 1024, 2048, 4096, 8192, seq_len}), value=seq_len,
                                  description="sequence length", **knob),
            "gradient_checkpointing": w.Checkbox(value=gradient_checkpointing, description="gradient checkpointing",
                                                 indent=False, layout=w.Layout(width=KNOB_WIDTH)),
            "optimizer": w.Dropdown(options=list(OPTIMIZERS), value=optimizer, description="optimizer", **knob),
            "gpu": w.Dropdown(options=list(GPUS), value=gpu, description="suggest for GPU", **knob),
            "n_gpus": w.Dropdown(options=sorted({*GPU_COUNTS, n_gpus}), value=n_gpus, description="number of GPUs",
                                 **knob),
            "strategy": w.Dropdown(options=[(STRATEGY_LABELS[s], s) for s in STRATEGIES], value=strategy,
                                   description="strategy", **knob),
        }
        self.estimate: TrainingMemory | None = None
        self.share = None  # the per-GPU share (distributed.PerGPUMemory) when there are several GPUs
        self.suggestion = ""
        for widget in self.widgets.values():
            widget.observe(lambda _change: self.update(), names="value")
        self._box = None
        self.update()

    @classmethod
    def from_preset(cls, model: str, train_config, gpu: str = "T4", **overrides) -> MemoryCalculator:
        """A calculator that starts from a `training.TrainConfig` preset, as `memory.preset_memory` maps it:
        QLoRA with the course's rank, the preset's targets, dropout, batch size, max_length, checkpointing,
        optimizer and compute dtype, after prepare_model_for_kbit_training. `overrides` change a knob."""
        s = preset_settings(train_config)
        knobs = dict(method=s["method"], precision=s["compute_dtype"], rank=s["rank"], targets=s["targets"],
                     batch_size=s["batch_size"], seq_len=s["seq_len"], optimizer=s["optimizer"],
                     gradient_checkpointing=s["gradient_checkpointing"], lora_dropout=s["lora_dropout"],
                     prepared=s["prepared"])
        return cls(model=model, gpu=gpu, **(knobs | overrides))

    def settings(self) -> dict:
        """The widgets' values as `training_memory` keyword arguments."""
        v = {name: widget.value for name, widget in self.widgets.items()}
        lora = v["method"] in ("lora", "qlora")
        return dict(method=v["method"], rank=v["rank"], targets=tuple(v["targets"]),
                    batch_size=v["batch_size"], seq_len=v["seq_len"],
                    gradient_checkpointing=v["gradient_checkpointing"], optimizer=v["optimizer"],
                    compute_dtype=v["precision"], lora_dropout=v["lora_dropout"] if lora else 0.0,
                    prepared=v["prepared"] and v["method"] == "qlora")

    def update(self) -> None:
        """Recompute the estimate, redraw the chart and rewrite the verdict from the widgets' values."""
        name, gpu = self.widgets["model"].value, self.widgets["gpu"].value
        self.share = None
        lora = self.widgets["method"].value in ("lora", "qlora")
        self.widgets["rank"].disabled = self.widgets["targets"].disabled = not lora
        self.widgets["lora_dropout"].disabled = not lora
        self.widgets["prepared"].disabled = self.widgets["method"].value != "qlora"  # QLoRA only
        self.widgets["precision"].disabled = self.widgets["method"].value == "full"  # plain fp32 training
        if lora and not self.widgets["targets"].value:
            self.estimate, self.verdict, self.suggestion = None, "", ""
            self._no_chart("<b>Pick at least one LoRA target module</b> (Ctrl or Cmd + click picks several).")
            return
        try:
            self.estimate = training_memory(load_config(name), **self.settings())
        except ValueError as err:  # a rank too big for the model's layers: say so instead of a traceback
            self.estimate, self.verdict, self.suggestion = None, str(err), ""
            self._no_chart(f"<b style='color:#cb181d'>{html.escape(self.verdict)}</b>")
            return
        n_gpus, strategy = self.widgets["n_gpus"].value, self.widgets["strategy"].value
        self.widgets["strategy"].disabled = n_gpus == 1
        shown, title = self.estimate, f"{name}: training memory by part"
        if n_gpus > 1:  # one GPU's share, and how many GPUs of the chosen kind the run needs
            shown = self.share = per_gpu_memory(self.estimate, n_gpus, strategy)
            self.verdict, self.suggestion = shown.verdict(), needs_sentence(self.estimate, gpu, strategy)
            title = f"{name}: per GPU, {n_gpus} GPUs, {STRATEGY_LABELS[strategy]}"
        else:
            self.verdict = self.estimate.verdict()
            self.suggestion = self.estimate.suggestion(gpu)
        fig, ax = plt.subplots(figsize=(5.8, 4.0))  # 580 px: beside the knobs within a 960-px notebook
        draw_memory_bars({METHOD_LABELS[self.estimate.method]: shown}, ax=ax, title=title)
        self._draw(fig)
        fits = shown.fits(gpu)
        color = "#238b45" if fits else "#cb181d"
        note = self.suggestion or f"It fits on the {gpu} (keeping {HEADROOM:.0%} free)."
        self.verdict_box.value = (f"<b style='color:{color}'>{html.escape(self.verdict)}</b><br>"
                                  f"{html.escape(note)}<br><small>{self.parts_text()}</small>")

    def parts_text(self) -> str:
        """The estimate's parts in GB, one line."""
        shown = self.share or self.estimate
        return " · ".join(f"{k} {readable_bytes(v)}" for k, v in shown.parts().items())

    def box(self):
        import ipywidgets as w
        if self._box is None:
            knobs = w.VBox(list(self.widgets.values()), layout=w.Layout(flex="0 0 auto", width="355px"))
            right = w.VBox([self.output, self.verdict_box], layout=w.Layout(flex="1 1 auto", width="590px"))
            self._box = w.HBox([knobs, right])
            self._box.add_class("course-calculator")
        return self._box


class LoraCalculator(_Calculator):
    """The LoRA calculator of notebook 04: trainable parameters, share and adapter size of one choice.

    `configs` and `bases` map a model's label ("8B") to its config and its base parameter count; `summary`
    (from `lora.lora_summary`), `figure` and `verdict` hold the current state.
    """

    def __init__(self, configs: dict[str, LlamaConfig], bases: dict[str, int], model: str = "8B", rank: int = 32,
                 targets=("q_proj", "k_proj", "v_proj", "o_proj"), bytes_per_param: int = 4,
                 ranks=(1, 2, 4, 8, 16, 32, 64, 128, 256)):
        import ipywidgets as w

        super().__init__()
        rank = _check_rank(rank)
        self.configs, self.bases = configs, bases
        model = check_choice(model, tuple(configs), "model")
        self.widgets = {
            "model": w.Dropdown(options=list(configs), value=model, description="model",
                                layout=w.Layout(width="180px")),
            "rank": w.SelectionSlider(options=sorted({*ranks, rank}), value=rank, description="rank r",
                                      layout=w.Layout(width="300px")),
            "bytes_per_param": w.Dropdown(options=[("fp32 (PEFT's default)", 4), ("bf16", 2)],
                                          value=bytes_per_param, description="adapter in",
                                          layout=w.Layout(width="260px")),
        }
        self.boxes = {k: w.Checkbox(value=k in targets, description=k, indent=False, layout=w.Layout(width="110px"))
                      for k in LINEAR_KINDS}
        self.summary: dict | None = None
        for widget in [*self.widgets.values(), *self.boxes.values()]:
            widget.observe(lambda _change: self.update(), names="value")
        self._box = None
        self.update()

    def targets(self) -> tuple[str, ...]:
        return tuple(k for k, box in self.boxes.items() if box.value)

    def update(self) -> None:
        """Recompute the summary, redraw the bars and rewrite the verdict from the widgets' values."""
        model, r = self.widgets["model"].value, self.widgets["rank"].value
        bytes_per_param, targets = self.widgets["bytes_per_param"].value, self.targets()
        if not targets:
            self.summary, self.verdict = None, ""
            self._no_chart("<b>Tick at least one target module.</b>")
            return
        c = self.configs[model]
        s = self.summary = lora_summary(c, r, targets, base_params=self.bases[model], bytes_per_param=bytes_per_param)
        self.verdict = (f"Llama 3.1 {model}, r = {r}, targets: {', '.join(targets)}: "
                        f"{s['trainable']:,} trainable of {s['all']:,} ({100 * s['share']:.4f}%)")
        per_kind = {k: lora_params(c, r, [k]) / 1e6 for k in targets}
        fig, ax = plt.subplots(figsize=(7, 2.8))
        ax.barh(list(per_kind), list(per_kind.values()), color="#e6550d")
        ax.invert_yaxis()
        ax.set_xlabel("trainable parameters (millions)")
        ax.set_title(f"{s['trainable'] / 1e6:,.1f} M trainable = {100 * s['share']:.3f}% "
                     f"of Llama 3.1 {model}, by target module", fontsize=10)
        fig.tight_layout()
        self._draw(fig)
        self.verdict_box.value = (
            f"<b>trainable params: {s['trainable']:,} || all params: {s['all']:,} || "
            f"trainable%: {100 * s['share']:.4f}</b><br>adapter file: about {s['megabytes']:,.1f} MB at "
            f"{bytes_per_param} bytes per parameter (the base in bf16: {self.bases[model] * 2 / 1e9:,.1f} GB)")

    def box(self):
        import ipywidgets as w
        if self._box is None:
            ticks = list(self.boxes.values())
            self._box = w.VBox([w.HBox(list(self.widgets.values())), w.HBox(ticks[:4]), w.HBox(ticks[4:]),
                                self.output, self.verdict_box])
            self._box.add_class("course-calculator")
        return self._box
