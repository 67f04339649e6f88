"""The demo's goals (demo/goals.py): each judged on its own figure, the paired test against closed
forms of Student's t, and Table 1 printing them."""
from __future__ import annotations

import math

import pytest

from demo.goals import RUN_GOALS, goal_lines, paired_p, run_figures, seed_goal_lines
from demo.table1 import table1


def _rounds(tr0, tr1, ir0, ir1, c0=1.0, c1=1.0):
    ev = lambda tr, ir, c: {"txt_r1": tr, "img_r1": ir, "cider": c, "txt_r5": 0, "txt_r10": 0, "img_r5": 0,
                            "img_r10": 0, "bleu4": 0, "txt_r_mean": 0, "img_r_mean": 0, "r_mean": 0}
    return [{"round": 0, "eval": ev(tr0, ir0, c0)}, {"round": 1, "eval": ev(tr1, ir1, c1)}]


TRUTH = {"noisy_before": 0.4, "noisy_after": 0.08, "noisy_kept_set": 0.3, "clean_kept": 0.9,
         "synthetic_correct": 0.4}


def test_each_goal_reads_its_own_figure():
    f = run_figures(_rounds(30, 34, 20, 19, 1.5, 1.4), TRUTH)
    lines = goal_lines(f)
    assert len(lines) == len(RUN_GOALS)
    met = ["[    met]" in line for line in lines]
    # TR +4 met, IR -1 not; 0.08/0.4 = 0.2 <= 0.25 met; 90% >= 85% met; 40% < 50% not;
    # 0.3/0.4 = 0.75 > 0.5 not; CIDEr -0.1 not
    assert met == [True, False, True, True, False, False, False]
    assert "+4.0" in lines[0] and "-1.0" in lines[1] and "0.20 x" in lines[2] and "0.75 x" in lines[5]


def test_noise_ratio_at_the_bound_is_met_and_just_past_it_is_not():
    at = run_figures(_rounds(0, 1, 0, 1), {**TRUTH, "noisy_after": 0.1})
    past = run_figures(_rounds(0, 1, 0, 1), {**TRUTH, "noisy_after": 0.1001})
    assert "[    met]" in goal_lines(at)[2] and "[NOT met]" in goal_lines(past)[2]


def test_paired_p_matches_students_t_in_closed_form():
    # 2 seeds, differences 1 and 3: t = 2 on 1 degree of freedom (Cauchy): p = 1/2 - atan(t)/pi
    assert paired_p([10, 10], [11, 13]) == pytest.approx(0.5 - math.atan(2) / math.pi)
    # 3 seeds, differences 1, 2, 3: t = 2 sqrt(3) on 2 degrees of freedom: p = 1/2 - t / (2 sqrt(2 + t^2))
    t = 2 * math.sqrt(3)
    assert paired_p([5, 5, 5], [6, 7, 8]) == pytest.approx(0.5 - t / (2 * math.sqrt(2 + t * t)))
    assert math.isnan(paired_p([1], [2]))


def test_seed_goals_need_every_seed_above_and_the_margin():
    rows = [run_figures(_rounds(30, 30 + d, 20, 20 + d), TRUTH) for d in (4, 5, 6)]
    tr, ir = seed_goal_lines(rows)[:2]
    assert "above on every seed: yes (3/3)" in tr and "mean >= +3: yes" in tr and "p < 0.05: yes" in tr
    rows[1] = run_figures(_rounds(30, 28, 20, 25), TRUTH)  # one seed below on TR: mean (4 - 2 + 6) / 3
    tr, ir = seed_goal_lines(rows)[:2]
    assert "above on every seed: no (2/3)" in tr and "mean >= +3: no" in tr
    assert "above on every seed: yes (3/3)" in ir


def test_table1_prints_the_goals_with_the_runs_figures():
    text = table1(_rounds(30, 34, 20, 19), {**TRUTH, "filter_precision": 0.9, "filter_recall": 0.8,
                                            "synthetic_kept": 10, "dropped_by_noise": {}, "dropped_by_attribute": {},
                                            "noisy_floor_colour_only": 0.05})
    assert "What the demo must show" in text
    assert "[NOT met] captioner: kept synthetic captions wholly true >= 50.0%: 40.0%" in text
