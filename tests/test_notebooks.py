"""Every notebook: committed outputs fresh and clean, and a fresh top-to-bottom run in the offline profile."""

import os
import re

import nbformat
import pytest

from scripts.run_notebooks import WIDGET_VIEW, code_hash, collapse_progress, execute, notebook_paths, outputs_text
from tests.conftest import NOTEBOOK_TIMES

NOTEBOOKS = notebook_paths()
# Things that look like credentials: Hugging Face, GitHub, OpenAI-style keys, and "token = <long value>".
SECRET = re.compile(r"hf_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9]{20,}"
                    r"|(?i:(?:token|secret|api[_-]?key|password)\s*[:=]\s*['\"]?[A-Za-z0-9_\-]{16,})")

# Absolute paths of a machine (its repo, temp folders, venvs, home), which mean nothing to a reader on GitHub.
MACHINE_PATH = re.compile(r"(?<![\w.~$])/(?:work|tmp|home|root|content|usr|opt|var|mnt|Users)/[^\s'\"]*"
                          r"|site-packages|[A-Z]:\\Users")

# What ipywidgets prints for a widget that can't be drawn: "HBox(children=(VBox(children=(Dropdown(...".
RAW_WIDGET_REPR = re.compile(r"\b(?:H|V)?Box\(children=|\b(?:Dropdown|Output|Checkbox|SelectMultiple|"
                             r"SelectionSlider|IntSlider|FloatSlider|HTML|Button)\((?:description|layout|options|"
                             r"outputs|value|children)=")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_outputs_are_fresh_and_clean(path):
    nb = nbformat.read(path, as_version=4)
    stamp = nb.metadata.get("course", {})
    assert stamp.get("code_sha256") == code_hash(nb), (
        f"{path.name}: code changed since its outputs were made; run `python scripts/run_notebooks.py --inplace {path.name[:2]}`")
    assert stamp.get("profile") == "offline"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "run top to bottom, every cell once"
    assert not any(o.output_type == "error" for c in code for o in c.outputs)
    assert "widgets" not in nb.metadata, "widget state breaks GitHub's renderer"
    redrawn = [o for c in code for o in c.outputs if o.output_type == "stream" and "\r" in o.text]
    assert not redrawn, "a progress bar's every redraw was committed; GitHub shows each on a line of its own"
    views = [o for c in code for o in c.outputs if WIDGET_VIEW in o.get("data", {})]
    assert not views, "a live-widget view was committed; it can't be drawn without its kernel"
    found = RAW_WIDGET_REPR.search(outputs_text(nb))
    assert not found, f"{path.name}: a raw widget repr in the outputs: {found.group(0)!r} (show a sentence instead)"
    assert not SECRET.search(outputs_text(nb)), "an output contains something that looks like a token"
    found = MACHINE_PATH.search(outputs_text(nb))
    assert not found, f"{path.name}: an output shows a machine path: {found.group(0)!r} (print runtime.display_path)"


def test_a_progress_bar_keeps_its_last_redraw_only():
    cell = nbformat.v4.new_code_cell("for _ in progress(range(6)): pass")
    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text) for text in
                    ("\rruns:   0%|   | 0/6", "\rruns: 100%|###| 6/6", "\nW0 unchanged: True\n")]
    cell.outputs.append(nbformat.v4.new_output("stream", name="stderr", text="a warning\n"))
    nb = nbformat.v4.new_notebook(cells=[cell])
    collapse_progress(nb)
    assert [(o.name, o.text) for o in nb.cells[0].outputs] == [
        ("stdout", "runs: 100%|###| 6/6\nW0 unchanged: True\n"), ("stderr", "a warning\n")]


def test_raw_widget_repr_pattern():
    assert RAW_WIDGET_REPR.search("HBox(children=(VBox(children=(Dropdown(description='model', options=")
    assert RAW_WIDGET_REPR.search("VBox(children=(HBox(children=(Dropdown(description='model'")
    assert RAW_WIDGET_REPR.search("Output(layout=Layout(min_height='120px'))")
    assert not RAW_WIDGET_REPR.search("An interactive calculator: run this cell in Jupyter or Colab to turn its knobs.")
    assert not RAW_WIDGET_REPR.search("adapter steps: 100%|##########| 20/20 [00:01<00:00]")


