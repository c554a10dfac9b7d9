"""Notebook 07's exercise checkers: the right answer passes, wrong answers and answers of the wrong type get a
one-line "❌" sentence, the blank gets the hint, and no hint gives the answer away. The right answers are worked out
here from the committed sweep and from PEFT on the meta device, not from the checkers."""

from __future__ import annotations

import functools
import json
import math

from peft import LoraConfig, get_peft_model

from benchmarks import lora_sweeps
from course_utils.architecture import empty_model
from course_utils.configs import load_config
from course_utils.exercises import nb07
from tests.test_exercises import ODD, assert_right, assert_wrong_words, verdict

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def peft_count(r, targets):
    model = get_peft_model(empty_model(load_config("llama-3.1-8b")), LoraConfig(r=r, lora_alpha=r, target_modules=targets),
                           low_cpu_mem_usage=True)
    return model.get_nb_trainable_parameters()[0]


def mean_best_lr(rows: list[dict], method: str) -> float:
    """The rate with the lowest validation loss averaged over its seeds, worked out here without course_utils."""
    by_lr: dict[float, list[float]] = {}
    for r in rows:
        if r["point"]["method"] == method:
            by_lr.setdefault(r["point"]["lr"], []).append(r["val_loss"])
    return min(by_lr, key=lambda lr: sum(by_lr[lr]) / len(by_lr[lr]))


def test_best_lora_lr_is_read_off_the_committed_sweep(capsys):
    rows = json.loads(lora_sweeps.RESULTS.read_text())["results"]["lr"]
    lora, full = mean_best_lr(rows, "lora"), mean_best_lr(rows, "full")
    assert_right(capsys, nb07.check_best_lora_lr, lora)
    if full != lora:
        assert "full fine-tuning" in assert_wrong_words(capsys, nb07.check_best_lora_lr, full)
    assert_wrong_words(capsys, nb07.check_best_lora_lr, lora * 1.7)
    assert "section 3" in verdict(capsys, nb07.check_best_lora_lr, None)[1]
    for odd in ODD:  # none of them is a learning rate the sweep tried
        assert_wrong_words(capsys, nb07.check_best_lora_lr, odd)


def test_budget_rank_and_params_match_peft_on_the_8b(capsys):
    target = peft_count(16, ["q_proj", "v_proj"])
    per_rank = peft_count(1, ALL)
    r = round(target / per_rank)
    assert abs(r * per_rank - target) <= abs((r + 1) * per_rank - target)
    assert abs(r * per_rank - target) <= abs((r - 1) * per_rank - target)
    assert_right(capsys, nb07.check_budget_rank, r)
    assert_right(capsys, nb07.check_budget_rank, float(r))
    for wrong in (r + 1, r - 1, 16, 5):
        if wrong != r:
            assert_wrong_words(capsys, nb07.check_budget_rank, wrong, f"r = {r}")
    n = peft_count(r, ALL)
    assert_right(capsys, nb07.check_budget_params, n)
    assert "q,v at r = 16 itself" in assert_wrong_words(capsys, nb07.check_budget_params, target, f"{n:,}")
    assert_wrong_words(capsys, nb07.check_budget_params, n + 1, f"{n:,}")
    for checker in (nb07.check_budget_rank, nb07.check_budget_params):
        for odd in ODD[:6]:
            assert_wrong_words(capsys, checker, odd)
        assert verdict(capsys, checker, None)[0] is False


def test_rslora_scale(capsys):
    assert_right(capsys, nb07.check_rslora_scale, 16 / math.sqrt(64))
    assert "alpha / r" in assert_wrong_words(capsys, nb07.check_rslora_scale, 0.25)
    assert_wrong_words(capsys, nb07.check_rslora_scale, 4)
    for odd in ODD[:6]:
        assert_wrong_words(capsys, nb07.check_rslora_scale, odd)


