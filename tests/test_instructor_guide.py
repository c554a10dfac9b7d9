"""INSTRUCTORS.md: its run times are what scripts/instructor_guide.py generates from the notebooks' metadata and the
benchmark results now; it has a section for every notebook whose moments name real headings and quote numbers
the notebook really shows; the README links to it; every setting and environment variable it names exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from scripts import gpu_check, instructor_guide
from scripts.run_notebooks import notebook_paths

ROOT = Path(__file__).resolve().parent.parent
GUIDE_TEXT = (ROOT / "INSTRUCTORS.md").read_text()
NOTEBOOKS = notebook_paths()
CODE_TEXT = "\n".join(p.read_text() for folder in ("course_utils", "scripts")
                      for p in sorted((ROOT / folder).rglob("*.py")))
NUMBER = re.compile(r"\d[\d,]*\.\d+(?:e[-+]\d+)?|\d{1,3}(?:,\d{3})+")


def section(number: str) -> str:
    """The guide's section of one notebook: from its '### NN ·' heading to the next heading of that level."""
    found = re.search(rf"^### {number} · .*?(?=^##+ |\Z)", GUIDE_TEXT, re.M | re.S)
    assert found, f"INSTRUCTORS.md has no '### {number} · ...' section"
    return found.group(0)


def block(text: str, title: str) -> str:
    found = re.search(rf"\*\*{title}\*\*\n\n(.*?)(?=\n\*\*|\Z)", text, re.S)
    assert found, f"no **{title}** list"
    return found.group(1)


def notebook_text(path: Path) -> tuple[set[str], str]:
    """A notebook's markdown headings, and everything its cells say and print."""
    nb = nbformat.read(path, as_version=4)
    headings, parts = set(), []
    for cell in nb.cells:
        parts.append(cell.source)
        if cell.cell_type == "markdown":
            headings |= {line.lstrip("#").strip() for line in cell.source.splitlines() if line.startswith("#")}
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if not k.startswith("image/"))
    return headings, "\n".join(parts)


def test_the_committed_run_times_are_what_the_script_generates_now():
    assert instructor_guide.current_block(GUIDE_TEXT) == instructor_guide.render(), (
        "INSTRUCTORS.md's run times differ from the notebooks' metadata.course or benchmarks/results/ "
        "(a notebook or a benchmark was refreshed): run `python scripts/instructor_guide.py` and commit INSTRUCTORS.md")
    assert instructor_guide.main(["--check"]) == 0


def test_the_readme_states_each_notebooks_measured_time():
    """The README's table shows what each notebook's metadata (offline) and the cpu-profile record measured, not a
    typed "< 2 min"."""
    readme = instructor_guide.README.read_text()
    rows = instructor_guide.README_ROW.findall(readme)
    assert len(rows) == len(instructor_guide.notebook_paths())
    for nb in instructor_guide.read_notebooks():
        row = next(r for r in rows if r[1] == nb["number"])
        assert row[2] == f"{nb['seconds']:.0f} s", (
            f"README's time for notebook {nb['number']} is {row[2]!r}, measured {nb['seconds']} s: "
            "run `python scripts/instructor_guide.py`")
        assert nb["cpu_seconds"] is not None, f"notebook {nb['number']} has no cpu-profile run recorded"
        assert row[3] == f"{nb['cpu_seconds']:.0f} s", (
            f"README's cpu-profile time for notebook {nb['number']} is {row[3]!r}, measured {nb['cpu_seconds']} s")


def test_check_fails_on_a_stale_guide_and_the_rewrite_fixes_it(tmp_path, monkeypatch, capsys):
    stale = GUIDE_TEXT.replace(instructor_guide.current_block(GUIDE_TEXT), "| 01 | 1.0 s | | |")
    guide = tmp_path / "INSTRUCTORS.md"
    guide.write_text(stale)
    monkeypatch.setattr(instructor_guide, "GUIDE", guide)
    readme = tmp_path / "README.md"
    readme.write_text(instructor_guide.README.read_text())
    monkeypatch.setattr(instructor_guide, "README", readme)
    assert instructor_guide.main(["--check"]) == 1
    assert "python scripts/instructor_guide.py" in capsys.readouterr().out
    assert guide.read_text() == stale, "--check changes nothing"
    assert instructor_guide.main([]) == 0
    assert guide.read_text() == GUIDE_TEXT
    assert instructor_guide.main(["--check"]) == 0


