"""How long a student needs for a notebook: an estimate from what its cells hold, stated in its first cell.

    python scripts/study_time.py           # each notebook's main path and its "Going deeper", counted and timed
    python scripts/study_time.py --write   # rewrite the "**Time:**" line of every notebook's first cell
    python scripts/study_time.py --check   # exit 1 when a first cell does not state what this computes

The main path is every cell before the notebook's "## Going deeper" heading (or all of them when it has none);
the detours after it are kept, run and tested like the rest, and left for a second sitting.

The estimate rests on three assumptions, not on measurements of students (change them here if your class
reads faster or slower): prose read at WORDS_PER_MINUTE, code at LINES_PER_MINUTE (reading a line, running the
cell, reading what it prints; blank lines and comments not counted), EXERCISE_MINUTES for each checked exercise;
the sum is rounded to the nearest 5 minutes. A solution inside <details> is not counted (a student opens it
only when stuck), nor is the compute time: the first cell's table gives that for each profile.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
WORDS_PER_MINUTE = 120
LINES_PER_MINUTE = 10
EXERCISE_MINUTES = 4
MAIN_PATH_LIMIT = 75  # minutes: one sitting
GOING_DEEPER = "## Going deeper"
TIME_LINE = re.compile(r"^\*\*Time:\*\*.*$", re.M)
STATED = re.compile(r"^\*\*Time:\*\* the main path takes about (\d+) minutes", re.M)
CHECKER = re.compile(r"\bnb\d\d\.check_\w+\(")


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def split(nb) -> tuple[list, list]:
    """The main path's cells and the "Going deeper" cells (from that heading on)."""
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and cell.source.startswith(GOING_DEEPER):
            return nb.cells[:i], nb.cells[i:]
    return list(nb.cells), []


def count(cells) -> dict[str, int]:
    """Words of prose (solutions and the Time line left out), lines of code, checked exercises, and minutes."""
    words = lines = exercises = 0
    for cell in cells:
        if cell.cell_type == "markdown":
            prose = TIME_LINE.sub("", re.sub(r"<details>.*?</details>", "", cell.source, flags=re.S))
            words += len(re.findall(r"[A-Za-z0-9']+", prose))
        elif cell.cell_type == "code":
            lines += sum(1 for line in cell.source.splitlines() if line.strip() and not line.strip().startswith("#"))
            exercises += len(CHECKER.findall(cell.source))
    minutes = words / WORDS_PER_MINUTE + lines / LINES_PER_MINUTE + exercises * EXERCISE_MINUTES
    return {"words": words, "code_lines": lines, "exercises": exercises, "minutes": 5 * math.floor(minutes / 5 + 0.5)}


def estimate(path: Path) -> tuple[dict[str, int], dict[str, int]]:
    """The main path's counts and the Going deeper section's, for one notebook."""
    main, deeper = split(nbformat.read(path, as_version=4))
    return count(main), count(deeper)


def time_line(main: dict[str, int], deeper: dict[str, int]) -> str:
    """The sentence of a notebook's first cell."""
    extra = (f"; its \"Going deeper\" section adds about {deeper['minutes']} for a second sitting"
             if deeper["words"] or deeper["code_lines"] else "")
    return (f"**Time:** the main path takes about {main['minutes']} minutes of reading, running and exercises "
            f"({main['words']:,} words, {main['code_lines']} lines of code, {main['exercises']} checked exercises, "
            f"by `python scripts/study_time.py`), plus the run time below{extra}.")


def stated(path: Path) -> int | None:
    """The minutes a notebook's first cell states for its main path, or None."""
    first = nbformat.read(path, as_version=4).cells[0].source
    found = STATED.search(first)
    return int(found.group(1)) if found else None


def write(path: Path) -> bool:
    """Put the computed Time line into the first cell (after its first paragraph when it has none); True when
    the file changed. Only that cell's source changes: outputs and the code hash stay."""
    nb = nbformat.read(path, as_version=4)
    line = time_line(*estimate(path))
    source = nb.cells[0].source
    new = TIME_LINE.sub(line, source) if TIME_LINE.search(source) else source.rstrip() + "\n\n" + line
    if new == source:
        return False
    nb.cells[0].source = new
    nbformat.write(nb, path)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite each first cell's Time line")
    parser.add_argument("--check", action="store_true", help="exit 1 when a first cell states another estimate")
    args = parser.parse_args(argv)
    print(f"{'notebook':34}{'main path':>10}{'words':>7}{'code':>6}{'ex.':>5}{'going deeper':>14}")
    wrong = []
    for path in notebook_paths():
        main_path, deeper = estimate(path)
        print(f"{path.stem[:33]:34}{main_path['minutes']:>7} min{main_path['words']:>7}"
              f"{main_path['code_lines']:>6}{main_path['exercises']:>5}{deeper['minutes']:>10} min")
        if args.write and write(path):
            print(f"  wrote its Time line")
        first = nbformat.read(path, as_version=4).cells[0].source
        if args.check and time_line(main_path, deeper) not in first:
            wrong.append(f"{path.name} states {stated(path)} minutes and other counts than these")
    for line in wrong:
        print(line)
    if wrong:
        print("Run `python scripts/study_time.py --write` to restate them.")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
