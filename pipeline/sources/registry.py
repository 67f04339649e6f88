"""Every input format a run config may name (`input.format`): one import line each."""
from __future__ import annotations

from models.errors import CapfiltError
from pipeline.sources import img2dataset  # noqa: F401  (registers "img2dataset": an img2dataset output folder)
from pipeline.sources import urls  # noqa: F401  (registers "urls": a URL list, downloaded first)
from pipeline.sources.base import Source, registered

KINDS = registered()  # name -> Source, in the order registered (the order `auto` tries them in)


def pick(path: str, fmt: str = "auto") -> Source:
    """The source of `path`: the one `fmt` names, or (auto) the first that recognises it."""
    if fmt != "auto":
        return KINDS[fmt]
    for source in KINDS.values():
        if source.detect(path):
            return source
    known = "; ".join(f"{s.looks_like} (input.format: {name})" for name, s in KINDS.items())
    raise CapfiltError(f"input {path} is none of the inputs CapFilt reads: {known}. Download a URL list with "
                       "`capfilt download`, or point input.path at the list itself")


def readable_at(path: str) -> Source | None:
    """The source that reads `path` in place (no fetch first), or None."""
    return next((s for s in KINDS.values() if s.fetched_as is None and s.detect(path)), None)
