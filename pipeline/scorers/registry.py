"""Every scorer a run config may name (`filter.scorer`, `filter.compare`): one import line each."""
from __future__ import annotations

from pipeline.scorers import itm  # noqa: F401  (registers "itm": BLIP's ITM head)
from pipeline.scorers import itc  # noqa: F401  (registers "itc": the CLIP-style cosine of the ITC projections)
from pipeline.scorers.base import ScorerKind, registered

KINDS = registered()  # name -> ScorerKind, in the order registered


def kind(name: str) -> ScorerKind:
    """The registered scorer `name`; a KeyError names the known ones (config validation says it first)."""
    try:
        return KINDS[name]
    except KeyError:
        raise KeyError(f"no scorer named {name!r}; known: {', '.join(KINDS)}") from None
