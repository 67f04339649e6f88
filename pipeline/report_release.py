"""The report's release sections: the calibrated threshold, the duplicates removed and best of N.

- calibration (when the run took its threshold from `capfilt calibrate`: filter.calibration): the
  labelled pairs' precision/recall curve, the chosen τ and its held-out check; with a truth, the
  precision (true web texts among those kept) and recall (kept among the true ones) of this run's
  web texts at τ.
- duplicates: copies removed, within the run and of earlier versions, exact and near; with a
  truth, how noisy the copies' web texts were and what keeping the copies that reached τ would
  have made of the kept web texts' noise.
- best of N (when an image has several synthetic captions): the kept synthetic captions against
  what N = 1 would have kept (caption 0 alone: a caption's draws depend on its index alone,
  models/streams.py, so it is the caption an N = 1 run writes), their diversity (distinct 1- and
  2-grams, pipeline/diversity.py) and, with a truth that judges captions
  (`truth.caption_correct(key, text)`), the share that is true of its image.

Each section is (title, paragraphs, figures [(name, png, caption)], table); `figures` the same for
figures.json. Failed rows are left out of every figure, and duplicates out of all but their own.
"""
from __future__ import annotations

import math

import pyarrow.parquet as pq

from pipeline import report_plots as charts
from pipeline.diversity import distinct_ngrams
from pipeline.report_truth import share
from pipeline.schema import DUPLICATE, Scoring, caption_column, web_column


def _rows(fs, root: str, m: dict, scoring: Scoring) -> list[dict]:
    """Every row that is not failed, kept and rejected, with what these sections read."""
    web, caps = web_column(scoring.scorer), caption_column(scoring.scorer)
    out = []
    for entries, columns in ((m.get("shards", []), ["key", "web_text", "captions", web, caps, "texts", "origins"]),
                             (m.get("rejected", []), ["key", "web_text", "captions", web, caps, "status",
                                                      "duplicate_match"])):
        for e in entries:
            with fs.open(f"{root}/{e['parquet']}", "rb") as fh:
                for r in pq.read_table(fh, columns=columns).to_pylist():
                    r.setdefault("status", "kept")
                    if r["status"] != "failed":
                        out.append(r)
    return out


def _passes(score, threshold) -> bool:
    return score is not None and not math.isnan(score) and score >= threshold


def _web_truth(rows: list[dict], truth) -> dict | None:
    """Precision and recall of the kept web texts against the truth (duplicates left out)."""
    kept = correct = correct_kept = 0
    for r in rows:
        entry = truth.get(r["key"]) if r["status"] != DUPLICATE else None
        if entry is None:
            continue
        is_kept = r["status"] == "kept" and "web" in (r.get("origins") or [])
        kept += is_kept
        correct += bool(entry["correct"])
        correct_kept += is_kept and bool(entry["correct"])
    return {"kept": kept, "correct": correct, "correct_kept": correct_kept, "precision": share(correct_kept, kept),
            "recall": share(correct_kept, correct)}


def calibration(rows, m: dict, scoring: Scoring, truth) -> tuple[tuple, dict] | None:
    record = (m.get("lineage") or {}).get("calibration")
    if not record:
        return None
    at = _web_truth(rows, truth) if truth is not None else None
    held = record.get("held_out") or record.get("fit") or {}
    text = [f"The threshold τ = {record['threshold']:.4g} of {scoring.scorer.upper()} was chosen by `capfilt calibrate` "
            f"({record['path']}): the lowest whose precision on {record.get('fit_pairs')} labelled pairs reaches the "
            f"target {record['target_precision']:g}.",
            f"On the {record.get('held_out_pairs')} held-out pairs it keeps texts at precision "
            f"{_pct(held.get('precision'))} and recall {_pct(held.get('recall'))}."]
    if at is not None:
        text.append(f"The truth of this run's web texts at τ: {_pct(at['precision'])} of the {at['kept']} kept are true "
                    f"of their image (precision), and {_pct(at['recall'])} of the {at['correct']} true ones were kept "
                    "(recall).")
    png = charts.calibration_png(record["curve"], record["threshold"], record["target_precision"], at,
                                 xlabel=f"{scoring.scorer.upper()} threshold")
    figures = {k: record.get(k) for k in ("path", "threshold", "target_precision", "held_out")}
    return ("Calibrated threshold", text, [("calibration", png, "precision and recall against the threshold")], None), \
        {**figures, "truth_at_threshold": at}


