"""The source protocol: what the run, the training data and the report ask of an input format.

A source is one input format (`input.format`): it says whether a path is of its format
(`detect`), what the run's identity records of it (`describe`: paths with checksums), how many
rows it holds (`count`; every one ends in exactly one output row) and reads them (`read`: a Ray
dataset of the contract's SOURCE_COLUMNS, file-based so that Ray's job checkpoint can resume it).
Training reads (image, text) pairs out of it piece by piece (`pairs`, `read_pairs`), and the
report the images of rows it sampled (`images`). A source that must be fetched before it is read
(a URL list: downloaded) names the source it is fetched into (`fetched_as`) and does `fetch`.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import ClassVar

from models.errors import CapfiltError


class Source:
    name: ClassVar[str]
    looks_like: ClassVar[str]          # what a path of this format is, for the error when none matches
    fetched_as: ClassVar[str | None] = None  # read once fetched into a source of this name

    def detect(self, path: str) -> bool:
        raise NotImplementedError

    def describe(self, path: str) -> list[dict]:
        """The run identity's `inputs`: what `path` holds, with checksums."""
        raise NotImplementedError

    def fetch(self, path: str, into: str, settings) -> str:
        """Fetch `path` into the folder `into` (a source named `fetched_as`), with the run config's
        download `settings`; returns the folder. Rerunning it resumes or skips what is done."""
        raise CapfiltError(f"a {self.name} input is read in place: nothing to fetch")

    def _not_readable(self, path: str) -> CapfiltError:
        return CapfiltError(f"{path} is a {self.name} input: it is read once fetched into the {self.fetched_as} "
                            "format (`capfilt download`, or a run does it first)")

    def count(self, path: str) -> int:
        """Rows in `path`, each of which the run turns into one output row."""
        raise self._not_readable(path)

    def read(self, path: str, rows_per_block: int):
        """The rows of `path` as a Ray dataset of SOURCE_COLUMNS, in blocks of `rows_per_block`."""
        raise self._not_readable(path)

    def pairs(self, path: str) -> list[tuple[str, int]]:
        """(part, usable rows) for training: the rows of each part that have an image and a text."""
        raise self._not_readable(path)

    def read_pairs(self, part: str, start: int, stop: int) -> list[tuple[str, bytes, str]]:
        """(key, image bytes, text) of the usable rows start..stop of `part` whose image can be read."""
        raise self._not_readable(part)

    def images(self, described: list[dict], wanted: dict[str, set[str]]) -> dict[str, bytes]:
        """Image bytes by key, of the rows {source_shard: keys} found in what `describe` recorded
        (entries this source did not describe are passed over)."""
        return {}


_SOURCES: dict[str, Source] = {}


def register(source: type[Source]) -> type[Source]:
    """Called once by each source file (pipeline/sources/registry.py imports them all)."""
    if source.name in _SOURCES:
        raise ValueError(f"two sources are named {source.name!r}")
    _SOURCES[source.name] = source()
    return source


def registered() -> MappingProxyType:
    return MappingProxyType(_SOURCES)