def test_machine_path_pattern_catches_absolute_paths():
    for text in ("/work/main/assets/course-llama", "in /tmp/course-run-x/06-offline", "/root/.cache/x",
                 "/usr/lib/python3.11/site-packages/peft/bnb.py:377: UserWarning", "C:\\Users\\me\\runs"):
        assert MACHINE_PATH.search(text), text
    for text in ("assets/course-llama", "~/.cache/lora-qlora-course/x", "$COURSE_CHECKPOINT_ROOT/06-offline",
                 "runs/06-offline/checkpoints", "a 1/2 chance", "loss 8.2 -> 0.1 (80/80 steps)"):
        assert not MACHINE_PATH.search(text), text


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_read_like_prose(path):
    """Short lines, and the course's modules by their own names (no one-letter aliases)."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        for line in cell.source.splitlines():
            assert len(line) < 100, f"{path.name}, code cell {i + 1}: a line of {len(line)} characters: {line[:60]}..."
            assert not re.match(r"\s*(from course_utils import \w+|import course_utils\.\w+) as \w{1,2}\b", line), line


def test_secret_pattern_catches_tokens():
    assert SECRET.search("HF_TOKEN=hf_" + "a1B2" * 8)
    assert SECRET.search("token: " + "x" * 24)
    assert not SECRET.search("trainable params: 27,262,976 || tokens per second: 1234")


# CI's second leg (Colab's package set, COURSE_TEST_CPU_PROFILE=1) runs every notebook in the cpu profile, the one
# Colab gives students without a GPU; the offline runs are the first leg's (newest releases). Notebook 09 trains the
# course's model and reads SmolLM2's local copy in every profile, so its cpu run there is its offline run again.
CPU_LEG = os.environ.get("COURSE_TEST_CPU_PROFILE") == "1"


@pytest.mark.notebook
@pytest.mark.skipif(CPU_LEG, reason="this leg runs every notebook in the cpu profile (tests/test_cpu_profile.py)")
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_top_to_bottom_offline(path):
    nb, seconds = execute(path)  # raises CellExecutionError, with the cell and traceback, on any error
    NOTEBOOK_TIMES[path.name] = seconds
    assert len(nb.cells) > 3
    assert seconds > 0
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "every cell ran once, in order"
    profile = os.environ["COURSE_PROFILE"]  # conftest makes it "offline" unless the caller chose one
    assert nb.metadata.course == {"code_sha256": code_hash(nb), "profile": profile, "run_seconds": round(seconds, 1)}
    assert not SECRET.search(outputs_text(nb))


def test_notebook_06_guards_cells_run_twice_or_out_of_order(capsys):
    """The LoRA cell run again keeps the trained adapter; the "after" cell run before training says what to do."""
    import torch
    from peft import PeftModel
    from course_utils import cells, evaluation, runtime, training
    nb = nbformat.read(next(p for p in NOTEBOOKS if p.name.startswith("06")), as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    lora_cell = next(src for src in code if "def build_qlora_model" in src)
    after_cell = next(src for src in code if src.startswith('if cells.ready(globals(), "result"'))

    exec(after_cell, {"print": print, "cells": cells})  # nothing trained: a sentence, no NameError
    assert "run the training cell of section 8 first" in capsys.readouterr().out

    profile = runtime.choose_profile("offline")
    base, _ = runtime.load_model(profile, four_bit=False)
    namespace = {"profile": profile, "runtime": runtime, "training": training, "evaluation": evaluation,
                 "torch": torch, "model": base}
    exec(lora_cell, namespace)  # the first run wraps the base
    trained = namespace["model"]
    assert isinstance(trained, PeftModel)
    with torch.no_grad():
        next(p for n, p in trained.named_parameters() if "lora_B" in n).fill_(0.5)  # stands for training
    exec(lora_cell, namespace)  # run again: the same model, adapter and weights
    assert namespace["model"] is trained
    assert next(p for n, p in namespace["model"].named_parameters() if "lora_B" in n).eq(0.5).all()
    assert "already has its adapter" in capsys.readouterr().out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_figures_are_drawn_sharp_for_a_projector(path):
    """Every notebook draws its figures at twice their size (retina) before its first figure."""
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    first = next(i for i, source in enumerate(code) if "PROFILE = " in source)
    assert '%config InlineBackend.figure_formats = ["retina"]' in code[first]
    assert not any("plt." in source or "plots." in source for source in code[:first])
