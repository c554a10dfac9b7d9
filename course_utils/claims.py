"""Notebook 07's claims judged from a seeded sweep (`benchmarks/lora_sweeps.py`).

A sweep row is one run: one setting, one seed. `group` gathers the seeds of each setting; `Spread` is what they
give for one number (mean, lowest, highest). The rules below turn spreads into verdicts, and every rule says
"inconclusive" where the data cannot decide: two ranges that overlap (a difference smaller than the
seed-to-seed spread), a best value at the edge of the grid (the optimum may lie beyond it), or fewer than
`MIN_SEEDS` seeds. The plots draw each setting's mean with its range as an error bar.
"""

from __future__ import annotations

from dataclasses import dataclass

HOLDS, PARTLY, NOT, INCONCLUSIVE = "holds", "holds partly", "does not hold here", "inconclusive"
MIN_SEEDS = 3  # fewer seeds than this decide nothing


@dataclass(frozen=True)
class Spread:
    """One number over the seeds of one setting."""
    mean: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> "Spread":
        return cls(sum(values) / len(values), min(values), max(values), len(values))

    def __str__(self) -> str:
        if self.n == 1:
            return f"{self.mean:.4g} (1 seed)"
        return f"{self.mean:.4g} ({self.low:.4g}-{self.high:.4g}, {self.n} seeds)"


def lower(a: Spread, b: Spread) -> bool | None:
    """True if `a` is below `b` on every seed (the ranges do not overlap), False if above, None if undecided:
    the ranges overlap, or either has fewer than MIN_SEEDS seeds."""
    if min(a.n, b.n) < MIN_SEEDS or (a.low <= b.high and b.low <= a.high):
        return None
    return a.high < b.low


@dataclass
class Group:
    """The runs of one setting, one per seed."""
    point: dict          # the setting, without its seed
    rows: list[dict]

    def spread(self, key: str = "val_loss") -> Spread:
        return Spread.of([r[key] for r in self.rows])

    def at_step(self, step: int) -> Spread:
        """The validation loss after `step` optimizer steps."""
        return Spread.of([dict(map(tuple, r["eval_curve"]))[step] for r in self.rows])

    def __getitem__(self, setting: str):
        return self.point[setting]


def group(rows: list[dict], **where) -> list[Group]:
    """The rows gathered by setting (seed left out), in the sweep's order, keeping those whose point matches
    `where` (e.g. method="full")."""
    groups: dict[str, Group] = {}
    for row in rows:
        point = {k: v for k, v in row["point"].items() if k != "seed"}
        if all(point[k] == v for k, v in where.items()):
            groups.setdefault(repr(sorted(point.items())), Group(point, [])).rows.append(row)
    return list(groups.values())


@dataclass
class Best:
    """The setting with the lowest mean of `key` among groups that differ in `x`, and what can't be told from it."""
    group: Group
    ties: list[Group]    # the groups whose range overlaps the best's (with MIN_SEEDS seeds or more each)
    at_edge: bool        # the best value of `x` is the lowest or highest of the grid
    key: str = "val_loss"

    @property
    def spread(self) -> Spread:
        return self.group.spread(self.key)


def best(groups: list[Group], x: str = "lr", key: str = "val_loss") -> Best:
    """The best group by mean `key`, the groups tied with it, and whether its `x` sits at the grid's edge."""
    if not groups:
        raise ValueError("no runs to choose from")
    top = min(groups, key=lambda g: g.spread(key).mean)
    ties = [g for g in groups if g is top or (min(g.spread(key).n, top.spread(key).n) >= MIN_SEEDS
                                              and lower(g.spread(key), top.spread(key)) is None)]
    values = sorted(g[x] for g in groups)
    return Best(top, ties, top[x] in (values[0], values[-1]) and len(values) > 1, key)


def ratio_range(a: Spread, b: Spread) -> tuple[float, float]:
    """The smallest and largest a / b that the two ranges allow."""
    return a.low / b.high, a.high / b.low


@dataclass
class Verdict:
    """A claim's verdict and the numbers it rests on."""
    claim: str
    verdict: str
    numbers: str

    def __str__(self) -> str:
        return f"Claim {self.claim}: {self.verdict}. {self.numbers}"


