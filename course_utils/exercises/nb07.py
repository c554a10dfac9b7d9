"""Checkers for notebook 07, choosing LoRA's settings. The answers come from the committed sweeps
(benchmarks/results/lora_sweeps.json and lora_sweeps_smollm2.json) and from the configs (closed form)."""

from __future__ import annotations

import json
import math

from course_utils import claims
from course_utils.configs import load_config
from course_utils.exercises import choice, close, not_a_number, not_numbers, report, two_step
from course_utils.lora import lora_params
from course_utils.params import LINEAR_KINDS
from course_utils.runtime import repo_root
from course_utils.sweeps import SweepPoint

RESULTS = ("benchmarks", "results", "lora_sweeps.json")
REAL_RESULTS = ("benchmarks", "results", "lora_sweeps_smollm2.json")


def sweep_results(path: tuple[str, ...] = RESULTS) -> dict:
    """A committed sweep's results, by grid (the course model's by default)."""
    return json.loads(repo_root().joinpath(*path).read_text())["results"]


def best_lr(method: str, grid: str = "lr", path: tuple[str, ...] = RESULTS) -> float:
    """The learning rate with the lowest mean validation loss (over its seeds) in a learning-rate grid, for
    "lora" or "full"."""
    return claims.best(claims.group(sweep_results(path)[grid], method=method)).group["lr"]


def check_best_lora_lr(answer: float) -> bool:
    """The best learning rate for LoRA in the committed lr sweep (section 2's plot)."""
    lr = best_lr("lora")
    if not_a_number(answer):
        return False
    lrs = sorted({r["point"]["lr"] for r in sweep_results()["lr"]})
    hint = ("Read it off section 3's plot: the LoRA curve's lowest point. The sweep tried "
            f"{', '.join(f'{x:g}' for x in lrs)}.")
    if close(answer, best_lr("full"), rel=1e-3):
        hint = "That is full fine-tuning's best rate; LoRA's curve has its lowest point elsewhere."
    return report(close(answer, lr, rel=1e-3), f"{lr:g}: the LoRA curve's lowest validation loss.", hint)


def _budget() -> tuple[int, int, int]:
    """(q,v at r=16 on the 8B, the all-linear rank closest to it, that adapter's parameters)."""
    config = load_config("llama-3.1-8b")
    target = lora_params(config, 16, ["q_proj", "v_proj"])
    per_rank = lora_params(config, 1, list(LINEAR_KINDS))
    r = min(range(1, 65), key=lambda k: abs(k * per_rank - target))
    return target, r, r * per_rank


def check_budget_rank(answer: int) -> bool:
    """The whole rank r that gives an adapter on all seven projections of the 8B the parameter count closest to
    q,v at r = 16."""
    target, r, n = _budget()
    if not_a_number(answer, whole=True):
        return False
    hint = ("Count r (in + out) per projection for one layer: q and v at r = 16, then all seven at r = 1; "
            "the layers cancel out. Divide, then round to the nearest whole rank.")
    if answer is not None and abs(answer - 16 * 2 / 7) < 1:
        hint = "q and v are not the same size as gate, up and down: count r (in + out) for each projection."
    return report(answer == r, f"r = {r}: {n:,} parameters against q,v at r=16's {target:,}.", hint)


def check_budget_params(answer: int) -> bool:
    """The trainable parameters of that all-linear adapter (the rank of check_budget_rank) on the 8B."""
    target, r, n = _budget()
    if not_a_number(answer, whole=True):
        return False
    hint = (f"r times the all-linear adapter's parameters at r = 1 (use lora_params, or r (in + out) summed over "
            "the seven projections, times 32 layers).")
    if answer == target:
        hint = "That is q,v at r = 16 itself; the question asks for the all-linear adapter at the rank you found."
    return report(answer == n, f"{n:,}: {n / target:.0%} of q,v at r = 16.", hint)


def check_rslora_scale(answer: float) -> bool:
    """The factor on B A x with rsLoRA, alpha = 16 and r = 64 (LoraConfig(use_rslora=True))."""
    scale = 16 / math.sqrt(64)
    if not_a_number(answer):
        return False
    hint = "rsLoRA divides alpha by the square root of r, not by r."
    if close(answer, 16 / 64):
        hint = "That is LoRA's own alpha / r; rsLoRA divides by the square root of r."
    return report(close(answer, scale), f"16 / sqrt(64) = {scale:g}.", hint)


