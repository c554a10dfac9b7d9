"""Write the Colab badge, the setup cell and the GPU request, all from course_utils/colab.py, into every notebook.

    python scripts/sync_notebooks.py          # after changing course_utils/colab.py, then re-run the notebooks

The first cell of each notebook must hold one line starting with the badge; the second cell is the setup cell.
The metadata asks Colab for a T4 GPU (`accelerator`, `colab.gpuType`) only in the notebooks of colab.GPU_NOTEBOOKS.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from course_utils import colab  # noqa: E402
from scripts.run_notebooks import notebook_paths  # noqa: E402

BADGE_LINE = re.compile(r"^\[!\[Open In Colab\].*$", re.MULTILINE)


def sync(path: Path) -> bool:
    """Fix the badge and setup cell of one notebook; True when something changed."""
    nb = nbformat.read(path, as_version=4)
    title, setup = nb.cells[0], nb.cells[1]
    new_title = BADGE_LINE.sub(colab.badge(path.name), title.source, count=1)
    if not BADGE_LINE.search(new_title):
        new_title = title.source.split("\n", 1)[0] + "\n\n" + colab.badge(path.name) + "\n" + "".join(title.source.split("\n", 1)[1:])
    metadata_before = copy.deepcopy(nb.metadata)
    colab.set_accelerator(nb.metadata, path.name)
    changed = new_title != title.source or setup.source != colab.setup_cell(path.name) or nb.metadata != metadata_before
    title.source = new_title
    if setup.cell_type != "code" or not setup.source.startswith(colab.SETUP_MARKER):
        nb.cells.insert(1, nbformat.v4.new_code_cell(colab.setup_cell(path.name)))
        changed = True
    else:
        setup.source = colab.setup_cell(path.name)
    if changed:
        nbformat.write(nb, path)
    return changed


if __name__ == "__main__":
    for p in notebook_paths(sys.argv[1:]):
        print(("updated " if sync(p) else "ok      ") + p.name)