def claim1_lr(groups: list[Group]) -> Verdict:
    """LoRA's best learning rate is about 10x full fine-tuning's. The rule: holds if every ratio of a LoRA rate
    to a full fine-tuning rate among the tied best ones is within 5x-20x (the grid steps by ~3x, so 10x is one
    point); does not hold if none is; inconclusive if some are, or a best is at the grid's edge."""
    b = {m: best([g for g in groups if g["method"] == m]) for m in ("lora", "full")}
    ratios = sorted({f"{lo['lr'] / fu['lr']:.2g}": lo["lr"] / fu["lr"] for lo in b["lora"].ties
                     for fu in b["full"].ties}.items(), key=lambda item: item[1])
    inside = [5 <= r <= 20 for _, r in ratios]
    few = min(x.spread.n for x in b.values()) < MIN_SEEDS
    verdict = (INCONCLUSIVE if few or b["lora"].at_edge or b["full"].at_edge or len(set(inside)) > 1
               else HOLDS if all(inside) else NOT)
    return Verdict("1", verdict, f"best rate LoRA {rates(b['lora'])}, full FT {rates(b['full'])}: "
                                 f"{' or '.join(f'{text}x' for text, _ in ratios)}{edge_note(b.values())}")


def rates(b: Best) -> str:
    """The best rate and what qualifies it: '0.01', '0.01 (tied with 0.003)', '0.03 (edge)', '0.01 (1 seed)'."""
    notes = [f"{b.spread.n} seed" if b.spread.n < MIN_SEEDS else None,
             "tied with " + ", ".join(f"{g['lr']:g}" for g in b.ties if g is not b.group)
             if len(b.ties) > 1 and b.spread.n >= MIN_SEEDS else None,
             "edge" if b.at_edge else None]
    notes = [n for n in notes if n]
    return f"{b.group['lr']:g}" + (f" ({'; '.join(notes)})" if notes else "")


def edge_note(bests) -> str:
    return " (a best sits at the grid's edge)" if any(b.at_edge for b in bests) else ""


def claim2_rank(groups: list[Group], step: int = 10, margin: float = 0.25) -> Verdict:
    """On a small task the rank hardly matters early. The rule: after `step` steps (a quarter of the run), holds if
    every rank's loss is surely within `margin` of the best rank's (the largest ratio the ranges allow), does not
    hold if some rank's is surely further, inconclusive otherwise."""
    spreads = {g["r"]: g.at_step(step) for g in groups}
    best_r = min(spreads, key=lambda r: spreads[r].mean)
    worst_r = max(spreads, key=lambda r: spreads[r].mean)
    ranges = {r: ratio_range(s, spreads[best_r]) for r, s in spreads.items()}
    if min(s.n for s in spreads.values()) < MIN_SEEDS:
        verdict = INCONCLUSIVE
    elif all(hi <= 1 + margin for _, hi in ranges.values()):
        verdict = HOLDS
    elif any(lo > 1 + margin for lo, _ in ranges.values()):
        verdict = NOT
    else:
        verdict = INCONCLUSIVE
    furthest = max(hi for _, hi in ranges.values())
    return Verdict("2", verdict, f"after {step} steps the best rank is r={best_r} ({spreads[best_r]}); the worst by "
                                 f"mean, r={worst_r}, is {spreads[worst_r].mean / spreads[best_r].mean - 1:.0%} "
                                 f"above it, at least {ranges[worst_r][0] - 1:.0%} on every seed; no rank's seeds "
                                 f"allow more than {furthest - 1:.0%} (the rule's margin: {margin:.0%})")


