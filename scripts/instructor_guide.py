"""Rewrite the run-time tables of INSTRUCTORS.md (and README.md's time column) from what was measured.

    python scripts/instructor_guide.py           # rewrite the part between the two timings markers
    python scripts/instructor_guide.py --check   # exit 1 (and say so) when INSTRUCTORS.md is not what it would write

What it reads:
- every notebook's `metadata.course.run_seconds` and `metadata.course.profile`, which `scripts/run_notebooks.py`
  stamps when it executes a notebook; the profile picks the column. It also reads the line notebook 06's
  training cell prints ("80 steps in 65 s ..."), so the guide says how long the live training takes.
- `benchmarks/results/notebooks_cpu.json`: each notebook's run time and text outputs in the cpu profile (SmolLM2),
  written by `COURSE_PROFILE=cpu python scripts/run_notebooks.py --record benchmarks/results/notebooks_cpu.json`.
- `benchmarks/results/*.txt`: the closing JSON line of each `benchmarks/train_real.py` run (SmolLM2-135M-Instruct
  on a CPU, the cpu profile's training preset), and the first line of each file, which says how it was run.
- `benchmarks/results/**/report.json` written by `scripts/gpu_check.sh` on a GPU machine (none is committed yet):
  notebook 06's run time in the gpu profile.
A profile that nothing has measured is said to be "not measured yet", with the command that measures it.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

try:
    from scripts import class_plans
except ImportError:  # run as `python scripts/instructor_guide.py`
    import class_plans

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "INSTRUCTORS.md"
NOTEBOOKS = ROOT / "notebooks"
RESULTS = ROOT / "benchmarks" / "results"
START = "<!-- timings:start -->"
END = "<!-- timings:end -->"
COMMAND = "python scripts/instructor_guide.py"
PROFILES = ("offline", "cpu", "gpu")
TRAINING_LINE = re.compile(r"^(\d+) steps in (\d+) s\b", re.M)
CPU_RECORD = RESULTS / "notebooks_cpu.json"
GPU_CHECKED = "06_training_a_qlora_adapter.ipynb"  # the notebook scripts/gpu_check.sh runs (its NOTEBOOK)


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def notebook_title(nb: dict, path: Path) -> str:
    """The title of the notebook's first cell without its number: '# 01 · The Llama 3.1 architecture'."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "markdown":
            first = "".join(cell.get("source", "")).strip().splitlines()[0]
            return re.sub(r"^#+\s*\d+\s*[·.:-]?\s*", "", first).strip()
    return path.stem


