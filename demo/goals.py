"""What the demo must show: BLIP's Table 1 in miniature, as goals on one run's figures and on the
figures of several seeds (`python -m bench.bootstrap`). Written once here; Table 1 (demo/table1.py)
prints the per-run goals with seed 0's figures, bench/bootstrap.py the per-run and the cross-seed
ones. A goal reports; nothing in the bootstrap decides by it.

A run's figures (`run_figures`): retrieval R@1 both ways and CIDEr of the no-CapFilt model (round 0)
and the CapFilt model (round 1), and the truth's shares (demo/truth.py table1_figures).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable

MARGIN = 3.0       # mean R@1 points the CapFilt model must gain over the seeds
P_VALUE = 0.05     # one-sided paired t-test over the seeds
NOISE_RATIO = 0.25  # noisy share of the kept web texts against the raw web's
CLEAN_KEPT = 0.85   # share of clean web texts the filter keeps
SYNTHETIC_TRUE = 0.5  # share of kept synthetic captions wholly true by the strict judge
KEPT_SET_RATIO = 0.5  # noisy share of the whole kept set (web + synthetic) against the raw web's


def run_figures(rounds: list[dict], truth: dict) -> dict:
    """One run's figures: `rounds` as workflows/bootstrap_cmd.py summarise lists them (round 0 and
    round 1's eval figures), `truth` demo/truth.py table1_figures of round 0's CapFilt."""
    r0, r1 = rounds[0]["eval"], rounds[1]["eval"]
    return {"tr_r1_0": r0["txt_r1"], "tr_r1_1": r1["txt_r1"], "ir_r1_0": r0["img_r1"], "ir_r1_1": r1["img_r1"],
            "cider_0": r0["cider"], "cider_1": r1["cider"],
            "noisy_before": truth["noisy_before"], "noisy_after": truth["noisy_after"],
            "noisy_set": truth["noisy_kept_set"], "clean_kept": truth["clean_kept"],
            "synthetic_correct": truth["synthetic_correct"]}


@dataclass(frozen=True)
class Goal:
    text: str                          # what must hold, for a person
    figure: Callable[[dict], float]    # the run's figure
    holds: Callable[[float], bool]
    shown: Callable[[float], str]      # the figure, formatted


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _pts(x: float) -> str:
    return f"{x:+.1f}"


RUN_GOALS = (
    Goal("TR R@1: the CapFilt model above the no-CapFilt model", lambda f: f["tr_r1_1"] - f["tr_r1_0"],
         lambda x: x > 0, _pts),
    Goal("IR R@1: the CapFilt model above the no-CapFilt model", lambda f: f["ir_r1_1"] - f["ir_r1_0"],
         lambda x: x > 0, _pts),
    Goal(f"filter: noisy share of kept web texts <= {NOISE_RATIO:g} x the raw web's",
         lambda f: f["noisy_after"] / f["noisy_before"], lambda x: x <= NOISE_RATIO, lambda x: f"{x:.2f} x"),
    Goal(f"filter: clean web texts kept >= {_pct(CLEAN_KEPT)}", lambda f: f["clean_kept"],
         lambda x: x >= CLEAN_KEPT, _pct),
    Goal(f"captioner: kept synthetic captions wholly true >= {_pct(SYNTHETIC_TRUE)}",
         lambda f: f["synthetic_correct"], lambda x: x >= SYNTHETIC_TRUE, _pct),
    Goal(f"whole kept set (web + synthetic) noisy <= {KEPT_SET_RATIO:g} x the raw web",
         lambda f: f["noisy_set"] / f["noisy_before"], lambda x: x <= KEPT_SET_RATIO, lambda x: f"{x:.2f} x"),
    Goal("CIDEr: the CapFilt round's captioner not below the no-CapFilt round's",
         lambda f: f["cider_1"] - f["cider_0"], lambda x: x >= 0, lambda x: f"{x:+.3f}"),
)


def goal_lines(figures: dict) -> list[str]:
    """One line per goal: met or not, with the run's figure."""
    lines = []
    for g in RUN_GOALS:
        x = g.figure(figures)
        lines.append(f"  [{'met' if g.holds(x) else 'NOT met':>7}] {g.text}: {g.shown(x)}")
    return lines


def paired_p(before: list[float], after: list[float]) -> float:
    """One-sided paired t-test that `after` is above `before` (nan under 2 seeds or no spread)."""
    from scipy.stats import ttest_rel

    if len(before) < 2:
        return float("nan")
    return float(ttest_rel(after, before, alternative="greater").pvalue)


def seed_goal_lines(rows: list[dict]) -> list[str]:
    """The cross-seed goals: every seed above on both R@1, the mean margin, the paired p-value, and
    each per-run goal on the mean of its figure (CIDEr: the issue asks it on the mean)."""
    lines = []
    for name, a, b in (("TR R@1", "tr_r1_0", "tr_r1_1"), ("IR R@1", "ir_r1_0", "ir_r1_1")):
        before, after = [r[a] for r in rows], [r[b] for r in rows]
        diff = [y - x for x, y in zip(before, after)]
        mean = statistics.fmean(diff)
        sd = statistics.stdev(diff) if len(diff) > 1 else 0.0
        p = paired_p(before, after)
        every, margin, test = all(d > 0 for d in diff), mean >= MARGIN, p < P_VALUE
        lines.append(f"  {name}: CapFilt - no CapFilt {mean:+.2f} ± {sd:.2f} over {len(rows)} seeds, one-sided paired "
                     f"p = {p:.3f}; above on every seed: {'yes' if every else 'no'} "
                     f"({sum(d > 0 for d in diff)}/{len(diff)}); mean >= +{MARGIN:g}: {'yes' if margin else 'no'}; "
                     f"p < {P_VALUE:g}: {'yes' if test else 'no'}")
    for g in RUN_GOALS[2:]:
        xs = [g.figure(r) for r in rows]
        m = statistics.fmean(xs)
        lines.append(f"  [{'met' if g.holds(m) else 'NOT met':>7}] {g.text}: mean {g.shown(m)} "
                     f"(seeds meeting it {sum(g.holds(x) for x in xs)}/{len(xs)})")
    return lines
