"""Shared test setup: the offline profile, no Hub, and a run-time report for the notebooks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # so tests can import scripts.*

os.environ.setdefault("COURSE_PROFILE", "offline")
os.environ["HF_HUB_OFFLINE"] = "1"

NOTEBOOK_TIMES: dict[str, float] = {}


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


def pytest_terminal_summary(terminalreporter):
    if NOTEBOOK_TIMES:
        terminalreporter.section("notebook run times (fresh kernel; the offline profile unless marked)")
        for name, seconds in NOTEBOOK_TIMES.items():
            terminalreporter.write_line(f"{seconds:7.1f} s  {name}")
        terminalreporter.write_line(f"{sum(NOTEBOOK_TIMES.values()):7.1f} s  all notebooks")


@pytest.fixture(autouse=True)
def _fresh_network_state():
    """A test that simulates a failed download must not leave later tests thinking the network is dead."""
    from course_utils import runtime
    runtime._network_failed = False
    yield
    runtime._network_failed = False


@pytest.fixture(autouse=True)
def _fresh_hints():
    """Every test starts each two-step hint from its nudge."""
    from course_utils.exercises import reset_hints
    reset_hints()