def check_real_lr_ratio(answer: float) -> bool:
    """On SmolLM2 (Going deeper, B): LoRA's best learning rate divided by full fine-tuning's."""
    lora, full = (best_lr(m, "smollm2-lr", REAL_RESULTS) for m in ("lora", "full"))
    if not_a_number(answer):
        return False
    hint = "Read the two stars of the SmolLM2 section's left plot, then divide LoRA's rate by full fine-tuning's."
    if close(answer, full / lora, rel=0.05):
        hint = "That is full fine-tuning's rate over LoRA's; the question asks for LoRA's over full's."
    return report(close(answer, lora / full, rel=0.05),
                  f"{lora:g} / {full:g} = {lora / full:.2g}: the '10x' of claim 1, on real weights.", hint)


# Exercise 6, diagnose: a classmate raised the rank with the habit alpha = 2r, at the rate tuned for r = 16
# ----------------------------------------------------------------------------------------------------------

ALL_SEVEN = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CLASSMATE_RANKS = (16, 128)  # their run that worked, and the one that did not: alpha = 2r, lr 0.01, seed 0
CLASSMATE_FIX = SweepPoint(r=128, alpha=32, targets=ALL_SEVEN, lr=1e-2)  # alpha kept at r = 16's value

CLASSMATE_BLAME = {
    "a": "r = 128 is close to the layers' width (192): a nearly full-rank adapter memorises the training "
         "examples, so the loss climbs.",
    "b": "alpha = 2r keeps the factor at 2 while B A x now sums 128 pieces, not 16: each step moves far more, "
         "so lr 0.01 is too high.",
    "c": "lr 0.01 is too low for r = 128: eight times the parameters share the same 40 steps, so each one "
         "learns too slowly.",
    "d": "A larger r draws A with more random values, so the model starts from a worse loss than at r = 16 "
         "and never recovers.",
}
_CLASSMATE_RIGHT = "b"


def classmate_runs() -> dict[int, dict]:
    """The classmate's two runs, by rank, from the committed sweep (its alpha-scaling grid: alpha = 2r, all seven
    projections, lr 0.01, seed 0)."""
    results = sweep_results()
    runs = {r: next(row for row in results["scaling"] if SweepPoint.from_dict(row["point"])
                    == SweepPoint(r=r, alpha=None, targets=ALL_SEVEN, lr=1e-2)) for r in CLASSMATE_RANKS}
    return runs


def check_classmate_rank(answer: str) -> bool:
    """Why the classmate's r = 128 run (alpha = 2r, the rate tuned at r = 16) broke down: a letter of
    CLASSMATE_BLAME."""
    hints = {"a": "Memorising lowers the training loss while the validation loss rises; here the training loss "
                  "itself jumps back up and stalls.",
             "c": "A rate too low gives a curve that falls slowly; r = 128's fell faster than r = 16's in its first "
                  "steps, then jumped back up.",
             "d": "Both curves start at the same loss: B starts at zero, so B A x = 0 at step 0 whatever r is "
                  "(notebook 03)."}
    blank = None
    if answer is None:
        blank = two_step("nb07.classmate_rank", "Two settings changed between the runs, r and alpha. Does r = "
                         "128's curve go wrong by moving too slowly or too far?", "It falls faster than r = 16's, "
                         "then jumps back up: steps too large. With alpha = 2r, what is the factor alpha / r at "
                         "r = 128, and what does it multiply? (Exercise 5.)")
    return choice(answer, CLASSMATE_BLAME, _CLASSMATE_RIGHT, "With alpha = 2r the factor stays 2 and B A x adds "
                  "up eight times more rank-one pieces, each moved by about the learning rate: the update grows "
                  "with r, and the rate tuned at r = 16 is too high at r = 128. Keep alpha fixed when you change "
                  "r (claim 3), or lower the rate; the cell trains the first fix.", hints, blank=blank)


# Multiple choice: what the habit alpha = 2r does when you change r (the notebook prints the options).
ALPHA_HABIT = {
    "a": "Nothing changes: the factor alpha / r is 2 at every rank, so the update B A x keeps the same size "
         "whatever r is.",
    "b": "It makes LoRA equal to full fine-tuning once r reaches the layer's width, so the rate found at a low "
         "rank still works.",
    "c": "B A x sums r rank-one pieces, each moved by Adam at about the learning rate: at a fixed factor, more "
         "pieces make a bigger update.",
    "d": "It halves the optimizer states' memory, so a higher rank fits on the same GPU and trains well at the "
         "same learning rate.",
}
_ALPHA_HABIT_RIGHT = "c"


def check_alpha_habit(answer: str) -> bool:
    """Why "alpha = 2r" is not the same as keeping alpha fixed when you change the rank."""
    hints = {"a": "The factor is constant, but what it multiplies is not: B A x is a sum of r pieces.",
             "b": "Rank r = width can express any update, but that says nothing about alpha's effect on training.",
             "d": "alpha is one number in a formula; it has no memory of its own."}
    return choice(answer, ALPHA_HABIT, _ALPHA_HABIT_RIGHT,
                  "With alpha fixed, alpha / r shrinks as r grows and offsets that growth, which is why the LoRA "
                  "paper could change r without re-tuning; rsLoRA argues 1 / r offsets too much at high rank and "
                  "divides by sqrt(r) instead.", hints)