def claim3_scaling(groups: list[Group], high_r: int = 128, lr: float = 3e-3) -> tuple[Verdict, dict]:
    """alpha / r lets you change r without re-tuning; rsLoRA changes that at high rank. The rule: (a) with alpha
    fixed, the tied best rates of every rank share one rate and no best is at the grid's edge; (b) at r=`high_r`
    and `lr`, rsLoRA's loss is below alpha / r's on every seed. Holds if both, partly if one holds and the
    other surely not, does not hold if neither, inconclusive if either is undecided. Returns the verdict and the
    best rate of each (rule, r)."""
    fixed = [g for g in groups if g["alpha"] == 16 and g["scaling"] == "alpha/r"]
    bests = {r: best([g for g in fixed if g["r"] == r]) for r in sorted({g["r"] for g in fixed})}
    shared = set.intersection(*({g["lr"] for g in b.ties} for b in bests.values()))
    undecided_a = any(b.at_edge or min(g.spread().n for g in b.ties) < MIN_SEEDS for b in bests.values())
    part_a = None if undecided_a else bool(shared)
    pick = {s: next(g for g in groups if g["r"] == high_r and g["lr"] == lr and g["alpha"] == 16
                    and g["scaling"] == s).spread() for s in ("alpha/r", "alpha/sqrt(r)")}
    part_b = lower(pick["alpha/sqrt(r)"], pick["alpha/r"])
    parts = (part_a, part_b)
    verdict = (INCONCLUSIVE if None in parts else HOLDS if all(parts) else PARTLY if any(parts) else NOT)
    said = {None: "undecided", True: "yes", False: "no"}
    numbers = (f"(a) alpha fixed, best rate by rank: "
               + ", ".join(f"r={r} {rates(b)}" for r, b in bests.items()) + edge_note(bests.values())
               + f": one rate for all, {said[part_a]}; (b) r={high_r}, lr {lr:g}: alpha/r {pick['alpha/r']}, "
               f"rsLoRA {pick['alpha/sqrt(r)']}: rsLoRA lower, {said[part_b]}")
    return Verdict("3", verdict, numbers), bests


def claim4_targets(groups: list[Group], sets: dict[str, tuple[str, ...]]) -> tuple[Verdict, dict[str, Best]]:
    """Every linear layer beats attention-only at the same budget. The rule: compare each set at its best rate
    (mean over seeds); holds if all seven is below both attention-only sets on every seed, does not hold if it
    is above both, partly if one of each, inconclusive if a comparison overlaps or a best is at the grid's
    edge. `sets`: name -> targets; the first two are attention-only, the last is all seven."""
    bests = {name: best([g for g in groups if sorted(g["targets"]) == sorted(t)]) for name, t in sets.items()}
    names = list(sets)
    wins = [lower(bests[names[-1]].spread, bests[n].spread) for n in names[:2]]
    edge = any(b.at_edge for b in bests.values())
    verdict = (INCONCLUSIVE if None in wins or edge else HOLDS if all(wins) else PARTLY if any(wins) else NOT)
    numbers = "best loss: " + "; ".join(f"{n} {b.spread} at lr {b.group['lr']:g}" for n, b in bests.items())
    return Verdict("4", verdict, numbers + edge_note(bests.values())), bests


def learning_branch(groups: list[Group]) -> list[Group]:
    """The settings up to the best learning rate, by rate: along them a higher rate learns more (and forgets
    more), the trade-off curve; past the best, training is unstable and learns less."""
    top = best(groups).group["lr"]
    return sorted((g for g in groups if g["lr"] <= top), key=lambda g: g["lr"])


def forgetting_at(groups: list[Group], val_loss: float) -> Spread | None:
    """A method's forgetting at a level of learning, read off its learning-forgetting curve (`learning_branch`):
    the spreads of the two settings whose mean validation losses bracket `val_loss`, interpolated linearly in log
    loss; None outside the curve."""
    import math
    pts = sorted(((g.spread().mean, g.spread("forget_loss_after")) for g in learning_branch(groups)),
                 key=lambda p: p[0])
    for (x0, f0), (x1, f1) in zip(pts, pts[1:]):
        if x0 <= val_loss <= x1:
            t = 0.0 if x1 == x0 else (math.log(val_loss) - math.log(x0)) / (math.log(x1) - math.log(x0))
            mix = lambda a, b: a + t * (b - a)  # noqa: E731
            return Spread(mix(f0.mean, f1.mean), mix(f0.low, f1.low), mix(f0.high, f1.high), min(f0.n, f1.n))
    return None


