"""course_utils.cells: a cell run before the ones it needs says which to run, and runs nothing."""

from __future__ import annotations

from course_utils.cells import ready


def test_ready_names_the_cell_to_run_first(capsys):
    assert ready({"after": 1, "reloaded": 2}, "after", "reloaded", first="section 9") is True
    assert capsys.readouterr().out == ""
    assert ready({"after": 1}, "after", "reloaded", first="sections 9 and 10") is False
    assert capsys.readouterr().out == "Not yet: run sections 9 and 10 first, then this cell.\n"
