"""LoRA's settings measured on the course's task: the sweep behind notebook 07.

    python benchmarks/lora_sweeps.py                    # every grid: runs the points the results file lacks
    python benchmarks/lora_sweeps.py --fresh            # every point again (188 runs)
    python benchmarks/lora_sweeps.py --grid lr rank     # some grids only
    python benchmarks/lora_sweeps.py --check            # rerun a few committed points, compare (~1 min)
    python benchmarks/lora_sweeps.py --model smollm2    # the lr and forgetting claims on SmolLM2 (~40 min)
    python benchmarks/lora_sweeps.py --model smollm2 --check   # rerun one of its points (~8 min)

Every point fine-tunes a fresh copy of the course's small model (assets/course-llama) through the course's loop
(`course_utils.sweeps.run_point`: the same data order, steps and evaluation for every point of a seed) and
records the validation loss (teacher-forced, on 200 validation answers), exact match (100 generated records),
the loss on text like the base's pretraining (forgetting), trainable parameters, seconds per step and one step's
memory. The settings a verdict of notebook 07 compares run with each of SEEDS (another batch order and adapter
init), so the notebook can show their spread and call a difference inside it inconclusive
(`course_utils.claims`).

The grids, one per claim of notebook 07:
  lr       LoRA (r=16 on all seven projections) and full fine-tuning at seven learning rates; 3 seeds
  rank     r = 1 ... 128 at one learning rate, alpha fixed at 32 (alpha/r: the LoRA paper's rule); 3 seeds
  scaling  r = 2, 16, 128 x four learning rates x three rules: alpha fixed (alpha/r), alpha = 2r, rsLoRA;
           3 seeds for alpha fixed (the claim's rule) and for r=128 at 3e-3 under rsLoRA, one for the rest
  targets  the same parameter budget (~15 k per layer) on q,v / q,k,v,o / MLP / all seven, three rates; 3 seeds
  dora     DoRA and LoRA at r=16 on all seven projections, four learning rates; 3 seeds
  smollm2-lr  (--model smollm2) LoRA and full fine-tuning of SmolLM2-135M-Instruct, three rates each, 16 steps x 8,
           one seed, the loss on paragraphs of the course's own prose as forgetting (no exact match: generation is
           slow there); written to results/lora_sweeps_smollm2.json, which notebook 07's section 9 reads

By default a run keeps the points the results file already holds (measured on the same data: its fingerprint)
and runs the rest, saving after each point; the file's "runs" list says what each invocation added, with its
versions and minutes, and its "minutes" is the compute of every point it holds. A point takes 6-25 s on a quiet
2-core CPU; SmolLM2's grid took 38.7 min. Results are deterministic on a CPU for a given torch and thread count:
rerun with the same thread count, every loss came back identical; with another count they agree within TOLERANCE
(relative). Times vary with the machine. Each results file records a fingerprint of the data it was measured on
(`sweeps.fingerprint`).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from course_utils import sweeps  # noqa: E402
from course_utils.params import LINEAR_KINDS  # noqa: E402
from course_utils.sweeps import SweepPoint  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "lora_sweeps.json"
TOLERANCE = 0.02  # on every loss, relative (absolute near zero: sweeps.same_loss): what `--check` allows between runs
ALL = tuple(LINEAR_KINDS)
ATTENTION, MLP = ("q_proj", "k_proj", "v_proj", "o_proj"), ("gate_proj", "up_proj", "down_proj")
LRS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
SEEDS = (0, 1, 2)


def seeded(points: list[SweepPoint], decides=lambda point: True) -> list[SweepPoint]:
    """Each point with seed 0, and with every seed of SEEDS where `decides(point)`: the points a verdict of
    notebook 07 compares run 3 times (other data orders and adapter inits), so it can show their spread."""
    return [replace(p, seed=s) for p in points for s in SEEDS if s == 0 or decides(p)]


def grid(name: str) -> list[SweepPoint]:
    """The points of one grid (see the docstring)."""
    if name == "lr":
        return seeded([SweepPoint(method="lora", r=16, alpha=32, targets=ALL, lr=lr) for lr in LRS]
                      + [SweepPoint(method="full", lr=lr) for lr in LRS])
    if name == "rank":
        return seeded([SweepPoint(r=r, alpha=32, targets=ALL, lr=3e-3) for r in (1, 2, 4, 8, 16, 32, 64, 128)])
    if name == "scaling":  # seeds where the verdict compares: alpha fixed at every rate; r=128 at 3e-3
        rules = (dict(alpha=16), dict(alpha=None), dict(alpha=16, scaling="alpha/sqrt(r)"))
        return seeded([SweepPoint(r=r, targets=ALL, lr=lr, **rule) for rule in rules for r in (2, 16, 128)
                       for lr in (1e-3, 3e-3, 1e-2, 3e-2)],
                      lambda p: (p.alpha == 16 and p.scaling == "alpha/r") or (p.r == 128 and p.lr == 3e-3
                                                                              and p.alpha == 16))
    if name == "targets":  # r chosen so each set has ~15 k adapter parameters per layer (course model)
        sets = ((("q_proj", "v_proj"), 16), (ATTENTION, 8), (MLP, 9), (ALL, 4))
        return seeded([SweepPoint(r=r, alpha=2 * r, targets=t, lr=lr) for t, r in sets for lr in (3e-3, 1e-2, 3e-2)])
    if name == "dora":
        return seeded([SweepPoint(method=m, r=16, alpha=32, targets=ALL, lr=lr) for m in ("lora", "dora")
                       for lr in (1e-3, 3e-3, 1e-2, 3e-2)])
    if name == "smollm2-lr":  # the lr and forgetting claims on real weights: 6 points, one seed; on 2 CPU cores
        # a LoRA point took 443 s (16 steps x 8, partly while another job ran), full fine-tuning takes longer
        return ([SweepPoint(method="lora", r=16, alpha=32, targets=ALL, lr=lr, steps=16, batch_size=8)
                 for lr in (1e-3, 3e-3, 1e-2)]
                + [SweepPoint(method="full", lr=lr, steps=16, batch_size=8) for lr in (1e-4, 3e-4, 1e-3)])
    raise ValueError(f"unknown grid {name!r}: use one of {', '.join(GRIDS + REAL_GRIDS)}")


GRIDS = ("lr", "rank", "scaling", "targets", "dora")
REAL_GRIDS = ("smollm2-lr",)  # --model smollm2: SmolLM2-135M-Instruct, its own results file
REAL_RESULTS = ROOT / "benchmarks" / "results" / "lora_sweeps_smollm2.json"
# (grid, point): what --check and the tests rerun
CHECK_POINTS = (("lr", SweepPoint(method="lora", r=16, alpha=32, targets=ALL, lr=3e-3)),
                ("lr", SweepPoint(method="full", lr=3e-3)),
                ("dora", SweepPoint(method="dora", r=16, alpha=32, targets=ALL, lr=1e-2)))
REAL_CHECK_POINTS = (("smollm2-lr", SweepPoint(method="lora", r=16, alpha=32, targets=ALL, lr=3e-3, steps=16,
                                               batch_size=8)),)  # --model smollm2 --check: ~8 min on 2 cores


def versions() -> dict:
    import peft
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}


def run_grids(names: list[str], task, log=print, cheap: bool = False, kept: dict | None = None,
              save=lambda results: None) -> dict[str, list[dict]]:
    """Run every point of the named grids, reusing the rows of `kept` (grid -> rows) for points it already holds;
    `save(results)` after each new point, so a stopped run loses one point at most. `cheap` (the real model): no
    exact match, no memory step."""
    out = {}
    for name in names:
        points = grid(name)
        old = {SweepPoint.from_dict(r["point"]): r for r in (kept or {}).get(name, [])}
        out[name] = []
        for i, point in enumerate(points):
            if point in old:
                out[name].append(old[point])
                continue
            t0 = time.perf_counter()
            out[name].append(sweeps.run_point(point, task, measure_memory=not cheap, exact_match=not cheap))
            out[name][-1]["seconds"] = round(time.perf_counter() - t0, 1)  # the whole point, evaluation included
            log(f"  {name} {i + 1}/{len(points)}  {point.label():<55} val loss {out[name][-1]['val_loss']:.4f}"
                f"  ({time.perf_counter() - t0:.0f} s)")
            save(out)
    return out


def table(results: dict[str, list[dict]]) -> str:
    lines = [f"{'grid':<8} {'setting':<58}{'params':>9}{'val loss':>10}{'EM':>6}{'forget':>8}{'s/step':>8}"]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"{name:<8} {r['label']:<58}{r['trainable_params']:>9,}{r['val_loss']:>10.4f}"
                         f"{r.get('exact_match', float('nan')):>6.0%}{r['forget_loss_after']:>8.3f}"
                         f"{r['seconds_per_step']:>8.3f}")
    return "\n".join(lines)


def differences(new: dict, old: dict) -> list[str]:
    """Where a rerun point's losses differ from the committed ones by more than TOLERANCE (`sweeps.same_loss`)."""
    problems = []
    for key in ("val_loss", "forget_loss_after", "forget_loss_before"):
        a, b = new[key], old[key]
        if not sweeps.same_loss(a, b, TOLERANCE):
            problems.append(f"{new['label']}: {key} {a:.5f}, committed {b:.5f}")
    for (s, a), (_, b) in zip(new["eval_curve"], old["eval_curve"]):
        if not sweeps.same_loss(a, b, TOLERANCE):
            problems.append(f"{new['label']}: validation loss at step {s} {a:.5f}, committed {b:.5f}")
    return problems


