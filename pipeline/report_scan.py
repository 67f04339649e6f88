"""The report's one streaming pass over a finished run's outputs: per scorer, fixed-bin histograms of
the web texts' and the synthetic captions' scores (and, with a truth, of the web texts by truth and
each scorer's flags per noise type); counts of texts; failures by reason; and a seeded random
sample of kept and dropped rows for the grid. Memory stays bounded: batches of score and text
columns only, never the image bytes."""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import manifest as mf
from pipeline.schema import Scoring, caption_column, web_column
from pipeline.scorers.registry import KINDS

BATCH_ROWS = 1024
_TRACKED_REASONS = 10_000
_VOLATILE = [(re.compile(r"0x[0-9a-fA-F]{6,}"), "0x…"), (re.compile(r"\b\d+x\d+\b"), "WxH")]
BINS = 40


@dataclass
class ScorerTally:
    """One scorer's histograms, and (with a truth) its flags: (noise, correct, flagged) -> web texts.

    The deciding scorer flags a web text when the run dropped it; a compared one when it did not
    score it or scored it below its own threshold."""
    name: str
    threshold: float
    decides: bool
    edges: np.ndarray
    web: np.ndarray
    synthetic: np.ndarray
    web_correct: np.ndarray
    web_wrong: np.ndarray
    truth: Counter = field(default_factory=Counter)

    @classmethod
    def new(cls, name: str, threshold: float, decides: bool) -> "ScorerTally":
        low, high = KINDS[name].bounds if name in KINDS else (0.0, 1.0)
        edges = np.unique(np.clip(np.r_[np.linspace(low, high, BINS + 1), threshold], low, high))
        return cls(name, threshold, decides, edges, *(np.zeros(len(edges) - 1, np.int64) for _ in range(4)))

    @property
    def label(self) -> str:
        return KINDS[self.name].label if self.name in KINDS else f"{self.name} score"

    @property
    def bounds(self) -> tuple[float, float]:
        return float(self.edges[0]), float(self.edges[-1])

    def above(self, hist: np.ndarray) -> float | None:
        total = int(hist.sum())
        return int(hist[self.edges[:-1] >= self.threshold].sum()) / total if total else None


@dataclass
class Tally:
    scorers: dict[str, ScorerTally]
    web_texts: int = 0        # non-empty web texts of decided (not failed) rows
    web_unscored: int = 0     # of those, not scored by the deciding scorer (e.g. a caption-only run)
    captions: int = 0
    failures: Counter = field(default_factory=Counter)
    failure_example: dict = field(default_factory=dict)
    no_truth: int = 0

    @classmethod
    def new(cls, scoring: Scoring) -> "Tally":
        return cls({n: ScorerTally.new(n, float(t), n == scoring.scorer) for n, t in scoring.thresholds.items()})

    @property
    def decider(self) -> ScorerTally:
        return next(s for s in self.scorers.values() if s.decides)


class Sample:
    """A seeded bottom-k sample: each row draws a priority, the `k` lowest stay (bounded memory)."""

    def __init__(self, k: int, rng: np.random.Generator):
        self.k, self.rng, self.rows = k, rng, []  # (priority, file, row in file, row dict)

    def offer(self, batch: pa.Table, file: int, start: int, eligible: np.ndarray) -> None:
        prio = self.rng.random(len(batch))
        if not self.k:
            return
        cut = self.rows[-1][0] if len(self.rows) >= self.k else math.inf
        pick = np.flatnonzero(eligible & (prio < cut))
        if len(pick) > self.k:
            pick = pick[np.argsort(prio[pick])[: self.k]]
        if len(pick):
            rows = batch.take(pa.array(pick)).to_pylist()
            self.rows = sorted(self.rows + [(prio[i], file, start + i, r) for i, r in zip(pick, rows)],
                               key=lambda x: x[0])[: self.k]