def claim5_forgetting(groups: list[Group]) -> tuple[Verdict, Verdict]:
    """Biderman et al. 2024: LoRA learns less and forgets less (section 4.2: each method at its best, the same
    training) and the two lie on one learning-forgetting curve (section 4.3). Two verdicts:
    (i) at the same steps, each method at its best rate: holds if LoRA's task loss is higher (learns less) and
    its forgetting lower (forgets less) on every seed; partly if one of the two surely holds and the other surely
    not; does not hold if neither; inconclusive if either overlaps.
    (ii) at the same learning: for each LoRA setting on its learning branch (rates up to its best) inside full
    fine-tuning's range of task loss, its forgetting
    against full fine-tuning's there (`forgetting_at`): holds (one curve) if every such range overlaps; does not
    hold if every one is surely apart (one method forgets more at the same learning); inconclusive if mixed."""
    by = {m: [g for g in groups if g["method"] == m] for m in ("lora", "full")}
    b = {m: best(by[m]) for m in by}
    learns_less = lower(b["full"].spread, b["lora"].spread)
    forgets_less = lower(b["lora"].group.spread("forget_loss_after"), b["full"].group.spread("forget_loss_after"))
    parts = (learns_less, forgets_less)
    v1 = (INCONCLUSIVE if None in parts else HOLDS if all(parts) else PARTLY if any(parts) else NOT)
    one = Verdict("5 (i)", v1, f"at each best rate: task loss LoRA {b['lora'].spread}, full FT {b['full'].spread}; "
                               f"loss on the old text LoRA {b['lora'].group.spread('forget_loss_after')}, "
                               f"full FT {b['full'].group.spread('forget_loss_after')}")
    matched = []  # (LoRA's setting, its forgetting, full FT's at the same task loss, "same" / "more" / "less")
    for g in learning_branch(by["lora"]):
        there = forgetting_at(by["full"], g.spread().mean)
        if there is not None:
            mine = g.spread("forget_loss_after")
            apart = lower(mine, there)
            overlap = mine.low <= there.high and there.low <= mine.high
            matched.append((g, mine, there, "same" if overlap else {True: "less", False: "more"}.get(apart)))
    outcomes = {m[3] for m in matched}
    if not matched or None in outcomes or min(min(m[1].n, m[2].n) for m in matched) < MIN_SEEDS:
        v2 = INCONCLUSIVE
    else:
        v2 = HOLDS if outcomes == {"same"} else NOT if "same" not in outcomes else INCONCLUSIVE
    two = Verdict("5 (ii)", v2, "at the same task loss, loss on the old text: " + ("; ".join(
        f"LoRA lr {g['lr']:g} {mine} against full FT {there}" for g, mine, there, _ in matched) or
        "no LoRA setting reached a task loss that full fine-tuning's settings span"))
    return one, two


def claim6_dora(groups: list[Group]) -> tuple[Verdict, Spread]:
    """DoRA beats LoRA at the same rank. The rule: each at its best rate; holds if DoRA's loss is below LoRA's on
    every seed, does not hold if above, inconclusive if the ranges overlap or a best is at the grid's edge.
    Also returns DoRA's step time over LoRA's, run by run (the same rate and seed, one sweep on one machine)."""
    b = {m: best([g for g in groups if g["method"] == m]) for m in ("lora", "dora")}
    beats = lower(b["dora"].spread, b["lora"].spread)
    edge = b["lora"].at_edge or b["dora"].at_edge
    verdict = INCONCLUSIVE if beats is None or edge else HOLDS if beats else NOT
    lora_rows = {(r["point"]["lr"], r["point"]["seed"]): r for g in groups if g["method"] == "lora" for r in g.rows}
    time = Spread.of([r["seconds_per_step"] / lora_rows[r["point"]["lr"], r["point"]["seed"]]["seconds_per_step"]
                      for g in groups if g["method"] == "dora" for r in g.rows])
    return Verdict("6", verdict, f"best loss: DoRA {b['dora'].spread} at lr {b['dora'].group['lr']:g}, LoRA "
                                 f"{b['lora'].spread} at lr {b['lora'].group['lr']:g}{edge_note(b.values())}"), time


# The plots: each setting's mean over its seeds, its range (lowest to highest seed) as an error bar.
CURVE_NAMES = {"lora": "LoRA", "full": "full fine-tuning", "dora": "DoRA"}  # a sweep method, as a legend names it


def errorbar(ax, xs: list, spreads: list[Spread], **style) -> None:
    ax.errorbar(xs, [s.mean for s in spreads], yerr=[[s.mean - s.low for s in spreads],
                                                     [s.high - s.mean for s in spreads]],
                fmt=style.pop("fmt", "o-"), capsize=3, ms=4, **style)


