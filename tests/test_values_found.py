"""The lenient score beside exact match (course_utils.evaluation.values_found): the right values, in any form."""

from __future__ import annotations

import pytest

from course_utils import data, evaluation

EXAMPLE = {"record": {"for": "TEA", "with": "kenji", "on": "Sat", "at": "15:00", "in": "LIM"}}


def test_a_record_finds_every_value_and_notes_find_theirs():
    right = data.make_answer(EXAMPLE["record"])
    notes = " with kenji, in LIM, at 15:00, on Saturday"  # three values; "Saturday" is not the normalized "Sat"
    result = evaluation.values_found([right, notes, " 30,:30,: Cairo with"], [EXAMPLE] * 3)
    assert result["n"] == 3
    assert result["per_field"] == {"for": pytest.approx(1 / 3), "with": pytest.approx(2 / 3),
                                   "on": pytest.approx(1 / 3), "at": pytest.approx(2 / 3), "in": pytest.approx(2 / 3)}
    assert result["values_found"] == pytest.approx((1 + 3 / 5 + 0) / 3)
    assert data.score([notes], [EXAMPLE])["exact_match"] == 0  # where exact match sees nothing


@pytest.mark.parametrize("text, found", [("for TEA |", True), ("TEAM", False), ("tea", False), ("at 115:00", False),
                                         ("at 15:00.", True), ("15:001", False), ("(TEA)", True)])
def test_a_value_counts_only_as_a_whole_word_in_its_normalized_form(text, found):
    value = "15:00" if ":" in text else "TEA"
    assert evaluation.value_in_text(value, text) is found


def test_the_lenient_score_is_never_below_exact_match():
    test = data.load_split("test", limit=20)
    predictions = [data.make_answer(ex["record"]) if i % 2 else " nothing" for i, ex in enumerate(test)]
    exact = data.score(predictions, test)
    lenient = evaluation.values_found(predictions, test)
    assert lenient["values_found"] >= exact["exact_match"] == 0.5
    assert all(lenient["per_field"][k] >= exact["field_accuracy"][k] for k in data.FIELDS)
    with pytest.raises(ValueError):
        evaluation.values_found([], [])