def _values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Floats with null as NaN."""
    return pc.fill_null(column.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False)


def _normalise(reason: str | None) -> str:
    text = mf.scrub((reason or "failed (no error recorded)").strip())[0]  # no user:password@ of a URL
    for pattern, repl in _VOLATILE:
        text = pattern.sub(repl, text)
    return text[:300]


def _failures(t: Tally, b: pa.Table, status: np.ndarray) -> None:
    for s, key, err in zip(status, b["key"].to_pylist(), b["error"].to_pylist()):
        if s != "failed":
            continue
        reason = _normalise(err)
        if reason not in t.failures and len(t.failures) >= _TRACKED_REASONS:
            reason = "(other reasons)"
        t.failures[reason] += 1
        t.failure_example.setdefault(reason, (key, err))


def _tally_batch(t: Tally, b: pa.Table, kept: bool, truth: dict | None) -> None:
    status = np.array(["kept"] * len(b) if kept else b["status"].to_pylist(), dtype=object)
    # what the filter decided on: neither failed rows nor copies that dedup removed (a duplicate is
    # no filter drop, and counting it as one skews the detector figures)
    decided = np.isin(status, ("kept", "dropped"))  # STATUSES less failed: DUPLICATE is not among them
    web = {}
    for name, s in t.scorers.items():
        web[name] = _values(b[web_column(name)])
        caption = _values(pc.list_flatten(b[caption_column(name)]))
        s.synthetic += np.histogram(caption[~np.isnan(caption)], s.edges)[0]
        s.web += np.histogram(web[name][decided & ~np.isnan(web[name])], s.edges)[0]
    has_web = np.array([bool((w or "").strip()) for w in b["web_text"].to_pylist()]) & decided
    t.web_texts += int(has_web.sum())
    t.web_unscored += int((has_web & np.isnan(web[t.decider.name])).sum())
    t.captions += int(pc.sum(pc.fill_null(pc.list_value_length(b["captions"]), 0)).as_py() or 0)
    if not kept:
        _failures(t, b, status)
    if truth is None:
        return
    web_kept = ([("web" in (o or [])) for o in b["origins"].to_pylist()] if kept else [False] * len(b))
    for i, key in enumerate(b["key"].to_pylist()):
        if not decided[i]:
            continue
        entry = truth.get(key)
        if entry is None:
            t.no_truth += 1
            continue
        noise = str(entry.get("noise", "unknown"))
        correct = bool(entry["correct"]) if entry.get("correct") is not None else noise == "clean"
        for name, s in t.scorers.items():
            score = web[name][i]
            flagged = not web_kept[i] if s.decides else bool(math.isnan(score) or score < s.threshold)
            s.truth[(noise, correct, flagged)] += 1
            if not math.isnan(score):
                hist = s.web_correct if correct else s.web_wrong
                hist[min(max(np.searchsorted(s.edges, score, "right") - 1, 0), len(hist) - 1)] += 1


def scan(fs, root: str, m: dict, scoring: Scoring, truth: dict | None, sample: int, seed: int):
    """(tally, the kept shards' paths, {"kept": Sample, "dropped": Sample}) of the run under `root`."""
    t = Tally.new(scoring)
    rng = np.random.default_rng(seed)
    kept_files = [f"{root}/{s['parquet']}" for s in m.get("shards", []) if s.get("complete", True)]
    rejected_files = [f"{root}/{r['parquet']}" for r in m.get("rejected", [])]
    texts = ["key", "web_text", "captions"]
    for name in scoring.names:
        texts += [web_column(name), caption_column(name)]
    picks = {"kept": Sample(sample, rng), "dropped": Sample(sample, rng)}
    for kind, files, columns in (("kept", kept_files, texts + ["texts", "origins", "scores"]),
                                 ("dropped", rejected_files, texts + ["status", "error", "reason", "source_shard"])):
        for i, path in enumerate(files):
            with fs.open(path, "rb") as fh:
                pfile = pq.ParquetFile(fh)
                start = 0
                for batch in pfile.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                    b = pa.Table.from_batches([batch])
                    _tally_batch(t, b, kind == "kept", truth)
                    eligible = (np.ones(len(b), bool) if kind == "kept"
                                else np.array([s == "dropped" for s in b["status"].to_pylist()]))
                    picks[kind].offer(b, i, start, eligible)
                    start += len(b)
    return t, kept_files, picks
