"""The memory calculator's logic, without a browser: set the widgets' values, check what is computed and drawn."""

import matplotlib

matplotlib.use("Agg")

import base64  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402

from course_utils.configs import load_config  # noqa: E402
from course_utils.memory import GPUS, training_memory  # noqa: E402
from course_utils.plots import draw_memory_bars  # noqa: E402
from course_utils.widgets import LoraCalculator, MemoryCalculator  # noqa: E402

RAW_WIDGET_REPR = re.compile(r"\b(HBox|VBox|Box|Dropdown|Output|HTML|Checkbox|SelectMultiple|interactive)\(")


def drawn_total_gb(fig) -> float:
    """Top of the stacked bar, read back from the drawn rectangles."""
    ax = fig.axes[0]
    return sum(patch.get_height() for patch in ax.patches)


def test_default_state_is_training_memory_of_its_settings():
    calc = MemoryCalculator()
    expected = training_memory(load_config(calc.widgets["model"].value), **calc.settings())
    assert calc.estimate.parts() == expected.parts()
    assert drawn_total_gb(calc.figure) == pytest.approx(expected.total / 1e9)
    assert calc.verdict == expected.verdict()
    gpu_lines = {round(line.get_ydata()[0], 6) for line in calc.figure.axes[0].lines}
    smallest_fit = min(gb for gb in GPUS.values() if gb * 1e9 >= expected.total)
    assert gpu_lines == {float(gb) for gb in GPUS.values() if gb <= smallest_fit}


def test_turning_knobs_recomputes_and_redraws():
    calc = MemoryCalculator(model="llama-3.1-8b", method="qlora", rank=16, batch_size=1, seq_len=1024)
    before = calc.estimate
    calc.widgets["rank"].value = 64
    assert calc.estimate.adapter == 4 * before.adapter
    calc.widgets["batch_size"].value = 8
    assert calc.estimate.activations > before.activations
    calc.widgets["gradient_checkpointing"].value = False
    assert calc.estimate.settings["gradient_checkpointing"] is False
    calc.widgets["model"].value = "llama-3.1-70b"
    expected = training_memory(load_config("llama-3.1-70b"), **calc.settings())
    assert calc.estimate.total == expected.total
    assert drawn_total_gb(calc.figure) == pytest.approx(expected.total / 1e9)
    assert "llama-3.1-70b" in calc.figure.axes[0].get_title()


def test_full_fine_tuning_of_the_8b_gets_a_suggestion_that_fits():
    calc = MemoryCalculator(model="llama-3.1-8b", method="qlora", gpu="T4")
    calc.widgets["method"].value = "full"
    assert calc.widgets["rank"].disabled and calc.widgets["targets"].disabled and calc.widgets["precision"].disabled
    assert not calc.estimate.fits("T4")
    assert calc.suggestion.startswith("To fit on the T4")
    assert "To fit on the T4" in calc.verdict_box.value and "color:#cb181d" in calc.verdict_box.value
    calc.widgets["gpu"].value = "H100"
    assert calc.suggestion.startswith("To fit on the H100")


def test_no_target_module_asks_for_one_instead_of_failing():
    calc = MemoryCalculator(method="lora")
    calc.widgets["targets"].value = ()
    assert "Pick at least one" in calc.verdict_box.value
    calc.widgets["targets"].value = ("q_proj", "v_proj")
    assert calc.estimate.settings["targets"] == ("q_proj", "v_proj")


def test_draw_memory_bars_stacks_every_part():
    config = load_config("llama-3.2-1b")
    estimates = {m: training_memory(config, m) for m in ("full", "lora", "qlora")}
    fig = draw_memory_bars(estimates)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert sum(heights) == pytest.approx(sum(e.total for e in estimates.values()) / 1e9)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == list(estimates)


def test_any_positive_rank_and_names_in_any_case_are_accepted():
    calc = MemoryCalculator(rank=12, gpu="t4", precision="BF16", model="Llama-3.1-8B")
    assert calc.widgets["rank"].value == 12 and 12 in calc.widgets["rank"].options
    assert calc.estimate.settings["rank"] == 12 and calc.widgets["gpu"].value == "T4"
    for bad in ("abc", 0, 2.5):
        with pytest.raises(ValueError, match="rank must be a positive whole number such as 16"):
            MemoryCalculator(rank=bad)


def test_a_rank_too_big_for_the_model_is_a_sentence_in_the_box():
    calc = MemoryCalculator(model="smollm2-135m", rank=256)  # its k_proj and v_proj are 576 -> 192
    assert calc.estimate is None and "rank 256 &gt;= min(in, out) = 192 of k_proj" in calc.verdict_box.value
    calc.widgets["rank"].value = 64
    assert calc.estimate.settings["rank"] == 64 and "rank" not in calc.verdict_box.value.split("<br>")[0]


def test_no_target_leaves_no_stale_chart():
    calc = MemoryCalculator(method="lora")
    assert calc.figure is not None and calc.mimebundle()[0].get("image/png")
    calc.widgets["targets"].value = ()
    assert calc.figure is None and calc.estimate is None and "image/png" not in calc.mimebundle()[0]


def test_calculators_carry_the_classes_the_browser_test_looks_for():
    for calc in (MemoryCalculator(), LoraCalculator(*_lora_configs())):
        assert "course-calculator" in calc.box()._dom_classes
        assert "course-chart" in calc.output._dom_classes and "course-verdict" in calc.verdict_box._dom_classes


