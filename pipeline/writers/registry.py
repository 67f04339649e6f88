"""Every output format a run writes: one import line each, written in this order per output file."""
from __future__ import annotations

from pipeline.writers import shard_parquet  # noqa: F401  (shards/NNNNN.parquet)
from pipeline.writers import webdataset_tar  # noqa: F401  (shards/NNNNN.tar)
from pipeline.writers import blip_json  # noqa: F401  (blip_json.json)
from pipeline.writers import rejected_parquet  # noqa: F401  (rejected/NNNNN.parquet)
from pipeline.writers.base import registered

WRITERS = registered()
