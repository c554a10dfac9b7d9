"""Two teaching plans for INSTRUCTORS.md, a 75-minute class and a 3-hour workshop: which sections of which
notebook, minutes each, and what to run before class instead of live (and why). `render` writes them as tables
with each notebook's measured run time beside its slot; `scripts/instructor_guide.py` puts them in the guide."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

SWEEPS = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "lora_sweeps.json"


class Slot(NamedTuple):
    notebook: str  # "01"; "" for a break
    minutes: int   # talk, live cells and questions: the room's time, not the computer's
    show: str      # the sections, by their headings' numbers
    before: str    # what to run before class instead of live, and why ("" when everything runs live)


CLASS_75 = [
    Slot("01", 10, "2 (the printed 8B), 3 (one decoder layer, drawn), 7 (a real model's next token)", ""),
    Slot("02", 10, "1 (the parameter count by hand), 3 (the lecture's 32 GB), 4 (what training adds)",
         "nothing; the calculator of section 6 only if a student asks: it needs a running kernel"),
    Slot("03", 15, "2 (A and B, and B = 0 at the start), 4 (how small is small), 6 (train an adapter; W "
         "stays the same)", ""),
    Slot("04", 8, "3 (get_peft_model on the 8B, meta device), 7 (adapters on a model with weights; switching "
         "them; saving megabytes)", ""),
    Slot("05", 10, "5 (the NF4 levels from the normal curve), 7 (the error of each 4-bit type), 10 (the cost)", ""),
    Slot("06", 17, "3 (the loss mask), 7 (one step by hand, checked against train_step), 8 (training, live), "
         "9 (after), 11 (which merge)", "the cpu profile's run (SmolLM2): minutes of training, too long to "
         "watch; show its committed numbers in the README instead"),
    Slot("07", 5, "8 (the verdicts and the decision table)", "never the sweep (`benchmarks/lora_sweeps.py`, "
         "{sweep}): the notebook reads its committed results"),
]

WORKSHOP_180 = [
    Slot("01", 20, "every section; exercises 1-3", ""),
    Slot("02", 20, "every section; the calculator of section 6 with the room choosing the knobs", ""),
    Slot("", 10, "break", ""),
    Slot("03", 25, "every section of the main path; exercises 1-2", ""),
    Slot("04", 15, "every section of the main path but 5; exercise 5, the room predicting first", ""),
    Slot("05", 20, "sections 1-3 and 5-10; exercise 3's prediction", ""),
    Slot("", 10, "break", ""),
    Slot("06", 35, "every section of the main path; students run the offline profile themselves, then switch "
         "PROFILE to \"cpu\" in pairs if the room has time", "the cpu profile on the projector: run it before class"),
    Slot("07", 15, "sections 1-2 and 8; one claim of the room's choice; exercises 6 and 7",
         "never the sweep ({sweep}): the notebook reads its committed results"),
    Slot("08", 10, "sections 1 and 4 (what each GPU holds; the well-known cases)",
         "section 5's real distributed run only where the machine has time: it starts processes"),
]

PLANS = {"A 75-minute class": (CLASS_75, 75), "A 3-hour workshop": (WORKSHOP_180, 180)}


def render(notebooks: list[dict]) -> list[str]:
    """Markdown lines: one table per plan, each notebook's measured run time (offline and cpu profile, from
    read_notebooks' rows) beside its slot, and the minutes added up."""
    measured = {nb["number"]: nb for nb in notebooks}
    sweeps = json.loads(SWEEPS.read_text())
    sweep = f"{sum(map(len, sweeps['results'].values()))} runs, {sweeps['minutes']:.0f} minutes when it was last run"

    def run_time(number: str) -> str:
        nb = measured.get(number, {})
        parts = [f"{nb[key]:.0f} s {name}" for key, name in (("seconds", "offline"), ("cpu_seconds", "cpu"))
                 if nb.get(key) is not None]
        return ", ".join(parts) or "not measured yet"

    out = []
    for title, (slots, budget) in PLANS.items():
        out += ["", f"**{title}** ({sum(s.minutes for s in slots)} of {budget} minutes; a whole notebook's run "
                "time, measured, beside its slot):", "",
                "| minutes | notebook | show | Run all takes | run before class instead |", "|---|---|---|---|---|"]
        for slot in slots:
            name = f"{slot.notebook}" if slot.notebook else "-"
            timed = run_time(slot.notebook) if slot.notebook else "-"
            out.append(f"| {slot.minutes} | {name} | {slot.show} | {timed} | {slot.before.format(sweep=sweep) or '-'} |")
    return out
