"""The sha256 of a file on any fsspec filesystem, read in chunks (inputs' and checkpoints' identity)."""
from __future__ import annotations

import hashlib

import fsspec


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with fsspec.open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
