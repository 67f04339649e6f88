"""Training data: cleaned CapFilt shards, raw img2dataset shards and COCO-Karpathy human captions,
streamed piece by piece to each data-parallel worker.

A *piece* is a slice of one source file that is read at once: a row group of a cleaned shard, a
range of the downloaded rows of an img2dataset shard, a range of the images of a Karpathy JSON.
Each epoch the pieces are shuffled (seed, epoch) and dealt round-robin to the workers; a worker
reads its pieces one after another through a shuffle buffer, and for each image draws one of its
texts at random. Every worker runs the same number of steps per epoch (the least any of them can
fill, computed from the pieces' row counts), so no worker waits on a collective that never comes.
A resumed run replays its epoch's order and skips the samples already trained on, unread.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import queue
import re
import threading
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

from models.errors import CapfiltError
from pipeline.sources.registry import KINDS as SOURCES
from pipeline.sources.registry import readable_at

log = logging.getLogger(__name__)

PIECE_ROWS = 256  # rows of an img2dataset shard or images of a JSON file read at once


@dataclass(frozen=True)
class Piece:
    kind: str  # clean | raw | human
    path: str  # the Parquet or JSON file (raw: a part of its source)
    start: int  # clean: the row group; raw and human: the first row of the slice
    stop: int
    rows: int  # samples it yields
    image_root: str = ""
    source: str = ""  # raw: the source that reads it (pipeline/sources)


@dataclass
class Sample:
    image: bytes
    texts: list[str]
    uid: int  # the same for every text of one image: ITC/ITM treat them as one image


def uid(source: str, key: str) -> int:
    """A stable 62-bit id of an image (never -100, the queue's 'no image')."""
    return int.from_bytes(hashlib.blake2b(f"{source}\0{key}".encode(), digest_size=8).digest(), "little") >> 2


def pre_caption(text: str, max_words: int = 30) -> str:
    """BLIP's caption clean-up: lower case, punctuation to spaces, at most `max_words` words."""
    text = re.sub(r"([.!\"()*#:;~])", " ", text.lower())
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    return " ".join(text.split(" ")[:max_words])


# -- sources -> pieces --------------------------------------------------------------------------

def _fs(path: str):
    return fsspec.core.url_to_fs(path)


def _full(fs, path: str) -> str:
    return path if "file" in fs.protocol else fs.unstrip_protocol(path)


def shard_pieces(folder: str) -> list[Piece]:
    """Pieces of a CapFilt output (complete shards of its manifest) or of raw input read in place by
    its source (pipeline/sources: an img2dataset folder)."""
    fs, root = _fs(folder)
    root = root.rstrip("/")
    if fs.exists(f"{root}/manifest.json"):
        manifest = json.loads(fs.cat_file(f"{root}/manifest.json"))
        pieces = []
        for shard in manifest["shards"]:
            if not shard.get("complete"):
                continue
            path = f"{root}/{shard['parquet']}"
            with fs.open(path, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
            pieces += [Piece("clean", _full(fs, path), g, g + 1, meta.row_group(g).num_rows)
                       for g in range(meta.num_row_groups) if meta.row_group(g).num_rows]
        return pieces
    source = readable_at(folder)
    if source is not None:
        pieces = []
        for part, usable in source.pairs(folder):
            pieces += [Piece("raw", part, a, min(a + PIECE_ROWS, usable), min(PIECE_ROWS, usable - a), source=source.name)
                       for a in range(0, usable, PIECE_ROWS)]
        return pieces
    readable = ", ".join(s.looks_like for s in SOURCES.values() if s.fetched_as is None)
    raise CapfiltError(f"{folder} is neither a CapFilt output (manifest.json) nor raw input read in place "
                       f"({readable}): point data.shards at one of those")


@functools.lru_cache(maxsize=16)
def karpathy_images(path: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(image path, its captions) in order of first appearance; train style (one caption per
    entry) and test style (a list per entry) alike. Parsed once per process."""
    fs, p = _fs(path)
    try:
        entries = json.loads(fs.cat_file(p))
    except (OSError, ValueError) as err:
        raise CapfiltError(f"cannot read the caption file {path}: {err}") from None
    images: dict[str, list[str]] = {}
    for e in entries:
        if not isinstance(e, dict) or "image" not in e or "caption" not in e:
            raise CapfiltError(f"{path}: each entry needs 'image' and 'caption' (COCO-Karpathy format), got {e!r:.80}")
        captions = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        images.setdefault(e["image"], []).extend(c for c in captions if c and c.strip())
    return tuple((k, tuple(v)) for k, v in images.items() if v)


def default_image_root(annotations: str) -> str:
    """Karpathy files name images relative to a root: by default the folder above `annotations/`."""
    return os.path.dirname(os.path.dirname(annotations.rstrip("/")))


def human_pieces(annotations: str, image_root: str = "") -> list[Piece]:
    n = len(karpathy_images(annotations))
    root = image_root or default_image_root(annotations)
    return [Piece("human", annotations, a, min(a + PIECE_ROWS, n), min(PIECE_ROWS, n - a), root)
            for a in range(0, n, PIECE_ROWS)]


def read_piece(piece: Piece) -> list[Sample]:
    if piece.kind == "clean":
        fs, p = _fs(piece.path)
        with fs.open(p, "rb") as fh:
            t = pq.ParquetFile(fh).read_row_group(piece.start, columns=["key", "image", "texts"])
        return [Sample(r["image"], list(r["texts"]), uid(piece.path, r["key"])) for r in t.to_pylist() if r["texts"]]
    if piece.kind == "raw":
        pairs = SOURCES[piece.source].read_pairs(piece.path, piece.start, piece.stop)
        return [Sample(image, [text], uid(piece.path, key)) for key, image, text in pairs]
    if piece.kind == "human":
        samples = []
        for image, captions in karpathy_images(piece.path)[piece.start:piece.stop]:
            with fsspec.open(piece.image_root.rstrip("/") + "/" + image, "rb") as fh:
                samples.append(Sample(fh.read(), list(captions), uid(piece.path, image)))
        return samples
    raise ValueError(piece.kind)


# -- epochs ------------------------------------------------------------------------------------

def deal(pieces: list[Piece], seed: int, epoch: int, world: int) -> list[list[Piece]]:
    """Each worker's pieces for `epoch`: a seeded shuffle dealt round-robin."""
    order = np.random.default_rng([seed, epoch]).permutation(len(pieces))
    return [[pieces[i] for i in order[r::world]] for r in range(world)]


def steps_per_epoch(pieces: list[Piece], batch_size: int, world: int, seed: int = 0, epoch: int = 0) -> int:
    if len(pieces) < world:
        raise CapfiltError(f"the training data has {len(pieces)} pieces for {world} workers: use fewer workers "
                           f"or more, smaller shards (a piece is a row group or {PIECE_ROWS} rows)")
    least = min(sum(p.rows for p in mine) for mine in deal(pieces, seed, epoch, world))
    if least < batch_size:
        raise CapfiltError(f"a worker gets only {least} samples per epoch, fewer than one batch of {batch_size}: "
                           "lower the batch size or the number of workers")
    return least // batch_size


def samples(pieces: list[Piece], seed: int, epoch: int, rank: int, skip: int = 0, buffer: int = 1000):
    """One worker's samples for an epoch, endless (it wraps: the step count decides when the epoch
    ends), each with one of its texts drawn at random. A resumed epoch replays the same seeded
    stream and passes over the first `skip` samples (read, not decoded)."""
    stream = _stream(pieces, np.random.default_rng([seed, epoch, rank]), buffer)
    for _ in range(skip):
        next(stream)
    yield from stream


def _stream(pieces: list[Piece], rng, buffer: int):
    pending: list[Sample] = []
    while True:
        for piece in pieces:
            pending += read_piece(piece)
            if len(pending) >= buffer:
                yield from _drain(pending, rng, len(pending) - buffer // 2)
        yield from _drain(pending, rng, len(pending))


def _drain(pending: list[Sample], rng, n: int):
    """n samples taken at random out of the buffer (which keeps the rest)."""
    order = rng.permutation(len(pending))
    taken, kept = order[:n], order[n:]
    picks = rng.integers(0, 1 << 30, n)
    out = [pending[i] for i in taken]
    pending[:] = [pending[i] for i in kept]
    for s, pick in zip(out, picks):
        yield s.image, s.texts[pick % len(s.texts)], s.uid


# -- images -> tensors -------------------------------------------------------------------------

def transform(image_size: int, train: bool, hflip: bool = True, randaugment: bool = True,
              crop_scale: tuple[float, float] = (0.5, 1.0)):
    """BLIP's pre-training augmentation (random resized crop, horizontal flip, RandAugment with
    2 ops at magnitude 5), or a plain bicubic resize; PIL in, uint8 (3, S, S) out."""
    from torchvision.transforms import v2

    bicubic = v2.InterpolationMode.BICUBIC
    if not train:
        steps = [v2.Resize((image_size, image_size), interpolation=bicubic)]
    else:
        steps = [v2.RandomResizedCrop(image_size, scale=tuple(crop_scale), interpolation=bicubic)]
        steps += [v2.RandomHorizontalFlip()] if hflip else []
        steps += [v2.RandAugment(num_ops=2, magnitude=5)] if randaugment else []
    return v2.Compose([v2.PILToTensor(), *steps])


def _pixels(data: bytes, tf) -> torch.Tensor | None:
    try:
        return tf(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as err:  # an undecodable image is skipped, not fatal to a long run
        log.warning("skipping an undecodable training image: %s", err)
        return None


def _put(q: queue.Queue, item, stop: threading.Event) -> None:
    while not stop.is_set():  # a consumer that stopped must not leave this thread blocked
        try:
            q.put(item, timeout=0.5)
            return
        except queue.Full:
            continue


def batches(stream, batch_size: int, tf, prefetch: int = 2):
    """(pixels uint8 (B, 3, S, S), texts, uids (B,)) batches built on a background thread."""
    out: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def work():
        try:
            while not stop.is_set():
                pixels, texts, ids = [], [], []
                while len(pixels) < batch_size:
                    image, text, i = next(stream)
                    p = _pixels(image, tf)
                    if p is not None:
                        pixels.append(p), texts.append(pre_caption(text)), ids.append(i)
                _put(out, (torch.stack(pixels), texts, torch.tensor(ids, dtype=torch.long)), stop)
        except BaseException as err:  # handed to the consumer, raised there
            _put(out, err, stop)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item = out.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
