"""Notebook 07's verdict rules (course_utils.claims), on made-up sweeps where the right verdict is known, and on
the committed sweeps."""

from __future__ import annotations

import json

import pytest

from benchmarks import lora_sweeps
from course_utils import claims
from course_utils.claims import HOLDS, INCONCLUSIVE, NOT, PARTLY, Spread


def row(method="lora", lr=1e-3, seed=0, val=1.0, forget=1.0, r=16, seconds=1.0, **point) -> dict:
    return {"point": {"method": method, "lr": lr, "r": r, "seed": seed, "alpha": 32, "scaling": "alpha/r",
                      "targets": ["q_proj"]} | point,
            "val_loss": val, "forget_loss_after": forget, "forget_loss_before": 0.5, "seconds_per_step": seconds,
            "eval_curve": [[0, 8.0], [10, val * 2], [40, val]]}


def seeds(values, **kw) -> list[dict]:
    """One row per value, seeds 0, 1, 2..."""
    return [row(seed=i, val=v, **kw) for i, v in enumerate(values)]


def test_spread_and_the_overlap_rule():
    a, b = Spread.of([1.0, 1.1, 1.2]), Spread.of([1.3, 1.4, 1.5])
    assert (a.mean, a.low, a.high, a.n) == (pytest.approx(1.1), 1.0, 1.2, 3)
    assert claims.lower(a, b) is True and claims.lower(b, a) is False
    assert claims.lower(a, Spread.of([1.15, 1.3, 1.4])) is None  # overlapping ranges decide nothing
    assert claims.lower(Spread.of([1.0]), Spread.of([9.0])) is None  # nor does one seed
    assert str(Spread.of([2.0])) == "2 (1 seed)"


def test_group_gathers_seeds_and_filters():
    rows = seeds([1, 2, 3], lr=1e-3) + seeds([4, 5, 6], lr=1e-2) + seeds([7], method="full", lr=1e-3)
    groups = claims.group(rows)
    assert [(g["method"], g["lr"], len(g.rows)) for g in groups] == [("lora", 1e-3, 3), ("lora", 1e-2, 3),
                                                                       ("full", 1e-3, 1)]
    assert [g["lr"] for g in claims.group(rows, method="lora")] == [1e-3, 1e-2]
    assert groups[1].at_step(10) == Spread.of([8.0, 10.0, 12.0])


def test_best_knows_ties_and_edges():
    rows = seeds([3, 3.1, 3.2], lr=1e-4) + seeds([1, 1.1, 1.2], lr=1e-3) + seeds([1.15, 1.3, 1.4], lr=1e-2) \
        + seeds([5, 5, 5], lr=1e-1)
    b = claims.best(claims.group(rows))
    assert b.group["lr"] == 1e-3 and not b.at_edge
    assert sorted(g["lr"] for g in b.ties) == [1e-3, 1e-2]
    assert claims.rates(b) == "0.001 (tied with 0.01)"
    edge = claims.best(claims.group(rows[:6]))  # 1e-3 is now the top of the grid
    assert edge.at_edge and claims.rates(edge) == "0.001 (edge)"


def lr_sweep(lora_best: float, full_best: float, lrs=(1e-5, 1e-4, 1e-3, 1e-2, 1e-1)) -> list[dict]:
    """U-shaped curves with clear minima at the given rates."""
    out = []
    for method, top in (("lora", lora_best), ("full", full_best)):
        for lr in lrs:
            base = 1.0 + abs(lrs.index(lr) - lrs.index(top))
            out += seeds([base, base + 0.05, base + 0.1], method=method, lr=lr)
    return out


def test_claim1_holds_fails_and_says_inconclusive():
    assert claims.claim1_lr(claims.group(lr_sweep(1e-2, 1e-3))).verdict == HOLDS  # 10x
    assert claims.claim1_lr(claims.group(lr_sweep(1e-3, 1e-3))).verdict == NOT  # 1x
    assert claims.claim1_lr(claims.group(lr_sweep(1e-1, 1e-2))).verdict == INCONCLUSIVE  # LoRA's best at the edge
    one_seed = [r for r in lr_sweep(1e-2, 1e-3) if r["point"]["seed"] == 0]
    assert claims.claim1_lr(claims.group(one_seed)).verdict == INCONCLUSIVE


