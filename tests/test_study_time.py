"""One sitting per notebook (issue 24): each first cell states how long its main path takes, as
scripts/study_time.py counts it, at most MAIN_PATH_LIMIT minutes; the detours sit after "## Going deeper"."""

from __future__ import annotations

import nbformat
import pytest

from scripts import study_time

NOTEBOOKS = study_time.notebook_paths()
# Detours that issue 24 moved off the main path: notebook prefix -> a name only the detour's code uses (01 Llama
# 3.1's RoPE scaling, 02 activation bytes per token, 05 where the Q4_1 weights came from, twice, 06 the loss of
# each token after training).
DETOURS = [("01", "ROPE_INIT_FUNCTIONS"), ("02", "per_layer"), ("05", "distinct_per_block"), ("05", "off_grid"),
           ("06", "token_losses")]


def test_count_reads_words_code_and_exercises_and_skips_solutions_and_comments():
    cells = [nbformat.v4.new_markdown_cell("Three words here.\n\n<details>five hidden words in here</details>"),
             nbformat.v4.new_code_cell("# a comment\nx = 1\n\nok = nb03.check_double_r(None)"),
             nbformat.v4.new_markdown_cell("**Time:** the main path takes about 5 minutes")]
    counted = study_time.count(cells)
    assert (counted["words"], counted["code_lines"], counted["exercises"]) == (3, 2, 1)
    assert counted["minutes"] == 5  # 3/120 + 2/10 + 4 = 4.2 minutes, to the nearest 5
    assert study_time.count(cells[1:] * 2)["minutes"] == 10  # 8.4 minutes
    assert study_time.count(cells[:1])["minutes"] == 0  # 0.03 minutes


def test_split_starts_going_deeper_at_its_heading():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# title"),
                                         nbformat.v4.new_markdown_cell("## Going deeper\n\nmore"),
                                         nbformat.v4.new_code_cell("y = 2")])
    main, deeper = study_time.split(nb)
    assert len(main) == 1 and len(deeper) == 2


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name[:2])
def test_first_cell_states_the_main_path_and_it_fits_one_sitting(path):
    main, deeper = study_time.estimate(path)
    assert study_time.stated(path) == main["minutes"], \
        f"{path.name}: run `python scripts/study_time.py --write` (the count gives {main['minutes']} minutes)"
    assert study_time.time_line(main, deeper) in nbformat.read(path, as_version=4).cells[0].source, \
        f"{path.name}: its Time line's counts are stale: run `python scripts/study_time.py --write`"
    assert main["minutes"] <= study_time.MAIN_PATH_LIMIT, \
        f"{path.name}: its main path is {main['minutes']} minutes; move detours after '## Going deeper'"


@pytest.mark.parametrize("prefix,words", DETOURS)
def test_detours_sit_in_going_deeper(prefix, words):
    path = next(p for p in NOTEBOOKS if p.name.startswith(prefix))
    main, deeper = study_time.split(nbformat.read(path, as_version=4))
    assert any(words in c.source for c in deeper), f"{path.name}: '{words}' is not in its Going deeper section"
    assert not any(words in c.source for c in main if c.cell_type == "code"), \
        f"{path.name}: code about '{words}' is still on the main path"
