"""Cells run out of order, as a class runs them: a cell that needs an earlier one's results says which to run."""

from __future__ import annotations


def ready(namespace: dict, *names: str, first: str) -> bool:
    """Whether the cells that define `names` ran (`namespace`: a notebook's globals()); if not, one sentence names
    the cell to run `first`, instead of a NameError."""
    if missing := [name for name in names if name not in namespace]:
        print(f"Not yet: run {first} first, then this cell.")
    return not missing
