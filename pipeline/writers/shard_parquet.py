"""shards/NNNNN.parquet: the kept rows, every column of the shard schema, images included."""
from __future__ import annotations

import pyarrow.parquet as pq

from pipeline.writers.base import Writer, register

ROW_GROUP_ROWS = 1000  # so readers of a shard can stream it instead of loading it whole


@register
class ShardParquet(Writer):
    rows = "shards"

    def write(self, name, rows) -> dict:
        rel = f"shards/{name}.parquet"
        with self.root.atomic(rel) as sink:
            pq.write_table(rows, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        return {"parquet": rel, "parquet_sha256": sink.sha256}
