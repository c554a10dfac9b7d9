"""Execute the course notebooks top to bottom with a fresh kernel, in the offline profile by default.

    python scripts/run_notebooks.py                   # all notebooks -> build/notebooks/, times printed
    python scripts/run_notebooks.py --inplace 01      # refresh the committed outputs of notebook 01
    COURSE_PROFILE=cpu python scripts/run_notebooks.py --record benchmarks/results/notebooks_cpu.json
                                                      # every notebook on SmolLM2: times and text outputs kept

Each executed notebook is stamped with a hash of its code cells (metadata.course.code_sha256), so a test can
tell when the code changed after the outputs were made. Widget state is stripped: it breaks GitHub's renderer.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebook_paths(selected: list[str] | None = None) -> list[Path]:
    """The course notebooks in order, or those whose file names start with one of `selected`."""
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if selected:
        paths = [p for p in paths if any(p.name.startswith(s) for s in selected)]
    return paths


def code_hash(nb) -> str:
    """sha256 of the code cells' sources: changes whenever the code does, not when the prose does."""
    code = "\n\x00".join(c.source for c in nb.cells if c.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def offline_env() -> dict[str, str]:
    """Environment for the kernel: the offline profile, no Hub, plain-text progress bars."""
    env = dict(os.environ)
    env.setdefault("COURSE_PROFILE", "offline")
    env.update(HF_HUB_OFFLINE="1", COURSE_TEXT_PROGRESS="1", PYTHONHASHSEED="0")
    return env


WIDGET_CELL_TIMEOUT = 120  # seconds: a cell that shows the course's widgets computes for a second or two


def shows_widgets(cell) -> bool:
    """Whether a code cell shows the course's ipywidgets: nbclient can miss such a cell's reply and wait for its
    whole timeout (jupyter/nbclient#312; seen on notebook 02), so these cells get a short one and, when it
    passes, the notebook runs again."""
    return cell.cell_type == "code" and "course_utils.widgets" in cell.source


def execute(path: Path, timeout: int = 600, retries: int = 2) -> tuple[nbformat.NotebookNode, float]:
    """Run a notebook with a fresh kernel (at most `timeout` s a cell); returns it and its wall time in seconds.

    Checkpoints and adapters the notebook saves go to a fresh temporary folder for every attempt, so a run
    never resumes from an earlier one's checkpoints.
    """
    env = offline_env()
    for attempt in range(retries + 1):
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                                timeout_func=lambda cell: WIDGET_CELL_TIMEOUT if shows_widgets(cell) else timeout,
                                resources={"metadata": {"path": str(path.parent)}})
        with tempfile.TemporaryDirectory(prefix="course-run-") as scratch:  # a fresh one for every attempt
            env["COURSE_CHECKPOINT_ROOT"] = scratch
            start = time.perf_counter()
            try:
                client.execute(env=env)  # nbclient hands env to KernelManager.start_kernel
                seconds = time.perf_counter() - start
                break
            except CellTimeoutError:
                # nbclient can wait forever for a reply that an idle kernel already sent when a cell displays
                # ipywidgets (jupyter/nbclient#312); a cell here never needs `timeout` s, so run the notebook again.
                if attempt == retries:
                    raise
                print(f"{path.name}: a cell got no reply within {timeout} s; running the notebook again", flush=True)
    stamp(nb, seconds, profile=env["COURSE_PROFILE"])
    return nb, seconds


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def outputs_text(nb) -> str:
    """Everything a notebook's outputs say in text (streams, plain text and HTML, tracebacks), not its pictures."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if not k.startswith("image/"))
            parts.extend(out.get("traceback", []))
    return "\n".join(parts)


def record(path: Path, runs: dict[str, tuple]) -> None:
    """Write what a run in one profile printed, per notebook (its code hash, seconds and text outputs, the day and
    the load average), into `path`, keeping the other notebooks' entries: the README's times for that profile and
    the prose check of tests/test_profile_numbers.py read it."""
    profile = os.environ.get("COURSE_PROFILE", "offline")
    saved = json.loads(path.read_text()) if path.exists() else {}
    notebooks = saved.get("notebooks", {}) if saved.get("profile") == profile else {}
    for name, (nb, seconds) in runs.items():
        notebooks[name] = {"code_sha256": code_hash(nb), "seconds": round(seconds, 1), "date": time.strftime("%Y-%m-%d"),
                           "load_average": round(os.getloadavg()[0], 2), "outputs": outputs_text(nb)}
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    path.write_text(json.dumps({"profile": profile,
                                "command": f"COURSE_PROFILE={profile} python scripts/run_notebooks.py --record {where}",
                                "cpu_threads": os.cpu_count(), "notebooks": dict(sorted(notebooks.items()))},
                               indent=1) + "\n")


def drop_widget_views(nb) -> None:
    """Remove live-widget views from the outputs: without the kernel that made them they can't be drawn, and
    GitHub, nbconvert and a notebook opened before running would show a raw repr or an error instead. What stays
    is each output's plain text and picture (the course's calculators give a sentence and their chart)."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data:
                del data[WIDGET_VIEW]
                out.get("metadata", {}).pop(WIDGET_VIEW, None)