def check(task, path: Path = RESULTS, points=CHECK_POINTS, cheap: bool = False) -> list[str]:
    """Rerun `points` and compare them with the committed results; returns the differences found."""
    saved = json.loads(path.read_text())
    committed = saved["results"]
    problems = []
    measured_on = saved["task"].get("data_sha256")  # files written before it existed have none
    if measured_on is not None and measured_on != sweeps.fingerprint(task):
        problems.append(f"the data differ from those {path.name} was measured on (another fingerprint)")
    for name, point in points:
        old = next(r for r in committed[name] if SweepPoint.from_dict(r["point"]) == point)
        new = sweeps.run_point(point, task, measure_memory=False,
                               exact_match=not cheap)
        print(f"  {new['label']:<58} val loss {new['val_loss']:.5f} (committed {old['val_loss']:.5f})")
        problems += differences(new, old)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("course", "smollm2"), default="course",
                        help="course: the course's small model (default); smollm2: SmolLM2-135M-Instruct, "
                             "a reduced grid (lr and forgetting), written to " + REAL_RESULTS.name)
    parser.add_argument("--grid", nargs="+", choices=GRIDS + REAL_GRIDS, default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default %(default)s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON file to write (default: the committed one)")
    parser.add_argument("--check", action="store_true", help="rerun a few committed points and compare them")
    parser.add_argument("--fresh", action="store_true", help="run every point again (by default the points already "
                                                             "in the results file, on the same data, are kept)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    real = args.model == "smollm2"
    args.grid = args.grid or list(REAL_GRIDS if real else GRIDS)
    if real and args.out == RESULTS:
        args.out = REAL_RESULTS
    task = sweeps.real_task() if real else sweeps.course_task()
    if args.check:
        problems = (check(task, REAL_RESULTS, REAL_CHECK_POINTS, cheap=True) if real else check(task))
        print("\n".join(problems) if problems else f"All rerun points match the committed results within "
                                                   f"{TOLERANCE:.0%}.")
        return 1 if problems else 0
    command = "python benchmarks/lora_sweeps.py" + (" --model smollm2" if real else "")
    previous = json.loads(args.out.read_text()) if args.out.exists() else None
    if previous is not None and (args.fresh or previous["task"].get("data_sha256") != sweeps.fingerprint(task)):
        previous = None  # other data (or asked for): every point again
    kept = previous["results"] if previous else {}
    runs = previous.get("runs", []) if previous else []
    if previous and not runs:  # a file from before runs were recorded: one run, every point it holds
        runs = [{"versions": previous["versions"], "grids": list(kept), "date": None,
                 "new_points": sum(map(len, kept.values())), "minutes": previous["minutes"]}]
    start = time.perf_counter()

    def save(results: dict) -> None:
        every = kept | results  # the grids not run this time stay as they were
        this_run = {"versions": versions(), "grids": args.grid, "date": time.strftime("%Y-%m-%d"),
                    "new_points": sum(r not in kept.get(g, []) for g, rows in results.items() for r in rows),
                    "minutes": round((time.perf_counter() - start) / 60, 1)}
        payload = {"benchmark": "lora_sweeps", "command": command, "model": task.name, "versions": versions(),
                   "minutes": round(sum(r["seconds"] for rows in every.values() for r in rows) / 60, 1),
                   "tolerance": TOLERANCE, "seeds": list(SEEDS),
                   "task": {"train_examples": len(task.train), "validation_examples": len(task.validation),
                            "exact_match_examples": 0 if real else task.exact_match_n,
                            "eval_every": task.eval_every, "data_sha256": sweeps.fingerprint(task),
                            "defaults": asdict(SweepPoint())},
                   "runs": runs + [this_run], "results": every}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(payload, indent=1) + "\n")

    results = run_grids(args.grid, task, cheap=real, kept=kept, save=save)
    save(results)
    print("\n" + table(results))
    print(f"\n{sum(len(r) for r in results.values())} points, {(time.perf_counter() - start) / 60:.1f} min for "
          f"the new ones; wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
