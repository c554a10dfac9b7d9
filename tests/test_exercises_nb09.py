"""Notebook 09's exercise checkers and its drawing: the right answer passes, plausible mistakes get a hint that does
not give it away, answers of the wrong type get a sentence."""

from __future__ import annotations

import matplotlib
import pytest

from course_utils import diagrams
from course_utils.exercises import nb09
from tests.test_exercises import ODD_ANSWERS, assert_right, assert_wrong_words, verdict

matplotlib.use("Agg")
RIGHT_NAMES = ["calendar", "date", "__base__", "calendar"]


@pytest.mark.parametrize("kind", ODD_ANSWERS)
def test_answers_of_the_wrong_type_get_a_sentence(capsys, kind):
    for ok, out in (verdict(capsys, nb09.check_routing, ODD_ANSWERS[kind]),
                    verdict(capsys, lambda a: nb09.check_q8_size(a, 1_450_000, 2_720_000), ODD_ANSWERS[kind])):
        assert ok is False and out.startswith("❌ Not yet."), out


def test_the_q8_prediction_is_checked_against_the_files(capsys):
    assert_right(capsys, lambda a: nb09.check_q8_size(a, 1_450_000, 2_720_000), "b")
    out = assert_wrong_words(capsys, lambda a: nb09.check_q8_size(a, 1_450_000, 2_720_000), "a")
    assert "0.533" in out, "the hint shows the measured ratio"
    assert_right(capsys, lambda a: nb09.check_q8_size(a, 2_700_000, 2_720_000), "c"), "the files decide, not a key"


def test_no_files_and_no_prediction_say_what_to_run(capsys):
    ok, out = verdict(capsys, lambda a: nb09.check_q8_size(a), "b")
    assert ok is False and "Run the cell that writes both GGUF files" in out
    ok, out = verdict(capsys, lambda a: nb09.check_q8_size(a, 1_450_000, 2_720_000), None)
    assert ok is False and "MY_PREDICTION" in out


def test_routing(capsys):
    assert_right(capsys, nb09.check_routing, RIGHT_NAMES)
    assert_right(capsys, nb09.check_routing, tuple(RIGHT_NAMES))
    out = assert_wrong_words(capsys, nb09.check_routing, ["calendar", "date", "base", "calendar"])
    assert "'__base__'" in out, "the one name nobody can guess is told"
    assert_wrong_words(capsys, nb09.check_routing, ["date", "calendar", "__base__", "calendar"], "'calendar'")


def test_the_path_is_drawn():
    ax = diagrams.draw_adapter_to_use()
    texts = " ".join(t.get_text() for t in ax.texts)
    for word in ("adapter", "GGUF", "safetensors", "adapter_names", "merge"):
        assert word in texts, word