def collapse_progress(nb) -> None:
    """Keep what a terminal would show: a text progress bar redraws its line with a carriage return, so each
    stretch of one stream is joined into one output and every line keeps only its last redraw (a viewer that
    ignores the carriage return would show each redraw on a line of its own)."""
    for cell in nb.cells:
        merged = []
        for out in cell.get("outputs", []):
            if merged and out.get("output_type") == "stream" and merged[-1].get("output_type") == "stream" \
                    and merged[-1].get("name") == out.get("name"):
                merged[-1]["text"] += out["text"]
            else:
                merged.append(out)
        for out in merged:
            if out.get("output_type") == "stream" and "\r" in out["text"]:
                out["text"] = "\n".join(line.rsplit("\r", 1)[-1] for line in out["text"].split("\n"))
        if "outputs" in cell:
            cell["outputs"] = merged


def stamp(nb, seconds: float, profile: str) -> None:
    """Record how the outputs were made (`profile`: the COURSE_PROFILE the kernel ran with), drop widget state and
    keep only the last redraw of each progress bar."""
    nb.metadata.pop("widgets", None)
    drop_widget_views(nb)
    collapse_progress(nb)
    nb.metadata["course"] = {
        "code_sha256": code_hash(nb),
        "profile": profile,
        "run_seconds": round(seconds, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="notebook file-name prefixes, e.g. 01 02 (default: all)")
    parser.add_argument("--inplace", action="store_true", help="write the outputs back into notebooks/")
    parser.add_argument("--out", default="build/notebooks", help="folder for executed copies (default %(default)s)")
    parser.add_argument("--record", help="also write each notebook's time and text outputs to this JSON file")
    args = parser.parse_args(argv)

    paths = notebook_paths(args.names)
    if not paths:
        print(f"No notebook matches {args.names}; the notebooks are in {NOTEBOOKS}.")
        return 1
    out = NOTEBOOKS if args.inplace else (ROOT / args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs: dict[str, tuple] = {}
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        nb, seconds = execute(path)
        runs[path.name] = (nb, seconds)
        nbformat.write(nb, out / path.name)
        print(f"  {seconds:6.1f} s  -> {out / path.name}", flush=True)
    times = {name: round(seconds, 1) for name, (_, seconds) in runs.items()}
    total = sum(times.values())
    print(f"{len(times)} notebooks in {total:.1f} s")
    if args.record:
        record(Path(args.record).resolve(), runs)
    if not args.inplace:
        (out.parent / "run_times.json").write_text(json.dumps({"seconds": times, "total": round(total, 1)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
