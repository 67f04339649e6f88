"""The row contract (DESIGN.md, "Data contracts"): the columns a source hands the graph, the staging
rows the graph writes, the shard and rejected rows the sinks publish, and what their values mean.

The bottom of the pipeline: sources, stages, decode, writers, sinks and the report all read it,
and it imports nothing of theirs. A run's score columns follow the scorers it uses
(`Scoring`): `web_<name>` (float32) and `caption_<name>` (list<float32>) per scorer, the
deciding one first; BLIP's ITM filter alone gives DESIGN.md's `web_itm` and `caption_itm`.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

STATUSES = ("kept", "dropped", "failed")  # what the graph decides, row by row
# what finalize decides across rows: a copy of another row's image (pipeline/dedup.py), in rejected/
DUPLICATE = "duplicate"
ORIGINS = ("web", "synthetic")
DEFAULT_SCORER = "itm"  # BLIP's filter: the ITM head's match probability
# lineage: the user's own key (the URL list's key column; null without one), the size as downloaded
LINEAGE = ("source_key", "original_width", "original_height")
# what every stage after the source sees (DESIGN.md's web record)
SOURCE_COLUMNS = ("key", "url", "web_text", "image", "source_shard", "error", *LINEAGE)
# the image's fingerprints, set by decode (pipeline/fingerprint.py): sha256 of the bytes as
# downloaded, and a perceptual hash (hex) of the decoded pixels; null for a row that failed
FINGERPRINT = ("image_sha256", "image_hash")
# a duplicate's rejected row: the key it copies, the earlier version holding that key (null: this
# run), and how it matched ("exact", or "near" with the hashes' Hamming distance)
DUPLICATE_OF = ("duplicate_of", "duplicate_in", "duplicate_match")
# each kept text's lineage, in lists parallel to the kept texts (pipeline/shard_rows.py): the round,
# the sha256 of the captioner that wrote it and of the filter that kept it, and the threshold that did
TEXT_LINEAGE = ("rounds", "captioners", "filters", "thresholds")

_L = pa.list_
_FIELDS = {f.name: f for f in (
    pa.field("key", pa.string()), pa.field("url", pa.string()), pa.field("web_text", pa.string()),
    pa.field("image", pa.binary()), pa.field("width", pa.int32()), pa.field("height", pa.int32()),
    pa.field("source_shard", pa.string()), pa.field("captions", _L(pa.string())),
    pa.field("status", pa.string()), pa.field("error", pa.string()),
    pa.field("kept_texts", _L(pa.string())), pa.field("kept_origins", _L(pa.string())),
    pa.field("kept_scores", _L(pa.float32())),
    pa.field("source_key", pa.string()), pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("reason", pa.string()),
    pa.field("image_sha256", pa.string()), pa.field("image_hash", pa.string()),
    pa.field("duplicate_of", pa.string()), pa.field("duplicate_in", pa.string()),
    pa.field("duplicate_match", pa.string()),
    pa.field("rounds", _L(pa.int32())), pa.field("captioners", _L(pa.string())),
    pa.field("filters", _L(pa.string())), pa.field("thresholds", _L(pa.float64())),
)}
# the published names of the staging columns of the kept texts
PUBLISHED_NAMES = {"kept_texts": "texts", "kept_origins": "origins", "kept_scores": "scores"}


def web_column(scorer: str) -> str:
    """The column of a scorer's score of the web text (float32, null when not scored)."""
    return f"web_{scorer}"


def caption_column(scorer: str) -> str:
    """The column of a scorer's scores of the synthetic captions (list<float32>, one per caption)."""
    return f"caption_{scorer}"


def score_fields(scorers) -> list[pa.Field]:
    out = []
    for name in scorers:
        out += [pa.field(web_column(name), pa.float32()), pa.field(caption_column(name), _L(pa.float32()))]
    return out


@dataclass(frozen=True)
class Scoring:
    """The scorers of a run: `scorer` decides at `threshold` (None: not stated); `compare` holds
    (name, threshold) pairs scored beside it and reported, never deciding, sorted by name so that
    the same scorers give the same columns in any order they were listed."""
    scorer: str = DEFAULT_SCORER
    threshold: float | None = None
    compare: tuple[tuple[str, float], ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "compare", tuple(sorted((str(n), float(t)) for n, t in dict(self.compare).items())))

    @property
    def names(self) -> tuple[str, ...]:
        """Every scorer, the deciding one first: the order of the score columns."""
        return (self.scorer, *(n for n, _ in self.compare))

    @property
    def thresholds(self) -> dict[str, float | None]:
        return {self.scorer: self.threshold, **dict(self.compare)}

    def record(self) -> dict:
        """As the manifest holds it."""
        return {"scorer": self.scorer, "threshold": self.threshold, "compare": dict(self.compare)}

    @classmethod
    def from_record(cls, record: dict) -> "Scoring":
        return cls(record["scorer"], record.get("threshold"), tuple((record.get("compare") or {}).items()))

    def staging_schema(self) -> pa.Schema:
        return staging_schema(self.names)

    def shard_schema(self) -> pa.Schema:
        return shard_schema(self.names)

    def rejected_schema(self) -> pa.Schema:
        return rejected_schema(self.names)


def staging_schema(scorers=(DEFAULT_SCORER,)) -> pa.Schema:
    """One row per input row, as the graph's decide stage writes it."""
    return pa.schema([_FIELDS[n] for n in ("key", "url", "web_text", "image", "width", "height", "source_shard",
                                           "captions")]
                     + score_fields(scorers)
                     + [_FIELDS[n] for n in ("status", "error", "kept_texts", "kept_origins", "kept_scores", *LINEAGE,
                                             *FINGERPRINT)])


def shard_schema(scorers=(DEFAULT_SCORER,)) -> pa.Schema:
    """The kept rows in shards/NNNNN.parquet: `texts`, `origins` and `scores` are the kept texts,
    and TEXT_LINEAGE what made and kept each of them."""
    kept = [_FIELDS[s].with_name(p) for s, p in PUBLISHED_NAMES.items()] + [_FIELDS[n] for n in TEXT_LINEAGE]
    return pa.schema([_FIELDS[n] for n in ("key", "url", "image", "width", "height", "web_text", "captions")]
                     + score_fields(scorers) + kept + [_FIELDS[n] for n in ("source_shard", *LINEAGE, *FINGERPRINT)])


def rejected_schema(scorers=(DEFAULT_SCORER,)) -> pa.Schema:
    """The dropped, failed and duplicate rows in rejected/NNNNN.parquet: no image bytes, a reason in words."""
    return pa.schema([_FIELDS[n] for n in ("key", "url", "web_text", "width", "height", "source_shard", "captions")]
                     + score_fields(scorers)
                     + [_FIELDS[n] for n in ("status", "error", *LINEAGE, "reason", *FINGERPRINT, *DUPLICATE_OF)])


# BLIP's filter alone: the columns of DESIGN.md
STAGING_SCHEMA = staging_schema()
SHARD_SCHEMA = shard_schema()
REJECTED_SCHEMA = rejected_schema()


def failed(error) -> bool:
    """A row failed when it carries a reason (Ray may hand a null back as None or NaN)."""
    return isinstance(error, str) and bool(error)


def text_or_none(value) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else str(value)


def int_or_none(value) -> int | None:
    """An int column's cell as Ray hands it over: None, NaN (a null in a float array) or a number."""
    try:
        return None if value is None or value != value else int(value)
    except (TypeError, ValueError):
        return None
