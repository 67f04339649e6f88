"""The model stages: the captioner and the filter's scorers as actors (set up once, then pure
batch -> batch), and the keep/drop decision."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import torch

from models.sampling import SamplingOptions
from pipeline.loaders import Models, load_captioner
from pipeline.schema import (DEFAULT_SCORER, FINGERPRINT, caption_column, failed, int_or_none, staging_schema,
                             text_or_none, web_column)
from pipeline.scorers.registry import kind

log = logging.getLogger(__name__)


def _pin_threads(threads: int | None) -> None:
    """One actor, its share of the cores: several actors must not each take all of them."""
    if threads:
        torch.set_num_threads(threads)


def _ok(batch: dict) -> np.ndarray:
    return np.array([not failed(e) for e in batch["error"]], dtype=bool)


class CaptionStage:
    """Writes `captions` (N per image) for the rows that decoded; failed rows get none."""

    def __init__(self, checkpoint: str, image_size: int, options: SamplingOptions, seed: int, device=None, precision=None,
                 threads: int | None = None):
        _pin_threads(threads)
        self.model = load_captioner(checkpoint, image_size=image_size, device=device, precision=precision)
        self.options, self.seed = options, seed

    def __call__(self, batch: dict) -> dict:
        n = len(batch["key"])
        captions = np.empty(n, dtype=object)
        for i in range(n):
            captions[i] = []
        ok = np.flatnonzero(_ok(batch))
        if len(ok):
            # each row's draws are keyed by (seed, key, caption index, step) alone: the same captions
            # in any batch, actor, retry or resumed run (models/streams.py)
            written = self.model.caption(batch["pixels"][ok], seed=self.seed, keys=[str(k) for k in batch["key"][ok]],
                                         options=self.options)
            for i, texts in zip(ok, written):
                captions[i] = texts
        return {**batch, "captions": captions}


class FilterStage:
    """Each scorer's score of the web text and of each synthetic caption, as `web_<name>` and
    `caption_<name>` for every name in `scorers` (pipeline/scorers; the deciding one first).

    Several checkpoints make an ensemble (the mean score); the scorers of one checkpoint share its
    model. An empty web text is not scored (NaN): there is nothing to keep.
    """

    def __init__(self, checkpoints: list[str], image_size: int, device=None, precision=None,
                 threads: int | None = None, scorers: tuple[str, ...] = (DEFAULT_SCORER,)):
        _pin_threads(threads)
        self.models = Models(image_size=image_size, device=device, precision=precision)
        self.scorers = {name: kind(name).build(checkpoints, self.models) for name in scorers}

    def __call__(self, batch: dict) -> dict:
        n = len(batch["key"])
        captions = batch.get("captions")
        texts, owner, slot = [], [], []  # slot -1: web text; j >= 0: caption j
        for i in np.flatnonzero(_ok(batch)):
            web = str(batch["web_text"][i]).strip()
            if web:
                texts.append(web), owner.append(i), slot.append(-1)
            for j, caption in enumerate(captions[i] if captions is not None else []):
                texts.append(caption), owner.append(i), slot.append(j)
        rows = sorted(set(owner))
        index = {r: k for k, r in enumerate(rows)}
        pixels = batch["pixels"][rows] if texts else None
        image_index = [index[o] for o in owner]
        out = dict(batch)
        for name, scorer in self.scorers.items():
            web_scores = np.full(n, np.nan, dtype=np.float32)
            caption_scores = np.empty(n, dtype=object)
            for i in range(n):
                caption_scores[i] = np.full(len(captions[i]) if captions is not None else 0, np.nan, dtype=np.float32)
            if texts:
                for p, i, j in zip(scorer(pixels, texts, image_index), owner, slot):
                    if j < 0:
                        web_scores[i] = p
                    else:
                        caption_scores[i][j] = p
            out[web_column(name)], out[caption_column(name)] = web_scores, caption_scores
        return out


class CapFiltStage:
    """Captioner and filter in one actor: on CPU, two pools split too few cores and a two-stage
    pipeline runs at the slower stage's pace (captioning is most of the work); one actor doing
    both keeps every core it holds busy and moves each batch through the object store once."""

    def __init__(self, caption: dict, filter: dict):
        self.captioner = CaptionStage(**caption)
        self.filter = FilterStage(**filter)

    def __call__(self, batch: dict) -> dict:
        return self.filter(self.captioner(batch))


def _scores(values) -> list:
    return [None if np.isnan(v) else float(v) for v in values]


class Decide:
    """status kept / dropped / failed, and the texts kept (best first) with origin and score.

    The first of `scorers` decides, the others are carried along (scored beside it, reported).
    capfilt: keep the web text if its score >= threshold, and each synthetic caption that is;
    filter_only: the web text alone is judged; caption_only: no filter — the web text (when not
    empty) and every caption are kept. Of the synthetic captions, `keep` keeps every one reaching
    the threshold (`threshold`), the `top_k` best whatever their score (`top_k`: best of N), or the
    `top_k` best of those reaching it (`both`); a tie goes to the caption written first.
    max_texts > 0 keeps only that many texts, best first.
    """

    def __init__(self, mode: str, threshold: float, max_texts: int = 0, scorers: tuple[str, ...] = (DEFAULT_SCORER,),
                 keep: str = "threshold", top_k: int = 1):
        self.mode, self.threshold, self.max_texts = mode, threshold, max_texts
        self.keep, self.top_k = keep, top_k
        self.scorers, self.schema = tuple(scorers), staging_schema(scorers)

    def _synthetic(self, captions, scores) -> list[tuple[str, str, float]]:
        scored = [(c, "synthetic", float(s)) for c, s in zip(captions, scores) if not np.isnan(s)]
        if self.keep != "top_k":
            scored = [c for c in scored if c[2] >= self.threshold]
        if self.keep == "threshold":
            return scored
        return sorted(scored, key=lambda c: -c[2])[: self.top_k]  # a stable sort: ties in caption order

    def _row(self, web: str, web_score: float, captions, caption_scores) -> list[tuple[str, str, float]]:
        if self.mode == "caption_only":
            kept = ([(web, "web", float(web_score))] if web.strip() else []) + \
                [(c, "synthetic", float(s)) for c, s in zip(captions, caption_scores)]
        else:
            kept = [(web, "web", float(web_score))] if web.strip() and web_score >= self.threshold else []
            kept += self._synthetic(captions, caption_scores)  # NaN (not scored) never passes
            kept.sort(key=lambda c: -c[2])
        return kept[: self.max_texts] if self.max_texts else kept

    def __call__(self, batch: dict) -> pa.Table:
        n = len(batch["key"])
        ok = _ok(batch)
        captions = batch.get("captions", [[]] * n)
        web = {s: batch.get(web_column(s), np.full(n, np.nan, dtype=np.float32)) for s in self.scorers}
        per_caption = {s: batch.get(caption_column(s), [[]] * n) for s in self.scorers}
        decider = self.scorers[0]
        kept = [self._row(str(batch["web_text"][i]), web[decider][i], captions[i], per_caption[decider][i])
                if ok[i] else [] for i in range(n)]
        columns = {
            "key": batch["key"], "url": batch["url"], "web_text": batch["web_text"],
            "image": [batch["image"][i] if ok[i] else None for i in range(n)],
            "width": [int(batch["width"][i]) if ok[i] else None for i in range(n)],
            "height": [int(batch["height"][i]) if ok[i] else None for i in range(n)],
            "source_shard": batch["source_shard"],
            "captions": [list(c) for c in captions],
            "status": ["kept" if k else "dropped" if ok[i] else "failed" for i, k in enumerate(kept)],
            "error": [None if ok[i] else str(batch["error"][i]) for i in range(n)],
            "kept_texts": [[t for t, _, _ in k] for k in kept],
            "kept_origins": [[o for _, o, _ in k] for k in kept],
            "kept_scores": [[None if np.isnan(v) else v for _, _, v in k] for k in kept],
            # lineage, carried to every output (a row of a source without it has nulls)
            "source_key": [text_or_none(v) for v in batch.get("source_key", [None] * n)],
            "original_width": [int_or_none(v) for v in batch.get("original_width", [None] * n)],
            "original_height": [int_or_none(v) for v in batch.get("original_height", [None] * n)],
            **{c: [text_or_none(v) or None for v in batch.get(c, [None] * n)] for c in FINGERPRINT},
        }
        for s in self.scorers:
            columns[web_column(s)] = _scores(web[s])
            columns[caption_column(s)] = [_scores(c) for c in per_caption[s]]
        return pa.table({f.name: pa.array(list(columns[f.name]), f.type) for f in self.schema}, schema=self.schema)
