"""Prose true in every profile (issue 23): a number written in a notebook's markdown that one profile's run prints
and the other's does not depends on which model ran, so its sentence must name the profile (or the number must be
printed by code instead). The offline run is the committed outputs; the cpu run (SmolLM2) is the record that
`COURSE_PROFILE=cpu python scripts/run_notebooks.py --record benchmarks/results/notebooks_cpu.json` writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from scripts.run_notebooks import code_hash, notebook_paths, outputs_text

ROOT = Path(__file__).resolve().parent.parent
CPU_RECORD = ROOT / "benchmarks" / "results" / "notebooks_cpu.json"
# Words that tie a sentence to one model or profile: its numbers may be that model's alone.
NAMES_A_MODEL = re.compile(r"offline|cpu profile|gpu profile|course's (?:small |own )?(?:model|Llama)|SmolLM2|"
                           r"\b\d+B\b|\bT4\b|Llama 3\.1|"
                           r"\bpaper\b|\bTable \d|\u00a7", re.IGNORECASE)  # or cite a source: not the model's
NUMBER = re.compile(r"(?<![\w.,/-])\d[\d,]*(?:\.\d+)?%?(?![\w/-])")
# What a run prints that changes from run to run on the same model: progress bars and measured times.
RUN_TO_RUN = re.compile(r"[^\n\r]*\|[#\u2588 ]*\|[^\n\r]*|\[\d+:\d\d[^\]\n]*\]|"
                        r"\d[\d,]*(?:\.\d+)? ?(?:ms|s|sec|seconds?|min|minutes?)(?:/it)?\b|\d+(?:\.\d+)?it/s")


def prose_sentences(nb) -> list[str]:
    """The sentences of the markdown cells, without code spans, links, headings or Solution blocks."""
    sentences = []
    for cell in (c for c in nb.cells if c.cell_type == "markdown"):
        text = re.sub(r"<details>.*?</details>", " ", cell.source, flags=re.S)
        text = re.sub(r"^\*\*Time:\*\*.*$", " ", text, flags=re.M)  # counted by scripts/study_time.py
        text = re.sub(r"```.*?```|`[^`]*`|\]\([^)]*\)|https?://\S+", " ", text, flags=re.S)
        text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        text = re.sub(r"\b(?:[Ss]ections?|[Nn]otebooks?|Exercise|claims?)\s+\d+(?:(?:,\s*|\s+and\s+|\s+to\s+)\d+)*",
                      " ", text)  # where to look, not a measurement
        sentences += re.split(r"(?<=[.!?:;])\s+", " ".join(text.split()))
    return sentences


def numbers_in(text: str) -> set[str]:
    return {m.group(0).rstrip(",") for m in NUMBER.finditer(text)}


def unnamed_profile_numbers(nb, offline_out: str, cpu_out: str) -> list[tuple[str, str]]:
    """(number, sentence) for each number of the prose that only one profile's outputs print, in a sentence that
    names no model or profile."""
    offline, cpu = (numbers_in(RUN_TO_RUN.sub(" ", out)) for out in (offline_out, cpu_out))
    return [(n, s) for s in prose_sentences(nb) if not NAMES_A_MODEL.search(s)
            for n in sorted(numbers_in(s)) if (n in offline) != (n in cpu)]


def test_the_check_flags_a_number_only_one_profile_prints():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "Exact match goes from 0.0% to 100.0% after 80 steps. The offline profile takes 80 steps.")])
    flagged = unnamed_profile_numbers(nb, "exact match 0.0% -> 100.0%, 80 steps", "exact match 0.0% -> 95.0%")
    assert flagged == [("100.0%", "Exact match goes from 0.0% to 100.0% after 80 steps."),
                       ("80", "Exact match goes from 0.0% to 100.0% after 80 steps.")]


def test_times_and_progress_bars_are_not_what_a_profile_prints():
    """They change from run to run: a prose number that a run's clock happens to print (12 s, [00:50<00:10])
    is not the model's (CI failed on that once)."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "Adam keeps 12 bytes per weight. We check 50 requests. The paper counts 2 + 2 + 7 bytes.")])
    offline = "wall time: 12 s\ntraining:  50%|#####     | 20/40 [00:50<01:17,  3.88s/it]\n50 requests"
    assert unnamed_profile_numbers(nb, offline, "wall time: 9.5 s\n50 requests\n7 bytes") == []
    assert unnamed_profile_numbers(nb, "12 bytes", "wall time: 3 s") == [("12", "Adam keeps 12 bytes per weight.")]


@pytest.fixture(scope="module")
def cpu_record() -> dict:
    if not CPU_RECORD.exists():
        pytest.fail(f"{CPU_RECORD.name} is missing: run `COURSE_PROFILE=cpu python scripts/run_notebooks.py "
                    f"--record benchmarks/results/{CPU_RECORD.name}`")
    return json.loads(CPU_RECORD.read_text())


def test_cpu_record_covers_every_notebook_as_it_is(cpu_record):
    assert cpu_record["profile"] == "cpu"
    for path in notebook_paths():
        run = cpu_record["notebooks"].get(path.name)
        assert run is not None, f"{path.name} is not in {CPU_RECORD.name}"
        assert run["code_sha256"] == code_hash(nbformat.read(path, as_version=4)), (
            f"{path.name}'s code changed since its cpu-profile run: rerun `{cpu_record['command']}`")
        assert "Traceback" not in run["outputs"] and "Using the offline profile" not in run["outputs"], path.name


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.name)
def test_prose_numbers_hold_in_both_profiles(path, cpu_record):
    nb = nbformat.read(path, as_version=4)
    cpu_out = cpu_record["notebooks"][path.name]["outputs"]
    flagged = unnamed_profile_numbers(nb, outputs_text(nb), cpu_out)
    assert not flagged, (f"{path.name}: numbers in the prose that only one profile prints; compute them, or name the "
                         "profile in the sentence:\n" + "\n".join(f"  {n}: {s}" for n, s in flagged))


def test_the_time_line_is_not_a_profile_number():
    """A first cell's "**Time:**" line is counted from the notebook's text by scripts/study_time.py, not printed."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        "# 06\n\n**Time:** the main path takes about 75 minutes; \"Going deeper\" adds about 50.")])
    assert unnamed_profile_numbers(nb, "of 50 requests", "of 100 requests") == []
