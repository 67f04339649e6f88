"""Each scorer as a detector of noisy web texts, against a truth: precision and recall overall and
per noise type, at the scorer's own threshold.

A web text is *wrong* when the truth says it is not true of its image (`correct`: False), and
*flagged* when the deciding scorer's run dropped it, or a compared scorer left it unscored or
below its threshold. Overall: precision = wrong flagged / flagged, recall = wrong flagged / wrong.
Per noise type n: the same over the texts of type n together with the clean ones (so that a
scorer that flags everything pays in precision for each type); for `clean` itself, over the clean
texts alone: its flagged share is the false-alarm rate.
"""
from __future__ import annotations

from collections import Counter

NOISE_ORDER = ("clean", "mismatch", "wrong_attribute", "junk", "empty")


def share(a: int, b: int) -> float | None:
    return a / b if b else None


def _pr(truth: Counter, keep) -> dict:
    """Counts, precision and recall over the (noise, correct, flagged) cells that `keep` selects."""
    cells = {k: v for k, v in truth.items() if keep(k[0])}
    texts = sum(cells.values())
    wrong = sum(v for (_, c, _), v in cells.items() if not c)
    flagged = sum(v for (_, _, f), v in cells.items() if f)
    hits = sum(v for (_, c, f), v in cells.items() if f and not c)
    p, r = share(hits, flagged), share(hits, wrong)
    return {"texts": texts, "wrong": wrong, "flagged": flagged, "flagged_share": share(flagged, texts), "hits": hits,
            "precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p and r else None}


def noise_types(truth: Counter) -> list[str]:
    order = {n: i for i, n in enumerate(NOISE_ORDER)}
    return sorted({n for n, _, _ in truth}, key=lambda n: (order.get(n, len(order)), n))


def detector(truth: Counter) -> dict:
    """{"overall": ..., "noise": [one row per noise type]} of one scorer's (noise, correct, flagged) counts."""
    rows = []
    for n in noise_types(truth):
        own = _pr(truth, lambda k, n=n: k == n)
        against_clean = own if n == "clean" else _pr(truth, lambda k, n=n: k in (n, "clean"))
        rows.append({"noise": n, "texts": own["texts"], "wrong": own["wrong"], "flagged": own["flagged"],
                     "flagged_share": share(own["flagged"], own["texts"]),
                     "precision": against_clean["precision"], "recall": own["recall"]})
    return {"overall": _pr(truth, lambda k: True), "noise": rows}


def detectors(tally) -> dict[str, dict]:
    """Every scorer of a Tally (pipeline/report_scan.py) that scored anything, the deciding one first."""
    out = {}
    for s in sorted(tally.scorers.values(), key=lambda s: not s.decides):
        if not s.decides and not int(s.web.sum()):  # e.g. a caption-only run: nothing was scored
            continue
        out[s.name] = {"label": s.label, "threshold": s.threshold, "decides": s.decides, **detector(s.truth)}
    return out