def test_saved_output_is_a_sentence_and_a_picture_not_a_widget_repr():
    calc = MemoryCalculator(model="llama-3.1-8b", method="qlora")
    data, metadata = calc.mimebundle()
    assert data["text/plain"].startswith("An interactive calculator") and calc.verdict in data["text/plain"]
    assert not RAW_WIDGET_REPR.search(data["text/plain"])
    assert data["application/vnd.jupyter.widget-view+json"]["model_id"] == calc.box().model_id
    png = base64.b64decode(data["image/png"])
    assert png.startswith(b"\x89PNG")
    width = int.from_bytes(png[16:20], "big")  # drawn at twice the size it is shown at: sharp on a projector
    assert width // 2 == metadata["image/png"]["width"]


def test_gpu_labels_on_the_405b_do_not_pile_up():
    calc = MemoryCalculator(model="llama-3.1-405b", method="full")
    ax = calc.figure.axes[0]
    labels = [t for t in ax.texts if "GB:" in t.get_text()]
    top = ax.get_ylim()[1]
    heights = sorted(t.get_position()[1] for t in labels)
    assert all(b - a >= 0.05 * top for a, b in zip(heights, heights[1:])), [t.get_text() for t in labels]
    named = " ".join(t.get_text() for t in labels)
    assert all(gpu in named for gpu in GPUS), named  # every GPU still named, in a shared label


def _lora_configs():
    from course_utils.params import count_params
    configs = {"8B": load_config("llama-3.1-8b"), "70B": load_config("llama-3.1-70b")}
    return configs, {k: count_params(c) for k, c in configs.items()}


def test_lora_calculator_recomputes_from_its_knobs():
    from course_utils.lora import lora_params
    configs, bases = _lora_configs()
    calc = LoraCalculator(configs, bases, model="8B", rank=32, targets=("q_proj", "v_proj"))
    assert calc.summary["trainable"] == lora_params(configs["8B"], 32, ["q_proj", "v_proj"])
    calc.widgets["rank"].value = 64
    assert calc.summary["trainable"] == lora_params(configs["8B"], 64, ["q_proj", "v_proj"])
    calc.widgets["model"].value = "70B"
    assert "70B" in calc.figure.axes[0].get_title() and "70B" in calc.verdict
    calc.boxes["gate_proj"].value = True
    assert len(calc.figure.axes[0].patches) == 3
    assert f"{calc.summary['trainable']:,}" in calc.verdict_box.value
    for box in calc.boxes.values():
        box.value = False
    assert calc.figure is None and "Tick at least one" in calc.verdict_box.value


def test_a_small_models_run_reads_in_mb_not_0_0_gb():
    calc = MemoryCalculator(model="course-llama", method="qlora")
    assert "0.0 GB" not in calc.verdict and " MB in total" in calc.verdict
    assert "0.00 GB" not in calc.verdict_box.value
    ax = calc.figure.axes[0]
    assert "MB" in ax.get_ylabel() and not ax.lines  # no GPU line squashing the bar to nothing
    assert drawn_total_gb(calc.figure) == pytest.approx(calc.estimate.total / 1e6)


# --- the number of GPUs and the strategy (course_utils.distributed)

def test_one_gpu_is_the_default_and_changes_nothing():
    calc = MemoryCalculator()
    assert calc.widgets["n_gpus"].value == 1 and calc.widgets["strategy"].disabled and calc.share is None
    assert calc.verdict == training_memory(load_config(calc.widgets["model"].value), **calc.settings()).verdict()
    assert "n_gpus" not in calc.settings() and "strategy" not in calc.settings()  # training_memory's own keywords


def test_more_gpus_show_one_gpus_share_and_how_many_are_needed():
    from course_utils.distributed import gpus_needed, per_gpu_memory
    calc = MemoryCalculator(model="llama-3.1-70b", method="full-mixed", gpu="A100 80GB", seq_len=1024)
    one_total = calc.estimate.total
    calc.widgets["n_gpus"].value = 8
    assert not calc.widgets["strategy"].disabled and calc.widgets["strategy"].value == "fsdp"
    share = per_gpu_memory(calc.estimate, 8, "fsdp")
    assert calc.share.parts() == share.parts() and calc.estimate.total == one_total  # the whole run is unchanged
    assert drawn_total_gb(calc.figure) == pytest.approx(share.total / 1e9)
    assert "per GPU, 8 GPUs, FSDP / ZeRO-3" in calc.figure.axes[0].get_title()
    assert calc.verdict == share.verdict() and "per GPU" in calc.verdict
    needed = gpus_needed(calc.estimate, "A100 80GB", "fsdp")
    assert calc.suggestion.startswith(f"Under FSDP / ZeRO-3 this run needs {needed} x A100 80GB")
    assert calc.suggestion in calc.verdict_box.value.replace("&#x27;", "'")
    calc.widgets["strategy"].value = "ddp"  # DDP replicates everything: the one-GPU total on every GPU
    assert calc.share.total == one_total and "not even 64" in calc.suggestion
    calc.widgets["strategy"].value = "zero2"
    assert calc.share.weights == calc.estimate.weights and calc.share.optimizer < calc.estimate.optimizer
    calc.widgets["n_gpus"].value = 1
    assert calc.share is None and calc.verdict == calc.estimate.verdict()


def test_gpus_and_strategy_in_the_constructor_and_bad_values_are_sentences():
    calc = MemoryCalculator(model="llama-3.1-405b", method="qlora", n_gpus=8, strategy="ZeRO-3", gpu="H100")
    assert calc.widgets["strategy"].value == "fsdp" and calc.share.fits("H100")
    assert "color:#238b45" in calc.verdict_box.value  # green: one GPU's share fits the H100
    with pytest.raises(ValueError, match="Unknown strategy"):
        MemoryCalculator(strategy="pipeline")
    with pytest.raises(ValueError, match="number of GPUs must be a whole number of at least 1"):
        MemoryCalculator(n_gpus=0)