def test_claim2_margin_with_its_seeds():
    def ranks(step10: dict[int, list[float]]) -> list[dict]:
        out = []
        for r, values in step10.items():
            for i, v in enumerate(values):
                x = row(r=r, seed=i, val=1.0)
                x["eval_curve"] = [[0, 8.0], [10, v], [40, 1.0]]
                out.append(x)
        return out
    close_ = ranks({1: [1.0, 1.01, 1.02], 128: [1.1, 1.12, 1.13]})
    far = ranks({1: [1.0, 1.01, 1.02], 128: [2.0, 2.1, 2.2]})
    straddling = ranks({1: [1.0, 1.01, 1.02], 128: [1.1, 1.2, 1.4]})
    assert claims.claim2_rank(claims.group(close_)).verdict == HOLDS
    assert claims.claim2_rank(claims.group(far)).verdict == NOT
    assert claims.claim2_rank(claims.group(straddling)).verdict == INCONCLUSIVE


def test_claim5_one_curve_or_not():
    full = []
    for lr, val, forget in ((1e-4, 4.0, 1.0), (1e-3, 2.0, 2.0), (1e-2, 1.0, 3.0), (1e-1, 3.0, 9.0)):
        full += [row(method="full", lr=lr, seed=i, val=val + d, forget=forget + d) for i, d in enumerate((0, .01, .02))]
    curve = claims.group(full)

    def sweep(offset: float) -> list[dict]:  # LoRA's points on full fine-tuning's curve, moved up by `offset`
        out = list(full)
        for lr, val in ((1e-3, 3.5), (1e-2, 2.5), (1e-1, 1.5), (1.0, 3.0)):
            f = claims.forgetting_at(curve, val + 0.01).mean + offset
            out += [row(lr=lr, seed=i, val=val + d, forget=f + d) for i, d in enumerate((0, .01, .02))]
        return out
    same, apart = (claims.claim5_forgetting(claims.group(sweep(k))) for k in (0.0, 1.0))
    assert same[1].verdict == HOLDS and "against full FT" in same[1].numbers
    assert apart[1].verdict == NOT
    assert same[0].verdict == HOLDS  # on one curve, learning less is forgetting less
    assert apart[0].verdict == PARTLY  # learns less on every seed, but forgets more at its best rate
    assert claims.forgetting_at(curve, 9.0) is None  # outside the curve


def test_claim6_and_its_paired_step_time():
    rows = []
    for method, vals, seconds in (("lora", (1.0, 1.1, 1.2), 1.0), ("dora", (1.5, 1.6, 1.7), 1.2)):
        for lr, shift in ((1e-3, 1.0), (1e-2, 0.0), (1e-1, 2.0)):
            rows += [row(method=method, lr=lr, seed=i, val=v + shift, seconds=seconds) for i, v in enumerate(vals)]
    verdict, time = claims.claim6_dora(claims.group(rows))
    assert verdict.verdict == NOT and time.mean == pytest.approx(1.2) and time.n == 9


@pytest.fixture(scope="module")
def committed():
    return json.loads(lora_sweeps.RESULTS.read_text())["results"]


def test_committed_sweep_has_three_seeds_where_verdicts_compare(committed):
    for name in ("lr", "rank", "targets", "dora"):
        assert {len(g.rows) for g in claims.group(committed[name])} == {3}, name
    fixed = claims.group(committed["scaling"], alpha=16, scaling="alpha/r")
    assert {len(g.rows) for g in fixed} == {3}


def test_verdicts_on_the_committed_sweeps(committed):
    verdicts = [claims.claim1_lr(claims.group(committed["lr"])), claims.claim2_rank(claims.group(committed["rank"])),
                claims.claim3_scaling(claims.group(committed["scaling"]))[0],
                *claims.claim5_forgetting(claims.group(committed["lr"])),
                claims.claim6_dora(claims.group(committed["dora"]))[0]]
    assert all(v.verdict in (HOLDS, PARTLY, NOT, INCONCLUSIVE) and v.numbers for v in verdicts)
    real = claims.group(json.loads(lora_sweeps.REAL_RESULTS.read_text())["results"]["smollm2-lr"])
    assert {v.verdict for v in (claims.claim1_lr(real), *claims.claim5_forgetting(real))} == {INCONCLUSIVE}