def rank_after(step: int = 10, ranks: tuple[int, ...] = (1, 16, 128)) -> int:
    """Of `ranks`, the one with the lowest mean validation loss after `step` steps in the committed rank grid."""
    groups = [g for g in claims.group(sweep_results()["rank"]) if g["r"] in ranks]
    return min(groups, key=lambda g: g.at_step(step).mean)["r"]


def check_rank_prediction(answer: int) -> bool:
    """Predicted before section 4's plot: of r = 1, 16 and 128 (alpha fixed at 32), which learns fastest in the
    first 10 steps (the lowest validation loss after 10 steps)?"""
    if answer is None:
        return report(False, "", "Write your prediction in PREDICTION (1, 16 or 128) before you look at the plot, "
                                 "then run this cell.")
    if not_a_number(answer, whole=True):
        return False
    if answer not in (1, 16, 128):
        return report(False, "", "Answer with one of the three ranks: 1, 16 or 128.")
    fastest = rank_after()
    return report(answer == fastest, f"r = {fastest}: with alpha fixed at 32 the factor alpha / r is 32 at r = 1 "
                                     "and 0.25 at r = 128; early on, the factor sets the size of each step.",
                  "Not what the right plot shows at step 10. Look at section 2's table of factors: alpha / r at "
                  "each rank, with alpha fixed.")


def check_seed_prediction(prediction, new_loss: float, committed: list[float]) -> bool:
    """Predict, then run: the range (low, high) a fourth seed's validation loss falls in, read off section 3's
    error bar at that rate; `new_loss` is the fourth seed's, run live; `committed` the sweep's three."""
    if prediction is None:
        return report(False, "", "Write your prediction as two numbers, (low, high), before running the new seed.")
    if not_numbers(prediction):
        return False
    if len(prediction) != 2:
        return report(False, "", f"Expected two numbers, (low, high); got {len(prediction)}.")
    low, high = sorted(float(x) for x in prediction)
    width = max(committed) - min(committed)
    if high - low > 4 * width + 1e-9:
        return report(False, "", f"({low:g}, {high:g}) is {(high - low) / width:.0f}x the three seeds' spread: a "
                                 "range that wide can't be wrong, and says little. Aim for about the spread of the "
                                 "error bar, a bit wider.")
    inside = low <= new_loss <= high
    return report(inside, f"The fourth seed gave {new_loss:.4f}, inside ({low:g}, {high:g}). Three seeds' range "
                          f"({min(committed):.4f}-{max(committed):.4f}) predicts a new one roughly, not exactly.",
                  f"The fourth seed gave {new_loss:.4f}, outside ({low:g}, {high:g}). Three seeds are a small "
                  f"sample ({min(committed):.4f}-{max(committed):.4f}): a fourth can land outside their range, so "
                  "widen yours by about their spread.")


def dora_difference() -> str:
    """'a' if DoRA's best loss is below LoRA's on every seed, 'b' if above, 'c' if the ranges overlap."""
    groups = claims.group(sweep_results()["dora"])
    b = {m: claims.best([g for g in groups if g["method"] == m]).spread for m in ("lora", "dora")}
    return {True: "a", False: "b", None: "c"}[claims.lower(b["dora"], b["lora"])]


REAL_DIFFERENCE = {
    "a": "Real: at their best rates DoRA's loss is below LoRA's on every seed, so DoRA is better here.",
    "b": "Real: at their best rates DoRA's loss is above LoRA's on every seed, so LoRA is better here.",
    "c": "Not decided: the two ranges overlap, so the gap is smaller than what a seed alone can change.",
    "d": "Not decided: a difference counts only with a p-value, and three seeds are too few to compute one.",
}


def check_real_difference(answer: str) -> bool:
    """Going deeper, A (DoRA): is the gap between DoRA's and LoRA's best validation loss real, at three seeds?"""
    right = dora_difference()
    hints = {"a": "Compare the two error bars at each method's best rate: does every DoRA seed sit below every "
                  "LoRA seed?",
             "b": "Compare the two error bars at each method's best rate: does every DoRA seed sit above every "
                  "LoRA seed?",
             "c": "Compare the two error bars at each method's best rate: do they overlap?",
             "d": "This notebook's rule needs no p-value: it compares the ranges of the seeds."}
    return choice(answer, REAL_DIFFERENCE, right, "The rule of this notebook: a difference counts when the seeds' "
                  "ranges do not overlap; claim 6's verdict applies it.",
                  {k: v for k, v in hints.items() if k != right})
