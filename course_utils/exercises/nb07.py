"""Checkers for notebook 07, choosing LoRA's settings. The answers come from the committed sweeps
(benchmarks/results/lora_sweeps.json and lora_sweeps_smollm2.json) and from the configs (closed form)."""

from __future__ import annotations

import json
import math

from course_utils.configs import load_config
from course_utils.exercises import choice, close, not_a_number, report
from course_utils.lora import lora_params
from course_utils.params import LINEAR_KINDS
from course_utils.runtime import repo_root

RESULTS = ("benchmarks", "results", "lora_sweeps.json")
REAL_RESULTS = ("benchmarks", "results", "lora_sweeps_smollm2.json")


def sweep_results(path: tuple[str, ...] = RESULTS) -> dict:
    """A committed sweep's results, by grid (the course model's by default)."""
    return json.loads(repo_root().joinpath(*path).read_text())["results"]


def best_lr(method: str, grid: str = "lr", path: tuple[str, ...] = RESULTS) -> float:
    """The learning rate with the lowest validation loss in a learning-rate grid, for "lora" or "full"."""
    rows = [r for r in sweep_results(path)[grid] if r["point"]["method"] == method]
    return min(rows, key=lambda r: r["val_loss"])["point"]["lr"]


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
    """On SmolLM2 (section 9): LoRA's best learning rate divided by full fine-tuning's."""
    lora, full = (best_lr(m, "smollm2-lr", REAL_RESULTS) for m in ("lora", "full"))
    if not_a_number(answer):
        return False
    hint = "Read the two stars of section 9's left plot, then divide LoRA's rate by full fine-tuning's."
    if close(answer, full / lora, rel=0.05):
        hint = "That is full fine-tuning's rate over LoRA's; the question asks for LoRA's over full's."
    return report(close(answer, lora / full, rel=0.05),
                  f"{lora:g} / {full:g} = {lora / full:.2g}: the '10x' of claim 1, on real weights.", hint)


# Multiple choice: what the habit alpha = 2r does when you change r (the notebook prints the options).
ALPHA_HABIT = {
    "a": "Nothing: the factor alpha / r is 2 at every rank, so the update B A x keeps its size when r grows.",
    "b": "The factor alpha / r stays 2, yet the update B A x is a sum over r rank-one pieces; with Adam each "
         "piece moves at about the learning rate, so a higher rank makes bigger updates, and the best "
         "learning rate moves with r.",
    "c": "It makes LoRA equal to full fine-tuning once r reaches the layer's width.",
    "d": "It halves the memory of the optimizer states.",
}
_ALPHA_HABIT_RIGHT = "b"


def check_alpha_habit(answer: str) -> bool:
    """Why "alpha = 2r" is not the same as keeping alpha fixed when you change the rank."""
    hints = {"a": "The factor is constant, but what it multiplies is not: B A x is a sum of r pieces.",
             "c": "Rank r = width can express any update, but that says nothing about alpha's effect on training.",
             "d": "alpha is one number in a formula; it has no memory of its own."}
    return choice(answer, ALPHA_HABIT, _ALPHA_HABIT_RIGHT,
                  "With alpha fixed, alpha / r shrinks as r grows and offsets that growth, which is why the LoRA "
                  "paper could change r without re-tuning; rsLoRA argues 1 / r offsets too much at high rank and "
                  "divides by sqrt(r) instead.", hints)
