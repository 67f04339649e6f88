"""rejected/NNNNN.parquet: the dropped and failed rows, without image bytes, with their scores,
status, error and a reason in words."""
from __future__ import annotations

import pyarrow.parquet as pq

from pipeline.writers.base import Writer, register

ROW_GROUP_ROWS = 10_000  # no image bytes: larger row groups than a shard's


@register
class RejectedParquet(Writer):
    rows = "rejected"

    def write(self, name, rows) -> dict:
        rel = f"rejected/{name}.parquet"
        with self.root.atomic(rel) as sink:
            pq.write_table(rows, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        return {"parquet": rel, "sha256": sink.sha256}
