"""Every notebook top to bottom in the cpu profile (SmolLM2-135M-Instruct, Colab without a GPU), as a student on a
CPU runtime runs it (issue 23). About ten minutes on a 2-core CPU, so it runs where asked:

    COURSE_TEST_CPU_PROFILE=1 bash scripts/test.sh --colab -k cpu_profile      # what CI runs, in Colab's set

Each run is checked like the offline one (every cell once, in order, no error), must really be SmolLM2 (no
fallback to the offline profile), and its outputs must agree with the prose (tests/test_profile_numbers.py).
"""

from __future__ import annotations

import os

import nbformat
import pytest

from course_utils import real_model
from scripts.run_notebooks import execute, notebook_paths, outputs_text
from tests.conftest import NOTEBOOK_TIMES
from tests.test_profile_numbers import unnamed_profile_numbers

pytestmark = [pytest.mark.notebook, pytest.mark.skipif(
    os.environ.get("COURSE_TEST_CPU_PROFILE") != "1",
    reason="about ten minutes: set COURSE_TEST_CPU_PROFILE=1 to run every notebook in the cpu profile")]


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_in_the_cpu_profile(path, monkeypatch):
    assert real_model.problem() is None, f"SmolLM2 can't be had here: {real_model.problem()}"
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    nb, seconds = execute(path)
    NOTEBOOK_TIMES[f"{path.name} (cpu profile)"] = seconds
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "every cell ran once, in order"
    assert nb.metadata.course["profile"] == "cpu"
    text = outputs_text(nb)
    assert "Using the offline profile" not in text and "Falling back to the offline profile" not in text, text[:2000]
    committed = nbformat.read(path, as_version=4)  # the offline run's outputs
    flagged = unnamed_profile_numbers(committed, outputs_text(committed), text)
    assert not flagged, "\n".join(f"{n}: {s}" for n, s in flagged)
