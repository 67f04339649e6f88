"""Writing the outputs of a run on any fsspec filesystem: atomic files that hash what they write."""
from __future__ import annotations

import hashlib
import logging
from contextlib import contextmanager

import fsspec

log = logging.getLogger(__name__)


class HashSink:
    """A write-only stream that hashes what passes through it (pyarrow and tarfile only write)."""
    closed = False

    def __init__(self, f):
        self.f, self.n, self.sha = f, 0, hashlib.sha256()

    def write(self, b) -> int:
        self.f.write(b)
        self.sha.update(b)
        self.n += len(b)
        return len(b)

    def tell(self) -> int:
        return self.n

    def flush(self):
        self.f.flush()


class OutputRoot:
    """The output root on its filesystem: relative paths, atomic writes, clean-up."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str):
        self.fs, self.root = fs, root

    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    @contextmanager
    def atomic(self, rel: str):
        """Yields a hashing sink; the file appears under `rel` only once the block completes."""
        final = self.path(rel)
        parent, _, base = final.rpartition("/")
        tmp = f"{parent}/.{base}.tmp"  # hidden and not *.parquet / *.tar: no glob or dataset reader picks it up
        self.fs.makedirs(parent, exist_ok=True)
        try:
            with self.fs.open(tmp, "wb") as f:
                sink = HashSink(f)
                yield sink
            self.fs.mv(tmp, final)
        except BaseException:
            self.rm(tmp)
            raise
        sink.sha256 = sink.sha.hexdigest()

    def ls(self, rel: str) -> list[str]:
        try:
            return [p.rstrip("/") for p in self.fs.ls(self.path(rel), detail=False)]
        except FileNotFoundError:
            return []

    def rm(self, path: str, recursive: bool = False):
        try:
            self.fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass

    def prune(self, d: str, keep: set[str]):
        """Remove files of an earlier run (e.g. one with more shards) that this run did not write."""
        for p in self.ls(d):
            if p.rpartition("/")[2] not in keep:
                log.info("removing stale %s", p)
                self.rm(p, recursive=True)