def duplicates(rows, m: dict, scoring: Scoring, truth) -> tuple[tuple, dict] | None:
    c = m["counts"]
    copies = [r for r in rows if r["status"] == DUPLICATE]
    if not c.get("duplicates"):
        return None
    exact = sum(r["duplicate_match"] == "exact" for r in copies)
    out = {"removed": c["duplicates"], "within_run": c.get("duplicates_within_run"),
           "of_earlier_versions": c.get("duplicates_of_earlier_versions"), "exact": exact, "near": len(copies) - exact}
    text = [f"{out['removed']} row(s) were copies of another row's image and left the dataset: "
            f"{out['within_run']} within this run, {out['of_earlier_versions']} of earlier versions; "
            f"{exact} exact (the same bytes), {out['near']} near (the perceptual hash within reach)."]
    if truth is not None:
        known = [(r, truth.get(r["key"])) for r in copies if truth.get(r["key"]) is not None]
        passing = [e for r, e in known if (r["web_text"] or "").strip() and _passes(r[web_column(scoring.scorer)],
                                                                                  scoring.threshold)]
        at = _web_truth(rows, truth)
        wrong_kept = at["kept"] - at["correct_kept"]
        wrong_passing = sum(not e["correct"] for e in passing)
        out.update(copies_noisy=share(sum(not e["correct"] for _, e in known), len(known)),
                   copies_passing=len(passing), noisy_kept=share(wrong_kept, at["kept"]),
                   noisy_kept_with_copies=share(wrong_kept + wrong_passing, at["kept"] + len(passing)))
        text.append(f"Of the copies the truth knows, {_pct(out['copies_noisy'])} carry a web text wrong for the image; "
                    f"{len(passing)} web text(s) of copies reached τ. The kept web texts are {_pct(out['noisy_kept'])} "
                    f"noisy; with those copies kept they would be {_pct(out['noisy_kept_with_copies'])}, over "
                    f"{at['kept'] + len(passing)} texts instead of {at['kept']}.")
    return ("Duplicates", text, [], None), out


def _kept_set(pairs, judge) -> dict:
    texts = [t for _, t in pairs]
    d1, d2 = distinct_ngrams(texts, 1), distinct_ngrams(texts, 2)
    correct = share(sum(bool(judge(k, t)) for k, t in pairs), len(pairs)) if judge else None
    return {"captions": len(pairs), "images": len({k for k, _ in pairs}), "distinct_1": d1["share"],
            "distinct_2": d2["share"], "distinct_2_count": d2["distinct"], "correct": correct}


def best_of_n(rows, m: dict, scoring: Scoring, truth, mode: str | None) -> tuple[tuple, dict] | None:
    n = max((len(r["captions"] or []) for r in rows), default=0)
    if n < 2:
        return None
    live = [r for r in rows if r["status"] != DUPLICATE]
    kept = [(r["key"], t) for r in live if r["status"] == "kept"
            for t, o in zip(r["texts"], r["origins"]) if o == "synthetic"]
    first = [(r["key"], r["captions"][0]) for r in live if r["captions"]
             and (mode == "caption_only" or _passes((r[caption_column(scoring.scorer)] or [None])[0], scoring.threshold))]
    judge = getattr(truth, "caption_correct", None) if truth is not None else None
    out = {"n": n, "kept": _kept_set(kept, judge), "n_1": _kept_set(first, judge)}
    header = ["kept synthetic captions", "captions", "images", "distinct 1-grams", "distinct 2-grams", "true of the image"]
    table = (header, [[name, s["captions"], s["images"], _pct(s["distinct_1"]), _pct(s["distinct_2"]), _pct(s["correct"])]
                      for name, s in ((f"this run (N = {n})", out["kept"]), ("N = 1 (caption 0 alone)", out["n_1"]))])
    text = [f"Each image got up to {n} synthetic captions. Beside what this run kept, what N = 1 would have kept: the "
            "first caption alone (the one an N = 1 run writes), when it reaches τ. Distinct n-grams: different word "
            "n-grams as a share of all in the kept captions."
            + ("" if judge else " (no truth judges the captions here.)")]
    return ("Best of N", text, [], table), out


def _pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def sections(fs, root: str, m: dict, scoring: Scoring, truth, mode: str | None) -> tuple[list[tuple], dict]:
    """The sections that apply to this run, and their figures by name."""
    rows = _rows(fs, root, m, scoring)
    made = {"calibration": calibration(rows, m, scoring, truth), "duplicates": duplicates(rows, m, scoring, truth),
            "best_of_n": best_of_n(rows, m, scoring, truth, mode)}
    return [s for s, _ in filter(None, made.values())], {k: v[1] for k, v in made.items() if v is not None}