def test_the_table_holds_every_notebooks_measured_seconds_and_no_invented_ones():
    table = instructor_guide.render()
    cpu_record = json.loads(instructor_guide.CPU_RECORD.read_text())["notebooks"]
    for path in NOTEBOOKS:
        stamp = json.loads(path.read_text())["metadata"].get("course", {})
        row = next(line for line in table.splitlines() if f"(notebooks/{path.name})" in line)
        cells = [cell.strip() for cell in row.strip("|").split("|")][1:]
        for profile, cell in zip(instructor_guide.PROFILES, cells):
            if stamp.get("profile") == profile:
                assert cell.startswith(f"{stamp['run_seconds']:.1f} s"), (path.name, profile, cell)
            elif profile == "cpu":  # the recorded cpu-profile run
                assert cell.startswith(f"{cpu_record[path.name]['seconds']:.1f} s"), (path.name, profile, cell)
            else:
                assert cell.startswith("not measured yet: "), (path.name, profile, cell)
    assert "not measured yet: `bash scripts/gpu_check.sh OUT_DIR` on a GPU machine measures it" in table
    assert instructor_guide.GPU_CHECKED == gpu_check.NOTEBOOK  # the notebook gpu_check.sh runs


def test_the_benchmark_rows_come_from_the_results_files():
    table = instructor_guide.render()
    files = [p for p in sorted((ROOT / "benchmarks" / "results").glob("*.txt"))
             if '"benchmark": "train_real"' in p.read_text()]
    assert files, "benchmarks/results/ has train_real results"
    for path in files:
        report = instructor_guide.last_json_line(path)
        for run in report["runs"]:
            row = f"| `{path.name}` | {run['method']} | {run['steps']} x {report['config']['batch_size']} | " \
                  f"{run['train_seconds']:.1f} s"
            assert row in table, row
        assert f"CPU, {report['threads']} threads" in table
        assert f"`{path.read_text().splitlines()[0].strip()}`" in table  # how the file was made, as it says


def test_a_gpu_report_fills_the_gpu_column(tmp_path, monkeypatch):
    report = {"check": "gpu", "dry_run": False, "started_utc": "2027-01-01T00:00:00Z",
              "environment": {"gpu": {"name": "Tesla T4"}},
              "steps": [{"name": "notebook_06", "details": {"gpu_profile": True, "run_seconds": 98.7}}]}
    (tmp_path / "gpu").mkdir()
    (tmp_path / "gpu" / "report.json").write_text(json.dumps(report))
    (tmp_path / "dry").mkdir()
    (tmp_path / "dry" / "report.json").write_text(json.dumps({**report, "dry_run": True}))
    monkeypatch.setattr(instructor_guide, "RESULTS", tmp_path)
    monkeypatch.setattr(instructor_guide, "ROOT", tmp_path)
    table = instructor_guide.render()
    row = next(line for line in table.splitlines() if f"(notebooks/{gpu_check.NOTEBOOK})" in line)
    assert row.rstrip().endswith("| 98.7 s (1.6 min) on Tesla T4, the course's model standing in for the 8B "
                                 "(`gpu/report.json`) |")
    assert table.count("98.7 s") == 1, "a dry run is not a measurement"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_notebook_has_a_section_with_moments_knobs_and_questions(path):
    text = section(path.name[:2])
    assert f"(notebooks/{path.name})" in text, "the section links to its notebook"
    moments = re.findall(r"^\d+\. (.*)", block(text, "Moments to show"), re.M)
    assert 3 <= len(moments) <= 5, f"{path.name}: {len(moments)} moments"
    knobs = re.findall(r"^- ", block(text, "Knobs to turn"), re.M)
    assert knobs, f"{path.name}: no knobs"
    questions = re.findall(r"^- \*(.+?)\*", block(text, "Questions students ask"), re.M)
    assert 2 <= len(questions) <= 4, f"{path.name}: {len(questions)} questions"
    assert all(q.rstrip().endswith("?") for q in questions)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_moments_name_real_headings_and_quote_numbers_the_notebook_shows(path):
    headings, shown = notebook_text(path)
    moments = block(section(path.name[:2]), "Moments to show")
    for item in re.split(r"^\d+\. ", moments, flags=re.M)[1:]:
        named = re.findall(r"\*\*(.+?)\*\*", item)
        assert named, f"{path.name}: a moment without a section name: {item[:60]!r}"
        for heading in named:
            assert heading in headings, f"{path.name} has no heading {heading!r}"
    for number in NUMBER.findall(moments):
        assert number in shown, f"{path.name}: the guide quotes {number}, which the notebook does not show"