def test_alpha_habit_is_c(capsys):
    assert_right(capsys, nb07.check_alpha_habit, "c")
    assert_right(capsys, nb07.check_alpha_habit, "(C)")
    for wrong in "abd":
        assert_wrong_words(capsys, nb07.check_alpha_habit, wrong, "(c)")
    lengths = sorted((len(text), letter) for letter, text in nb07.ALPHA_HABIT.items())
    assert lengths[-1][1] != "c" or lengths[-1][0] < 1.2 * lengths[-2][0], "the right option stands out by length"
    assert "letter" in verdict(capsys, nb07.check_alpha_habit, None)[1]
    for odd in ODD:
        if not isinstance(odd, str):
            assert_wrong_words(capsys, nb07.check_alpha_habit, odd)


def test_real_lr_ratio_is_read_off_the_smollm2_sweep(capsys):
    rows = json.loads(lora_sweeps.REAL_RESULTS.read_text())["results"]["smollm2-lr"]
    best = {m: mean_best_lr(rows, m) for m in ("lora", "full")}
    ratio = best["lora"] / best["full"]
    assert_right(capsys, nb07.check_real_lr_ratio, ratio)
    assert_right(capsys, nb07.check_real_lr_ratio, round(ratio, 1))
    assert "LoRA's over full's" in assert_wrong_words(capsys, nb07.check_real_lr_ratio, 1 / ratio)
    assert_wrong_words(capsys, nb07.check_real_lr_ratio, ratio * 3)
    assert "SmolLM2 section" in verdict(capsys, nb07.check_real_lr_ratio, None)[1]
    for odd in ODD[:6]:
        assert_wrong_words(capsys, nb07.check_real_lr_ratio, odd)


def test_rank_prediction_is_the_fastest_rank_after_10_steps(capsys):
    rows = json.loads(lora_sweeps.RESULTS.read_text())["results"]["rank"]
    at10: dict[int, list[float]] = {}
    for r in rows:
        at10.setdefault(r["point"]["r"], []).append(dict(map(tuple, r["eval_curve"]))[10])
    fastest = min((1, 16, 128), key=lambda r: sum(at10[r]) / len(at10[r]))
    assert_right(capsys, nb07.check_rank_prediction, fastest)
    for wrong in {1, 16, 128} - {fastest}:
        assert_wrong_words(capsys, nb07.check_rank_prediction, wrong, f"r = {fastest}")
    assert "before you look" in verdict(capsys, nb07.check_rank_prediction, None)[1]
    for odd in (3, "one", -1, 2.5):
        assert verdict(capsys, nb07.check_rank_prediction, odd)[0] is False


def test_seed_prediction_checks_the_range_against_the_new_run(capsys):
    three = [0.15, 0.16, 0.17]
    check = functools.partial(nb07.check_seed_prediction, new_loss=0.155, committed=three)
    ok, out = verdict(capsys, check, (0.14, 0.18))
    assert ok and "inside" in out
    outside = functools.partial(nb07.check_seed_prediction, new_loss=0.13, committed=three)
    ok, out = verdict(capsys, outside, (0.18, 0.14))  # either order
    assert not ok and "outside" in out and "widen" in out
    ok, out = verdict(capsys, check, (0.0, 10.0))
    assert not ok and "says little" in out
    for blank in (None, 0.15, ("a", "b"), (1, 2, 3)):
        assert verdict(capsys, check, blank)[0] is False


def test_real_difference_follows_the_committed_dora_runs(capsys):
    rows = json.loads(lora_sweeps.RESULTS.read_text())["results"]["dora"]
    best = {m: mean_best_lr(rows, m) for m in ("lora", "dora")}
    seeds = {m: [r["val_loss"] for r in rows if r["point"]["method"] == m and r["point"]["lr"] == best[m]]
             for m in best}
    right = "a" if max(seeds["dora"]) < min(seeds["lora"]) else "b" if min(seeds["dora"]) > max(seeds["lora"]) else "c"
    assert_right(capsys, nb07.check_real_difference, right)
    for wrong in set("abcd") - {right}:
        assert_wrong_words(capsys, nb07.check_real_difference, wrong, f"({right})")
    lengths = sorted(len(text) for text in nb07.REAL_DIFFERENCE.values())
    assert lengths[-1] < 1.2 * lengths[-2]  # no option stands out by its length


