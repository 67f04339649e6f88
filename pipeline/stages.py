"""The model stages: captioner and filter actors (set up once, then pure batch -> batch), and
the keep/drop decision."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from models.sampling import SamplingOptions
from pipeline.sinks import STAGING_SCHEMA
from pipeline.sources import int_or_none, text_or_none

log = logging.getLogger(__name__)

# the staging rows the sinks read: one contract, defined beside its reader
DECIDED = STAGING_SCHEMA


def failed(error) -> bool:
    """A row failed when it carries a reason (Ray may hand a null back as None or NaN)."""
    return isinstance(error, str) and bool(error)


def _pin_threads(threads: int | None) -> None:
    """One actor, its share of the cores: several actors must not each take all of them."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _ok(batch: dict) -> np.ndarray:
    return np.array([not failed(e) for e in batch["error"]], dtype=bool)


class CaptionStage:
    """Writes `captions` (N per image) for the rows that decoded; failed rows get none."""

    def __init__(self, checkpoint: str, image_size: int, options: SamplingOptions, seed: int, device=None, precision=None,
                 threads: int | None = None):
        from models.captioner import Captioner

        _pin_threads(threads)
        self.model = Captioner.from_pretrained(checkpoint, image_size=image_size, device=device, precision=precision or None)
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
    """ITM match probability of the web text and of each synthetic caption (mean over an ensemble).

    Each image is encoded once per filter however many texts it has. An empty web text is not
    scored (NaN): there is nothing to keep.
    """

    def __init__(self, checkpoints: list[str], image_size: int, device=None, precision=None,
                 threads: int | None = None):
        from models.filter import Filter

        _pin_threads(threads)
        self.models = [Filter.from_pretrained(c, image_size=image_size, device=device, precision=precision or None)
                       for c in checkpoints]

    def __call__(self, batch: dict) -> dict:
        n = len(batch["key"])
        web_itm = np.full(n, np.nan, dtype=np.float32)
        caption_itm = np.empty(n, dtype=object)
        captions = batch.get("captions")
        texts, owner, slot = [], [], []  # slot -1: web text; j >= 0: caption j
        for i in np.flatnonzero(_ok(batch)):
            web = str(batch["web_text"][i]).strip()
            if web:
                texts.append(web), owner.append(i), slot.append(-1)
            for j, caption in enumerate(captions[i] if captions is not None else []):
                texts.append(caption), owner.append(i), slot.append(j)
        for i in range(n):
            caption_itm[i] = np.full(len(captions[i]) if captions is not None else 0, np.nan, dtype=np.float32)
        if texts:
            rows = sorted(set(owner))
            index = {r: k for k, r in enumerate(rows)}
            pixels = batch["pixels"][rows]
            probs = np.mean([m.itm(pixels, texts, image_index=[index[o] for o in owner]) for m in self.models], axis=0)
            for p, i, j in zip(probs, owner, slot):
                if j < 0:
                    web_itm[i] = p
                else:
                    caption_itm[i][j] = p
        return {**batch, "web_itm": web_itm, "caption_itm": caption_itm}


class CapFiltStage:
    """Captioner and filter in one actor: on CPU, two pools split too few cores and a two-stage
    pipeline runs at the slower stage's pace (captioning is most of the work); one actor doing
    both keeps every core it holds busy and moves each batch through the object store once."""

    def __init__(self, caption: dict, filter: dict):
        self.captioner = CaptionStage(**caption)
        self.filter = FilterStage(**filter)

    def __call__(self, batch: dict) -> dict:
        return self.filter(self.captioner(batch))


class Decide:
    """status kept / dropped / failed, and the texts kept (best first) with origin and score.

    capfilt: keep the web text if its ITM match >= threshold, and each synthetic caption that is;
    filter_only: the web text alone is judged; caption_only: no filter — the web text (when not
    empty) and every caption are kept. max_texts > 0 keeps only that many, best first.
    """

    def __init__(self, mode: str, threshold: float, max_texts: int = 0):
        self.mode, self.threshold, self.max_texts = mode, threshold, max_texts

    def _row(self, web: str, web_itm: float, captions, caption_itm) -> list[tuple[str, str, float]]:
        candidates = []
        if web.strip():
            candidates.append((web, "web", float(web_itm)))
        candidates += [(c, "synthetic", float(s)) for c, s in zip(captions, caption_itm)]
        if self.mode == "caption_only":
            kept = candidates
        else:
            kept = [c for c in candidates if c[2] >= self.threshold]  # NaN (not scored) never passes
            kept.sort(key=lambda c: -c[2])
        return kept[: self.max_texts] if self.max_texts else kept

    def __call__(self, batch: dict) -> pa.Table:
        n = len(batch["key"])
        ok = _ok(batch)
        captions = batch.get("captions", [[]] * n)
        caption_itm = batch.get("caption_itm", [[]] * n)
        web_itm = batch.get("web_itm", np.full(n, np.nan, dtype=np.float32))
        kept = [self._row(str(batch["web_text"][i]), web_itm[i], captions[i], caption_itm[i]) if ok[i] else []
                for i in range(n)]
        columns = {
            "key": batch["key"], "url": batch["url"], "web_text": batch["web_text"],
            "image": [batch["image"][i] if ok[i] else None for i in range(n)],
            "width": [int(batch["width"][i]) if ok[i] else None for i in range(n)],
            "height": [int(batch["height"][i]) if ok[i] else None for i in range(n)],
            "source_shard": batch["source_shard"],
            "captions": [list(c) for c in captions],
            "web_itm": [None if np.isnan(v) else float(v) for v in web_itm],
            "caption_itm": [[None if np.isnan(v) else float(v) for v in s] for s in caption_itm],
            "status": ["kept" if k else "dropped" if ok[i] else "failed" for i, k in enumerate(kept)],
            "error": [None if ok[i] else str(batch["error"][i]) for i in range(n)],
            "kept_texts": [[t for t, _, _ in k] for k in kept],
            "kept_origins": [[o for _, o, _ in k] for k in kept],
            "kept_scores": [[None if np.isnan(v) else v for _, _, v in k] for k in kept],
            # lineage, carried to every output (a row of a source without it has nulls)
            "source_key": [text_or_none(v) for v in batch.get("source_key", [None] * n)],
            "original_width": [int_or_none(v) for v in batch.get("original_width", [None] * n)],
            "original_height": [int_or_none(v) for v in batch.get("original_height", [None] * n)],
        }
        return pa.table({f.name: pa.array(list(columns[f.name]), f.type) for f in DECIDED}, schema=DECIDED)

