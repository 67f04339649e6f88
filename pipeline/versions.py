"""Versions of a dataset: what this one changed against the previous version's output.

`diff` compares the kept rows by key: `added` (kept now, not kept before), `kept_again`, and the
rows the previous version kept that this one does not, by reason: `dropped`, `failed`,
`duplicate` (now a copy of another row) or `not_in_input` (this version did not read the row).
The manifest (`lineage.diff`) and the card carry it.
"""
from __future__ import annotations

from collections import Counter

import pyarrow.parquet as pq

from pipeline import manifest as mf
from pipeline import storage

NOT_IN_INPUT = "not_in_input"


def kept_keys(path: str) -> set[str]:
    """The keys of the kept rows of a finished output."""
    with storage.guard("reading the previous version", path):
        m = mf.read(path)
        fs, root = storage.filesystem(path)
        keys: set[str] = set()
        for s in m["shards"]:
            if s.get("complete"):
                with fs.open(f"{root.rstrip('/')}/{s['parquet']}", "rb") as fh:
                    keys.update(pq.read_table(fh, columns=["key"])["key"].to_pylist())
    return keys


def diff(previous: set[str], outcome: dict[str, str], against: str) -> dict:
    """`outcome`: this version's key -> kept, dropped, failed or duplicate."""
    kept = {k for k, s in outcome.items() if s == "kept"}
    removed = Counter(outcome.get(k, NOT_IN_INPUT) for k in previous - kept)
    return {"against": mf.scrub_text(against), "previous_kept": len(previous), "kept": len(kept),
            "added": len(kept - previous), "kept_again": len(kept & previous),
            "removed": {r: removed[r] for r in sorted(removed)}}