def test_the_readme_links_to_the_guide_in_its_instructors_part():
    readme = (ROOT / "README.md").read_text()
    instructors = readme.split("## For instructors", 1)[1].split("\n## ", 1)[0]
    assert "](INSTRUCTORS.md)" in instructors


def test_every_course_environment_variable_the_guide_names_exists_in_the_code():
    names = set(re.findall(r"\bCOURSE_[A-Z_]+\b", GUIDE_TEXT))
    assert {"COURSE_PROFILE", "COURSE_GPU_MODEL", "COURSE_CHECKPOINT_ROOT", "COURSE_CACHE"} <= names
    for name in names:
        assert f'"{name}"' in CODE_TEXT, f"the guide names {name}, which no code in course_utils/ or scripts/ reads"


def test_every_notebook_setting_the_guide_names_is_assigned_in_a_notebook():
    code = "\n".join(c.source for p in NOTEBOOKS for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
    named = set(re.findall(r"`([A-Z][A-Z_]{3,})(?: = [^`]*)?`", GUIDE_TEXT))
    settings = {name for name in named if not name.startswith(("COURSE_", "HF_"))}  # environment variables
    assert {"PROFILE", "STEPS", "START_OVER", "MOUNT_DRIVE"} <= settings
    for name in settings:
        assert re.search(rf"^{name} = ", code, re.M), f"no notebook sets {name}"
    from course_utils.runtime import PROFILES
    for value in re.findall(r'`PROFILE = "([a-z]+)"`', GUIDE_TEXT):
        assert value in (*PROFILES, "auto"), value


def fault_messages() -> list[str]:
    """The messages the faults table quotes (its second column's code spans)."""
    faults = GUIDE_TEXT.split("## When something fails in class", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ")[1] for line in faults.splitlines()
            if line.startswith("| ") and " | " in line and not line.startswith("| what failed")]
    return [m.group(2).strip() for row in rows for m in re.finditer(r"(``|`)(.+?)\1", row)]


def as_pattern(message: str) -> re.Pattern:
    """A quoted message as a pattern: '...' and '<a placeholder>' stand for what the code fills in."""
    pieces = [re.sub(r"<[^>]*>", "\x00", piece.strip()) for piece in message.split("...")]
    pattern = ".*?".join(re.escape(piece).replace("\x00", ".+?") for piece in pieces)
    return re.compile(pattern, re.S)


def test_the_profile_messages_the_guide_quotes_are_what_choose_profile_prints(monkeypatch, capsys):
    from course_utils import runtime
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    monkeypatch.setattr(runtime, "has_access", lambda model_id: (
        False, f"your token has no access to the gated {model_id} yet (ask for it on the model's page)"))
    t4, small = runtime.GPU("Tesla T4", 15.8, (7, 5)), runtime.GPU("Tesla K80", 12.0, (3, 7))
    cases = [("auto", runtime.Environment(colab=False, gpu=None, hub=False, token=False)),  # no network
             ("ofline", runtime.Environment(colab=False, gpu=None, hub=False, token=False))]  # a typo
    for gpu, token in [(None, True), (small, True), (t4, False), (t4, True)]:  # quota gone, small GPU, tokens
        cases += [(asked, runtime.Environment(colab=True, gpu=gpu, hub=True, token=token)) for asked in ("auto", "gpu")]
    printed = []
    for asked, env in cases:
        profile = runtime.choose_profile(asked, env=env)
        printed.append(capsys.readouterr().out + str(profile))
    said = "\n\n".join(printed)
    messages = fault_messages()
    assert len(messages) >= 10
    from_profiles = [m for m in messages if m.startswith(("Profile '", "Unknown profile", "The gpu profile can't"))
                     or "token" in m]
    assert len(from_profiles) >= 6
    for message in from_profiles:
        assert as_pattern(message).search(said), f"the guide quotes {message!r}; choose_profile says:\n{said}"


def test_the_other_messages_the_guide_quotes_are_in_the_code():
    """Messages printed while loading or training: each fixed part is in course_utils' source."""
    source = "\n".join(p.read_text() for p in sorted((ROOT / "course_utils").glob("*.py")))
    source = re.sub(r'"\s*\n\s*f?"', "", source)  # join string literals split over lines
    others = [m for m in fault_messages() if not m.startswith(("Profile '", "Unknown profile", "The gpu profile can't"))
              and "token" not in m]
    assert len(others) >= 4
    for message in others:
        parts = re.split(r"\.\.\.|<[^>]*>|~/\S+|\b(?:cpu|gpu|offline)\b", message)
        fixed = [p.strip(" .") for p in parts if len(p.strip(" .")) > 12]
        assert fixed, message
        for part in fixed:
            assert part in source, f"the guide quotes {part!r}, which course_utils does not print"


def outside_the_timings(text: str) -> str:
    return re.sub(re.escape(instructor_guide.START) + ".*?" + re.escape(instructor_guide.END), " ", text, flags=re.S)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_times_and_steps_the_guide_quotes_are_the_notebooks(path):
    """A time ('65 s') or a step ('after step 7') quoted anywhere in a notebook's section is one that notebook
    prints (offline outputs or the cpu record); both slipped once when a notebook was rerun."""
    found = re.search(rf"^### {path.name[:2]} · .*?(?=^##+ |\Z)", outside_the_timings(GUIDE_TEXT), re.M | re.S)
    _, shown = notebook_text(path)
    shown += json.loads((ROOT / "benchmarks/results/notebooks_cpu.json").read_text())["notebooks"][path.name]["outputs"]
    for quoted in re.findall(r"(?<![\w.])\d+(?:\.\d+)? s\b|\bstep \d+\b", found.group(0)):
        assert re.search(rf"(?<![\d.]){re.escape(quoted)}", shown), f"{path.name}: the guide quotes {quoted!r}"


def test_the_times_check_catches_a_stale_time():
    assert re.findall(r"(?<![\w.])\d+(?:\.\d+)? s\b|\bstep \d+\b", "80 steps took 65 s; killed after step 7, 0.7 s") \
        == ["65 s", "step 7", "0.7 s"]


def test_the_plans_fill_their_time_and_each_slot_holds_its_notebooks_run():
    from scripts import class_plans
    measured = {nb["number"]: nb for nb in instructor_guide.read_notebooks()}
    for title, (slots, budget) in class_plans.PLANS.items():
        assert sum(slot.minutes for slot in slots) == budget, title
        for slot in (s for s in slots if s.notebook):
            assert slot.notebook in measured, (title, slot.notebook)
            assert 60 * slot.minutes >= measured[slot.notebook]["seconds"], (title, slot.notebook)
    assert "**A 75-minute class** (75 of 75 minutes" in GUIDE_TEXT
    assert "**A 3-hour workshop** (180 of 180 minutes" in GUIDE_TEXT
