"""Notebook 03's data-flow picture: every box sized by its shape, every label readable on a projector."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from course_utils.diagrams import draw_lora_data_flow  # noqa: E402


def _boxes(ax) -> dict[str, Rectangle]:
    return {p.get_label(): p for p in ax.patches if isinstance(p, Rectangle) and not p.get_label().startswith("_")}


def test_boxes_are_sized_by_the_shapes():
    n_in, n_out, r = 64, 48, 8
    ax = draw_lora_data_flow(n_in, n_out, r)
    boxes = _boxes(ax)
    assert set(boxes) == {"x", "W", "Wx", "A", "Ax", "B", "BAx", "h"}
    W, A, B = boxes["W"], boxes["A"], boxes["B"]
    unit = W.get_width() / n_in
    assert W.get_height() == pytest.approx(n_out * unit)         # W is out x in
    assert A.get_width() == pytest.approx(n_in * unit)           # A is r x in
    assert A.get_height() == pytest.approx(r * unit)
    assert B.get_width() == pytest.approx(r * unit)              # B is out x r
    assert B.get_height() == pytest.approx(n_out * unit)
    assert boxes["x"].get_height() == pytest.approx(n_in * unit)  # the vectors are as tall as their lengths
    for name in ("Wx", "BAx", "h"):
        assert boxes[name].get_height() == pytest.approx(n_out * unit)
    assert boxes["Ax"].get_height() == pytest.approx(r * unit)
    # the base path is above the adapter's detour, and the adapter reads x before W's output is summed
    assert W.get_y() > A.get_y() + A.get_height()
    assert boxes["h"].get_x() > max(boxes["Wx"].get_x(), boxes["BAx"].get_x())
    plt.close("all")


def test_the_shapes_are_labelled_and_readable():
    ax = draw_lora_data_flow(4096, 4096, 16)  # the notebook's layer: Llama 3.1 8B's q_proj
    texts = [t for t in ax.texts if t.get_text().strip()]
    words = " | ".join(t.get_text() for t in texts)
    for label in ("4,096 x 4,096", "16 x 4,096", "4,096 x 16", "alpha / r"):
        assert label in words, words
    assert all(t.get_fontsize() >= 10 for t in texts + [ax.title])
    boxes = _boxes(ax)
    # a side of 16 out of 4,096 would be invisible: it is drawn at least a line wide, still thinner than W
    assert 0 < boxes["A"].get_height() < boxes["W"].get_height() / 10
    assert boxes["B"].get_width() == pytest.approx(boxes["A"].get_height())
    plt.close("all")


@pytest.mark.parametrize("r", [0, 2.5])
def test_a_bad_rank_gets_a_sentence(r):
    with pytest.raises((TypeError, ValueError), match="rank r"):
        draw_lora_data_flow(64, 48, r)
