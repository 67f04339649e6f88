"""BLIP's Table 1 for the demo's rounds: the bootstrap's table (workflows/rounds.py) with the noisy
share of each round's web texts from the truth, and what the truth says the filter and the
captioner did."""
from __future__ import annotations

from demo.goals import goal_lines, run_figures
from workflows.rounds import rounds_table


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def table1(rounds: list[dict], truth: dict | None, warmup: dict | None = None) -> str:
    """`truth`: demo/truth.py table1_figures; `warmup`: the vision warm-up's figures, when the rounds
    started from it."""
    noisy = None
    if truth is not None:  # round 0 trains on the raw web, round k on round k-1's kept texts
        noisy = {r["round"]: truth.get("noisy_before") if r["round"] == 0 else truth.get("noisy_after")
                 for r in rounds}
    lines = [rounds_table(rounds, noisy)]
    if truth is not None and "noisy_after" in truth:
        lines += ["", f"Filter (round 0, τ): precision {_pct(truth['filter_precision'])}, recall "
                      f"{_pct(truth['filter_recall'])} as a noise detector; clean web texts kept "
                      f"{_pct(truth['clean_kept'])}; kept synthetic captions judged correct "
                      f"{_pct(truth['synthetic_correct'])} ({truth['synthetic_kept']}); whole kept set "
                      f"(web + synthetic) noisy {_pct(truth['noisy_kept_set'])}",
                  "Web texts dropped by noise type: " + ", ".join(
                      f"{n} {_pct(v)}" for n, v in truth["dropped_by_noise"].items())
                  + " (wrong attribute by attribute: " + ", ".join(
                      f"{a} {_pct(v)}" for a, v in truth["dropped_by_attribute"].items()) + ")",
                  f"A filter that saw colour but not shape, size, place or relation would leave at best "
                  f"{_pct(truth['noisy_floor_colour_only'])} of the kept web texts noisy"]
    if truth is not None and "noisy_after" in truth and len(rounds) >= 2:
        lines += ["", "What the demo must show (demo/goals.py; `python -m bench.bootstrap` over 5 seeds):"]
        lines += goal_lines(run_figures(rounds, truth))
    if warmup is not None:
        lines += [f"Every round's image encoder started from a classifier of labelled one-object scenes "
                  f"({warmup['steps']} steps; held-out accuracy " + ", ".join(
                      f"{a} {_pct(v)} (chance {_pct(warmup['chance'][a])})" for a, v in warmup["accuracy"].items())
                  + "), the demo's stand-in for BLIP's ImageNet start"]
    return "\n".join(lines)