def plot_by_lr(ax, groups: list[Group], key: str = "method", star: bool = True) -> None:
    """Validation loss against learning rate, one line per value of `key`, a star at each line's best."""
    for value in dict.fromkeys(g[key] for g in groups):
        line = sorted((g for g in groups if g[key] == value), key=lambda g: g["lr"])
        errorbar(ax, [g["lr"] for g in line], [g.spread() for g in line],
                 label=CURVE_NAMES.get(value, f"{key}={value}"))
        if star:
            top = best(line)
            ax.plot(top.group["lr"], top.spread.mean, "k*", ms=13, zorder=5)
    ax.set(xscale="log", yscale="log", xlabel="peak learning rate")
    ax.legend(fontsize=8)


def plot_rank(left, right, groups: list[Group], steps: tuple[int, ...] = (10, 20, 40)) -> None:
    """Left: each rank's validation loss during training (means); right: the loss by rank after `steps`."""
    import matplotlib.pyplot as plt
    groups = sorted(groups, key=lambda g: g["r"])
    colors = plt.cm.viridis([i / max(1, len(groups) - 1) for i in range(len(groups))])
    for g, color in zip(groups, colors):
        curve = sorted({s for r in g.rows for s, _ in r["eval_curve"]})
        left.plot(curve, [g.at_step(s).mean for s in curve], "o-", color=color, ms=3, label=f"r={g['r']}")
    left.set(yscale="log", xlabel="optimizer step", ylabel="validation loss", title="Rank: learning curves")
    left.legend(ncol=2, fontsize=7)
    ranks = [g["r"] for g in groups]
    for s in steps:
        errorbar(right, ranks, [g.at_step(s) for g in groups], label=f"after {s} steps")
    right.set(xscale="log", yscale="log", xlabel="rank r", title="Rank: loss by r (bars: 3 seeds)")
    right.set_xticks(ranks, [str(r) for r in ranks])
    right.legend(fontsize=8)


def plot_learning_forgetting(ax, groups: list[Group]) -> None:
    """Forgetting against learning, one dot per learning rate (labelled), both ranges as error bars."""
    for method in dict.fromkeys(g["method"] for g in groups):
        line = sorted((g for g in groups if g["method"] == method), key=lambda g: g["lr"])
        x, y = [g.spread() for g in line], [g.spread("forget_loss_after") for g in line]
        ax.errorbar([s.mean for s in x], [s.mean for s in y], fmt="o-", capsize=2, ms=4,
                    xerr=[[s.mean - s.low for s in x], [s.high - s.mean for s in x]],
                    yerr=[[s.mean - s.low for s in y], [s.high - s.mean for s in y]], label=CURVE_NAMES[method])
        for g, a, b in zip(line, x, y):
            ax.annotate(f"{g['lr']:g}", (a.mean, b.mean), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axhline(groups[0].rows[0]["forget_loss_before"], ls="--", c="gray", label="the base, before fine-tuning")
    ax.set(xscale="log", xlabel="validation loss on the task (left: learned more)")
    ax.legend(fontsize=8)


def plot_bests(ax, bests: dict[str, Best]) -> None:
    """One bar per named best setting: its mean loss, its range, its learning rate."""
    names = list(bests)
    spreads = [b.spread for b in bests.values()]
    ax.barh(names, [s.mean for s in spreads], xerr=[[s.mean - s.low for s in spreads],
                                                    [s.high - s.mean for s in spreads]],
            color=["#9ecae1", "#6baed6", "#fd8d3c", "#e6550d"][:len(names)], capsize=3)
    for i, b in enumerate(bests.values()):
        ax.text(b.spread.high, i, f"  {b.spread.mean:.3f} (lr {b.group['lr']:g})", va="center", fontsize=8)
    ax.set(xlim=(0, 1.4 * max(s.high for s in spreads)))
    ax.invert_yaxis()


def plot_memory(ax, rows: dict[str, dict]) -> None:
    """One training step's memory by part (MB, measured), one bar per labelled sweep row."""
    parts = list(next(iter(rows.values()))["memory_bytes"])
    for i, (label, row) in enumerate(rows.items()):
        ax.barh([p.replace(" (saved for backward)", "") for p in parts],
                [row["memory_bytes"][p] / 1e6 for p in parts], height=0.4, align="edge" if i else "center",
                label=label)
    ax.set(xlabel="MB, one training step (measured)", title="Memory by part")
    ax.legend(fontsize=8)
