"""The writer protocol: one output format of the rows a run publishes.

`finalize` (pipeline/sinks.py) makes one writer of each registered format per run, under the
output root, and enters it (`with`); it then hands it, output file by output file and in key
order, the rows it writes: the kept rows (`rows = "shards"`: shards/NNNNN.*) or the dropped and
failed ones (`rows = "rejected"`). `write` returns the fields this format adds to that file's
manifest entry; `exports`, read once the writer has exited without an error, the entries it adds
to the manifest's `exports`. Every file goes through `OutputRoot.atomic`: a reader never sees a
partial one, and its sha256 comes with it. `check` sees every kept key before anything is written.
"""
from __future__ import annotations

from typing import ClassVar

import pyarrow as pa

from pipeline.outputs import OutputRoot
from pipeline.schema import Scoring


class Writer:
    rows: ClassVar[str] = "shards"  # "shards" (kept rows) or "rejected" (dropped and failed rows)

    def __init__(self, root: OutputRoot, scoring: Scoring):
        self.root, self.scoring = root, scoring
        self.exports: dict = {}

    @staticmethod
    def check(kept_keys: list[str]) -> None:
        """Raise a CapfiltError when these keys cannot be written in this format (before anything is)."""

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def write(self, name: str, rows: pa.Table) -> dict:
        """Write output file `name` (rows sorted by key); the fields of its manifest entry."""
        raise NotImplementedError


_WRITERS: list[type[Writer]] = []


def register(writer: type[Writer]) -> type[Writer]:
    """Called once by each writer file (pipeline/writers/registry.py imports them all)."""
    _WRITERS.append(writer)
    return writer


def registered() -> tuple[type[Writer], ...]:
    return tuple(_WRITERS)
