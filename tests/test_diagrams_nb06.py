"""Notebook 06's picture of QLoRA as a whole (course_utils.diagrams.draw_qlora), drawn headless."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from course_utils import diagrams  # noqa: E402


@pytest.mark.parametrize("compute, optimizer", [("bf16", "paged_adamw_8bit"), ("fp16", "adamw")])
def test_draw_qlora_labels_every_ingredient_readably(compute, optimizer):
    ax = diagrams.draw_qlora(compute, optimizer)
    texts = [t.get_text() for t in ax.texts] + [ax.get_title()]
    joined = "\n".join(texts)
    for words in ("NF4", "4 bits", f"dequantize to\n{compute}", f"in {compute}", "A  (r x in)", "B  (out x r)",
                  "fp32, trains", "gradients for A and B only", f"({optimizer})", "CPU RAM", "paged out"):
        assert words in joined, words
    assert all(t.get_fontsize() >= 10 for t in ax.texts) and ax.title.get_fontsize() >= 10
    fig = ax.figure
    fig.canvas.draw()  # every patch and arrow renders
    box = fig.get_window_extent()
    for t in ax.texts:  # no label spills out of the figure
        extent = t.get_window_extent()
        assert extent.x0 >= box.x0 - 1 and extent.x1 <= box.x1 + 1, t.get_text()
    plt.close(fig)


def test_draw_qlora_draws_into_a_given_axes():
    fig, ax = plt.subplots()
    assert diagrams.draw_qlora(ax=ax) is ax and len(ax.patches) >= 10
    plt.close(fig)
