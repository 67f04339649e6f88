"""A threshold chosen for a stated precision, on a labelled set of image-text pairs.

A fixed τ (ITM 0.5) says nothing about how many of the texts it keeps are right on *this* data.
Given pairs labelled match / no match (a user's, or human captions against mismatched ones),
scored by the run's deciding scorer, `curve` gives precision and recall of "keep when score ≥ τ"
at every τ the scores offer, and `pick` the lowest τ whose precision reaches the target (so the
most matches kept at that precision). Half the pairs, drawn with a seed, pick τ; the other half
says what precision τ gives on pairs it did not see (`calibrate`), the figure to trust.

Precision is that of the texts kept: matches among the pairs scored ≥ τ; recall the share of
the matches kept.
"""
from __future__ import annotations

import json
import os

import fsspec
import numpy as np

from models.errors import CapfiltError

HOLDOUT = 0.5  # the share of the pairs kept aside to check the chosen threshold
CURVE_POINTS = 200  # points of the curve written out (every score is a threshold; these are enough to plot)


def curve(scores, labels) -> dict[str, np.ndarray]:
    """Precision and recall of keeping the pairs scored ≥ τ, for each distinct score τ, highest
    first (`kept`: how many pairs pass)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    ok = ~np.isnan(s)
    s, y = s[ok], y[ok]
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    hits = np.cumsum(y)
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)  # the last pair of each tie: τ = that score
    kept = np.arange(1, len(s) + 1)[last]
    tp = hits[last]
    return {"threshold": s[last], "kept": kept, "precision": tp / kept,
            "recall": tp / max(int(y.sum()), 1)}


def pick(scores, labels, target: float) -> dict | None:
    """The lowest τ whose precision on these pairs reaches `target`, with its precision and recall;
    None when no τ does."""
    c = curve(scores, labels)
    reach = np.flatnonzero(c["precision"] >= target)
    if not len(reach):
        return None
    i = reach[-1]  # thresholds fall along the curve: the last that reaches is the lowest
    return {"threshold": float(c["threshold"][i]), "precision": float(c["precision"][i]),
            "recall": float(c["recall"][i]), "kept": int(c["kept"][i])}


def at(scores, labels, threshold: float) -> dict:
    """Precision and recall of keeping the pairs scored ≥ `threshold`."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    keep = s >= threshold  # NaN never passes
    tp = int((keep & y).sum())
    return {"threshold": float(threshold), "kept": int(keep.sum()),
            "precision": tp / int(keep.sum()) if keep.any() else None, "recall": tp / max(int(y.sum()), 1)}


def calibrate(scores, labels, target: float, holdout: float = HOLDOUT, seed: int = 0) -> dict:
    """Pick τ for `target` precision on a seeded share of the pairs and check it on the others
    (`holdout` of them; 0 checks on the same pairs). Raises a CapfiltError when no τ reaches the target."""
    if not 0 < target <= 1:
        raise CapfiltError(f"the target precision must be within (0, 1], got {target}")
    if not 0 <= holdout < 1:
        raise CapfiltError(f"the held-out share must be within [0, 1), got {holdout}")
    s, y = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if not y.any() or y.all():
        raise CapfiltError(f"the labelled pairs must hold matches and mismatches ({int(y.sum())} of {len(y)} match)")
    aside = np.zeros(len(s), bool)
    aside[np.random.default_rng(seed).permutation(len(s))[: int(round(holdout * len(s)))]] = True
    fit = ~aside if holdout else np.ones(len(s), bool)
    chosen = pick(s[fit], y[fit], target)
    if chosen is None:
        best = float(np.nanmax(curve(s[fit], y[fit])["precision"], initial=0.0))
        raise CapfiltError(f"no threshold reaches precision {target} on these pairs (the best is {best:.3f}): "
                           "lower the target, or train the filter further")
    full = curve(s, y)
    step = max(1, len(full["threshold"]) // CURVE_POINTS)
    return {"target_precision": target, "seed": seed, "pairs": int(len(s)), "fit_pairs": int(fit.sum()),
            "held_out_pairs": int(aside.sum()), "threshold": chosen["threshold"], "fit": chosen,
            "held_out": at(s[aside], y[aside], chosen["threshold"]) if holdout else None,
            "curve": {k: [float(v) for v in full[k][::step]] for k in ("threshold", "precision", "recall")}}


def _same(a: str, b: str) -> bool:
    local = lambda p: p if "://" in p else os.path.abspath(p)  # noqa: E731
    return local(str(a)) == local(str(b))


def read(path: str, scorer: str, checkpoints: list[str]) -> dict:
    """The output of `capfilt calibrate` at `path` (JSON), checked to calibrate this run's deciding
    `scorer` with these filter `checkpoints`; a CapfiltError naming what is wrong and how to mend it."""
    mend = f"write it with `capfilt calibrate --config RUN.yaml ... --out {path}`"
    try:
        with fsspec.open(path, "rb") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise CapfiltError(f"filter.calibration {path} does not exist: {mend}") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise CapfiltError(f"filter.calibration {path} is not JSON ({err}): {mend}") from None
    threshold = record.get("threshold") if isinstance(record, dict) else None
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or "curve" not in record:
        raise CapfiltError(f"filter.calibration {path} is not the output of `capfilt calibrate` (no threshold and "
                           f"curve): {mend}")
    if record.get("scorer", scorer) != scorer:
        raise CapfiltError(f"filter.calibration {path} calibrates the {record['scorer']} scorer, but the run decides by "
                           f"{scorer} (filter.scorer): calibrate with the run's scorer, or set filter.scorer: "
                           f"{record['scorer']}")
    given = record.get("checkpoints")
    if given is not None and (len(given) != len(checkpoints) or not all(map(_same, given, checkpoints))):
        raise CapfiltError(f"filter.calibration {path} was made with the filter checkpoints {given}, but the run "
                           f"scores with {list(checkpoints)} (filter.checkpoints): a threshold says nothing about "
                           "another filter's scores; calibrate this one")
    return record