def stream_text(nb: dict) -> str:
    return "\n".join("".join(out.get("text", "")) for cell in nb.get("cells", [])
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")


def training_of(text: str) -> tuple[int, int] | None:
    """(steps, seconds) from the line notebook 06's training cell prints, or None."""
    found = TRAINING_LINE.search(text)
    return (int(found.group(1)), int(found.group(2))) if found else None


def read_notebooks() -> list[dict]:
    """Number, file, title, the profile its outputs were made in, its run time, and a training line if any; and
    its run in the cpu profile from CPU_RECORD (`cpu_seconds`, `cpu_training`), where there is one."""
    record = json.loads(CPU_RECORD.read_text())["notebooks"] if CPU_RECORD.exists() else {}
    rows = []
    for path in notebook_paths():
        nb = json.loads(path.read_text())
        stamp = nb.get("metadata", {}).get("course", {})
        cpu = record.get(path.name, {})
        rows.append({"number": path.name[:2], "file": path.name, "title": notebook_title(nb, path),
                     "profile": stamp.get("profile"), "seconds": stamp.get("run_seconds"),
                     "training": training_of(stream_text(nb)),
                     "cpu_seconds": cpu.get("seconds"), "cpu_training": training_of(cpu.get("outputs", ""))})
    return rows


def last_json_line(path: Path) -> dict | None:
    lines = [line for line in path.read_text().splitlines() if line.startswith("{")]
    try:
        return json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        return None


def read_benchmarks() -> list[dict]:
    """Each benchmarks/results/*.txt with a closing train_real JSON line: its first line and its runs."""
    found = []
    for path in sorted(RESULTS.glob("*.txt")):
        report = last_json_line(path)
        if not report or report.get("benchmark") != "train_real":
            continue
        found.append({"file": path.name, "how": path.read_text().splitlines()[0].strip(), "report": report})
    return found


def read_gpu_reports() -> list[dict]:
    """Notebook 06 in the gpu profile, from scripts/gpu_check.sh reports committed under benchmarks/results/."""
    found = []
    for path in sorted(RESULTS.glob("**/report.json")):
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError:
            continue
        if report.get("check") != "gpu" or report.get("dry_run"):
            continue
        gpu = (report.get("environment") or {}).get("gpu") or {}
        for step in report.get("steps", []):
            details = step.get("details") or {}
            if step.get("name") == "notebook_06" and details.get("gpu_profile") and details.get("run_seconds"):
                found.append({"file": str(path.relative_to(ROOT)), "seconds": details["run_seconds"],
                              "gpu": gpu.get("name", "a GPU"), "when": report.get("started_utc", "")})
    return found


def cpu_preset_differences(config: dict) -> list[str]:
    """How a train_real run's settings differ from the cpu profile's preset (training.PRESETS['cpu'])."""
    sys.path.insert(0, str(ROOT))
    from course_utils.params import LINEAR_KINDS
    from course_utils.training import PRESETS
    preset = PRESETS["cpu"]
    wanted = {"steps": preset.steps, "batch_size": preset.batch_size, "lr": preset.lr,
              "max_length": preset.max_length, "dropout": preset.lora_dropout, "top_layers": preset.lora_top_layers,
              "targets": "all-linear" if tuple(preset.lora_targets) == tuple(LINEAR_KINDS) else "attention"}
    return [f"{key} {config.get(key)} (preset: {value})" for key, value in wanted.items() if config.get(key) != value]


def seconds(value: float) -> str:
    return f"{value:.1f} s" + (f" ({value / 60:.1f} min)" if value >= 90 else "")


def percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def render() -> str:
    """The text that belongs between the markers."""
    notebooks, benchmarks, gpu_reports = read_notebooks(), read_benchmarks(), read_gpu_reports()
    qlora_train = [run["train_seconds"] for b in benchmarks for run in b["report"]["runs"]
                   if run["method"] == "qlora" and not cpu_preset_differences(b["report"]["config"])]
    out = [f"_Generated by `{COMMAND}` from each notebook's `metadata.course` (stamped by "
           "`scripts/run_notebooks.py` when it runs the notebook) and from `benchmarks/results/`; "
           "do not edit by hand: rerun the command after refreshing a notebook or a benchmark._", "",
           "Whole notebook, top to bottom with a fresh kernel:", "",
           "| notebook | offline | cpu | gpu |", "|---|---|---|---|"]
    totals = {p: 0.0 for p in PROFILES}
    counted = {p: 0 for p in PROFILES}
    for nb in notebooks:
        cells = {}
        for profile in PROFILES:
            if nb["profile"] == profile and nb["seconds"] is not None:
                text = seconds(nb["seconds"])
                if nb["training"]:
                    text += f"; of it, the training cell: {nb['training'][0]} steps in {nb['training'][1]} s"
                totals[profile] += nb["seconds"]
                counted[profile] += 1
            elif profile == "offline":
                text = f"not measured yet: `python scripts/run_notebooks.py --inplace {nb['number']}` measures it"
            elif profile == "cpu" and nb["cpu_seconds"] is not None:
                text = seconds(nb["cpu_seconds"]) + " (`benchmarks/results/notebooks_cpu.json`)"
                if nb["cpu_training"]:
                    text += (f"; of it, the training cell: {nb['cpu_training'][0]} steps in "
                             f"{nb['cpu_training'][1]} s")
                totals[profile] += nb["cpu_seconds"]
                counted[profile] += 1
            elif profile == "cpu":
                text = f"not measured yet: `COURSE_PROFILE=cpu python scripts/run_notebooks.py {nb['number']}` measures it"
                if nb["training"] and qlora_train:
                    low, high = min(qlora_train), max(qlora_train)
                    span = seconds(low) if low == high else f"{low:.1f}-{high:.1f} s"
                    text += f"; its QLoRA training alone: {span} (benchmarks below)"
            else:
                runs = gpu_reports if nb["file"] == GPU_CHECKED else []
                if runs:
                    text = "; ".join(f"{seconds(r['seconds'])} on {r['gpu']}, the course's model standing in for "
                                     f"the 8B (`{r['file']}`)" for r in runs)
                elif nb["file"] == GPU_CHECKED:
                    text = "not measured yet: `bash scripts/gpu_check.sh OUT_DIR` on a GPU machine measures it"
                else:
                    text = "not measured yet: no GPU has run it (see below)"
            cells[profile] = text
        link = f"[{nb['number']} {nb['title']}](notebooks/{nb['file']})"
        out.append(f"| {link} | {cells['offline']} | {cells['cpu']} | {cells['gpu']} |")
    total_cells = [f"{seconds(totals[p])}, {counted[p]} of {len(notebooks)} notebooks" if counted[p] else "-"
                   for p in PROFILES]
    out.append(f"| all notebooks | {' | '.join(total_cells)} |")
    out += ["", "The metadata records the profile and the seconds, not the machine. A notebook's own first cell "
            "gives a time per profile too; where no row above backs it, it is an estimate. "
            "`scripts/run_notebooks.py` keeps the Hub off, so the cpu profile it measures loads SmolLM2 from its "
            "local copy.", "",
            "The gpu column: `bash scripts/gpu_check.sh OUT_DIR` runs notebook 06 in the gpu profile with the "
            "course's model standing in for the 8B and writes its time to `OUT_DIR/report.json` (commit it under "
            "`benchmarks/results/` and rerun this script); the other notebooks run in the gpu profile with "
            "`COURSE_PROFILE=gpu COURSE_GPU_MODEL=<a local model folder> python scripts/run_notebooks.py` on a GPU "
            "machine (the runner keeps the Hub off)."]
    if benchmarks:
        out += ["", "Notebook 06's training in the cpu profile, on SmolLM2-135M-Instruct "
                "(`python benchmarks/train_real.py`; the notebook trains the QLoRA row):", "",
                "| file | method | steps x batch | training | scoring the 200 test requests, before / after | "
                "exact match after: test / new phrasings | measured on |",
                "|---|---|---|---|---|---|---|"]
        for b in benchmarks:
            report, config = b["report"], b["report"]["config"]
            machine = (f"CPU, {report.get('threads')} threads, load average {report.get('load_before')} before, "
                       f"{report.get('load_after')} after")
            for run in report["runs"]:
                scoring = " / ".join("not run" if run.get(k) is None else f"{run[k]['seconds']:.1f} s"
                                     for k in ("test_before", "test_after"))
                out.append(f"| `{b['file']}` | {run['method']} | {run['steps']} x {config.get('batch_size')} | "
                           f"{seconds(run['train_seconds'])} | {scoring} | {percent(run.get('exact_match_after'))} / "
                           f"{percent(run.get('heldout_exact_match_after'))} | {machine} |")
        out += ["", "How each file was made (its first line):", ""]
        for b in benchmarks:
            differs = cpu_preset_differences(b["report"]["config"])
            note = "the cpu preset's settings" if not differs else "not the cpu preset: " + ", ".join(differs)
            out.append(f"- `{b['file']}` ({note}): `{b['how']}`")
    out += ["", "### Two plans: a 75-minute class and a 3-hour workshop", "",
            "Which sections to show, and what to run before class instead of live (`scripts/class_plans.py`). "
            "A notebook's run time is the computer's share of its slot; the rest is the room's: reading, talking, "
            "exercises. Run every notebook once before class (see Before class), so that nothing waits for a "
            "download or a conversion.", *class_plans.render(notebooks)]
    return "\n".join(out)


def rewrite(text: str, block: str) -> str:
    """`text` with the part between the markers replaced by `block`."""
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        raise ValueError(f"{GUIDE.name} needs one {START} line and, after it, one {END} line")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    return f"{head}{START}\n{block}\n{END}{tail}"


def current_block(text: str) -> str:
    """What the guide holds between the markers now."""
    return text.split(START, 1)[1].split(END, 1)[0].strip("\n")


README = ROOT / "README.md"
README_ROW = re.compile(r"^(\| (\d\d) \| \[[^\]]+\]\(notebooks/[^)]+\) \| [^|]+ \| )([^|]+) \| ([^|]+)( \| .*)$",
                        re.M)


def readme_times(text: str, notebooks: list[dict]) -> str:
    """README.md with its notebook table's two time columns set to each notebook's measured run time in the
    offline profile and in the cpu profile."""
    offline = {nb["number"]: nb["seconds"] for nb in notebooks if nb["profile"] == "offline" and nb["seconds"]}
    cpu = {nb["number"]: nb["cpu_seconds"] for nb in notebooks if nb["cpu_seconds"]}

    def shown(value) -> str:
        return f"{value:.0f} s" if value is not None else "not measured yet"

    def cell(match: re.Match) -> str:
        number = match.group(2)
        return f"{match.group(1)}{shown(offline.get(number))} | {shown(cpu.get(number))}{match.group(5)}"

    return README_ROW.sub(cell, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 when INSTRUCTORS.md is stale; change nothing")
    args = parser.parse_args(argv)
    stale = []
    for path, make in ((GUIDE, lambda t: rewrite(t, render())), (README, lambda t: readme_times(t, read_notebooks()))):
        text = path.read_text()
        wanted = make(text)
        if wanted == text:
            continue
        stale.append(path.name)
        if not args.check:
            path.write_text(wanted)
            print(f"rewrote the run times in {path.name}")
    if args.check and stale:
        print(f"{' and '.join(stale)} stale: the run times are not what was measured. Run `{COMMAND}`.")
        return 1
    print("the run times are up to date" if not stale or args.check else "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