def classmate_rows() -> dict[tuple[int, float | None, float], list[dict]]:
    """The alpha-scaling grid's runs on all seven projections, by (r, alpha, lr), read here without course_utils."""
    rows = json.loads(lora_sweeps.RESULTS.read_text())["results"]["scaling"]
    by_point: dict[tuple[int, float | None, float], list[dict]] = {}
    for row in rows:
        p = row["point"]
        if p["method"] == "lora" and p["scaling"] == "alpha/r" and sorted(p["targets"]) == sorted(ALL):
            by_point.setdefault((p["r"], p["alpha"], p["lr"]), []).append(row)
    return by_point


def test_classmate_runs_show_what_the_exercise_says():
    """Exercise 6's story holds in the committed sweep: alpha = 2r at lr 0.01 trains at r = 16 and breaks down at
    r = 128 (not from the start, not slowly, not by memorising); a lower rate, or alpha kept fixed, trains r = 128."""
    rows = classmate_rows()
    r16, r128 = rows[(16, None, 0.01)][0], rows[(128, None, 0.01)][0]
    assert nb07.classmate_runs() == {16: r16, 128: r128}
    assert r128["val_loss"] > 10 * r16["val_loss"]
    assert r128["train_curve"][0] == r16["train_curve"][0]  # (d): the same start, B = 0
    assert min(r128["train_curve"][:3]) < min(r16["train_curve"][:3])  # (c): faster than r = 16 at first ...
    assert max(r128["train_curve"][3:]) > 2 * min(r128["train_curve"][:3])  # ... then back up: steps too large
    assert min(r128["train_curve"][-5:]) > 10 * max(r16["train_curve"][-5:])  # (a): no memorising either
    assert rows[(128, None, 0.003)][0]["val_loss"] < 2 * r16["val_loss"]  # a lower rate trains r = 128
    fixed = [row["val_loss"] for row in rows[(128, 16, 0.01)]]
    assert len(fixed) == 3 and max(fixed) < 2 * r16["val_loss"]  # alpha fixed: the rate carries over


def test_classmate_fix_keeps_alpha_and_the_rate():
    fix = nb07.CLASSMATE_FIX
    assert (fix.method, fix.r, fix.lr, fix.scaling) == ("lora", 128, 0.01, "alpha/r")
    assert fix.lora_alpha == 2 * 16 and sorted(fix.targets) == sorted(ALL)  # r = 16's alpha, kept


def test_classmate_rank_is_b_with_hints_in_two_steps(capsys):
    from course_utils.exercises import reset_hints
    reset_hints()
    assert_right(capsys, nb07.check_classmate_rank, "b")
    assert_right(capsys, nb07.check_classmate_rank, "(B)")
    for wrong, words in (("a", "emoris"), ("c", "too low"), ("d", "same loss")):
        assert words in assert_wrong_words(capsys, nb07.check_classmate_rank, wrong, "(b)", "alpha = 2r")
    ok, first = verdict(capsys, nb07.check_classmate_rank, None)
    assert ok is False and "alpha / r" not in first and "too large" not in first
    ok, second = verdict(capsys, nb07.check_classmate_rank, None)
    assert ok is False and "alpha / r" in second and "second hint" in second and "(b)" not in second
    lengths = sorted((len(text), letter) for letter, text in nb07.CLASSMATE_BLAME.items())
    assert lengths[-1][1] != "b", "the right option is the longest"
    assert lengths[-1][0] < 1.2 * lengths[0][0], "an option stands out by its length"
    for odd in ODD:
        if not isinstance(odd, str):
            assert_wrong_words(capsys, nb07.check_classmate_rank, odd)
