"""Copies of an image, within a run and against earlier versions of the dataset.

Web crawls repeat images: the same file under other URLs (the same sha256 of the bytes: an
`exact` copy) and the same picture re-encoded, resized or slightly cropped (perceptual hashes
within `max_distance` bits: a `near` copy, pipeline/fingerprint.py). Of each set of copies one stays, the others go to
rejected/ with status and reason `duplicate`, the key they copy and how they matched.

Which copy stays is decided the same way whatever the batching: the kept rows of earlier
versions first (they are published already), then this run's rows that were kept before dropped
ones, larger images (as downloaded) before smaller, and by key. A row is compared with the copies
that stay only, so near copies do not chain (a~b, b~c does not make c a copy of a unless it is
within reach of a itself). Failed rows have no fingerprint and stay failed.

Near copies are found without comparing all pairs: each hash is cut into `max_distance + 1`
bands, and two hashes within `max_distance` bits agree on at least one whole band (the
pigeonhole), so only rows sharing a band are compared.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import pyarrow.parquet as pq

from models.errors import CapfiltError
from pipeline import manifest as mf
from pipeline import storage
from pipeline.fingerprint import distance

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Match:
    """A row found to copy `of` (its key), held by the earlier version `within` (None: this run)."""
    of: str
    within: str | None
    how: str  # "exact", or "near (hash distance D)"


class Index:
    """The copies that stay so far: by sha256, and by bands of their perceptual hash."""

    def __init__(self, exact: bool, near: bool, max_distance: int, bits: int):
        self.exact, self.near, self.max_distance = exact, near, max_distance
        n = max_distance + 1
        edges = [round(i * bits / n) for i in range(n + 1)]
        self.bands = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:]) if hi > lo]
        self.by_sha: dict[str, tuple[str, str | None]] = {}
        self.by_band: dict[tuple[int, int], list[tuple[int, str, str | None]]] = defaultdict(list)

    def add(self, key: str, sha: str | None, hash_hex: str | None, within: str | None) -> None:
        if sha and self.exact:
            self.by_sha.setdefault(sha, (key, within))
        if hash_hex and self.near:
            h = int(hash_hex, 16)
            for b, (shift, mask) in enumerate(self.bands):
                self.by_band[(b, (h >> shift) & mask)].append((h, key, within))

    def match(self, sha: str | None, hash_hex: str | None) -> Match | None:
        if sha and self.exact and sha in self.by_sha:
            return Match(*self.by_sha[sha], "exact")
        if not (hash_hex and self.near):
            return None
        h, best = int(hash_hex, 16), None
        for b, (shift, mask) in enumerate(self.bands):
            for other, key, within in self.by_band.get((b, (h >> shift) & mask), ()):
                d = distance(h, other)
                if d <= self.max_distance and (best is None or d < best[0]):
                    best = (d, key, within)  # the nearest; of equals, the first to stay
        return None if best is None else Match(best[1], best[2], f"near (hash distance {best[0]})")


def find(rows: dict, spec, earlier: list[tuple[str, dict]] = ()) -> dict[int, Match]:
    """Row index -> Match for every copy among `rows` (columns key, status, image_sha256,
    image_hash, pixels: lists of one length), as `spec` (the run's dedup section: exact, near,
    max_distance, hash_size) says; `earlier`: (version, its kept rows' key, image_sha256 and
    image_hash) of earlier versions, whose rows all stay."""
    if spec is None or not (spec.exact or spec.near):
        return {}
    index = Index(spec.exact, spec.near, spec.max_distance, spec.hash_size ** 2)
    ours = set(rows["key"])
    for within, kept in earlier:
        for key, sha, hash_hex in zip(kept["key"], kept["image_sha256"], kept["image_hash"]):
            if key not in ours:  # the same row again (a full refresh) is no copy of itself: judged afresh
                index.add(key, sha, hash_hex, within)
    order = sorted((i for i, sha in enumerate(rows["image_sha256"]) if sha),
                   key=lambda i: (rows["status"][i] != "kept", -(rows["pixels"][i] or 0), rows["key"][i]))
    found = {}
    for i in order:
        hit = index.match(rows["image_sha256"][i], rows["image_hash"][i])
        if hit is None:
            index.add(rows["key"][i], rows["image_sha256"][i], rows["image_hash"][i], None)
        else:
            found[i] = hit
    log.info("dedup: %d of %d rows copy another (%d against earlier versions)", len(found), len(order),
             sum(m.within is not None for m in found.values()))
    return found


def problems(paths: list[str], out: str) -> list[str]:
    """What is wrong with `dedup.against` before the run starts: each an earlier version's finished
    output (its manifest), not this run's own output."""
    found = []
    for path in paths:
        if path.rstrip("/") == out.rstrip("/"):
            found.append(f"dedup.against names this run's own output {path}: list earlier versions only")
            continue
        try:
            made = (mf.read(path).get("params") or {}).get("dedup")
        except CapfiltError as err:
            found.append(f"dedup.against {path}: {err}")
            continue
        if not made:
            found.append(f"dedup.against {path}: its shards carry no image fingerprints (made by a version "
                         "before deduplication): leave it out of dedup.against")
    return found


def earlier_versions(paths: list[str], spec) -> list[tuple[str, dict]]:
    """(path, its kept rows' key, image_sha256, image_hash) of each earlier version's output; a
    version without fingerprints, or hashed another way than `spec` says, is one clear error."""
    out = []
    for path in paths:
        with storage.guard("reading the earlier version", path):
            m = mf.read(path)
            made = (m.get("params") or {}).get("dedup") or {}
            if (made.get("hash"), made.get("hash_size")) != (spec.hash, spec.hash_size):
                raise CapfiltError(f"dedup.against {path} was hashed with {made.get('hash')} of size "
                                   f"{made.get('hash_size')}, this run with {spec.hash} of size {spec.hash_size}: "
                                   "set dedup.hash and dedup.hash_size as that version had them")
            fs, root = storage.filesystem(path)
            columns = {"key": [], "image_sha256": [], "image_hash": []}
            for s in m["shards"]:
                if not s.get("complete"):
                    continue
                with fs.open(f"{root.rstrip('/')}/{s['parquet']}", "rb") as fh:
                    t = pq.read_table(fh, columns=list(columns))
                for c in columns:
                    columns[c] += t[c].to_pylist()
        out.append((path, columns))
    return out
