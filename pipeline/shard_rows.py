"""The kept rows as the shards publish them: the staging row's kept texts under their published
names, and each kept text's lineage beside it.

Every kept text carries, in lists parallel to `texts` (DESIGN.md, "Data contracts"): its origin
(`origins`: web or synthetic), the bootstrap round that made the dataset (`rounds`), the sha256
of the captioner checkpoint that wrote it (`captioners`: null for a web text), of the filter
checkpoint(s) that kept it (`filters`: an ensemble's hashes joined by `+`; null when no filter
decided, as in a caption-only run) and the threshold that kept it (`thresholds`: null when no
threshold did, as for the captions a `top_k` keep takes whatever their score). A run's lineage
(pipeline/run.py `lineage`) says all of it; without one (a finalize by hand) the lists hold nulls.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from models.errors import CapfiltError
from pipeline.schema import PUBLISHED_NAMES, TEXT_LINEAGE


def cast(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
        raise CapfiltError(f"{what}: columns do not match the staging contract "
                           f"(pipeline/schema.py): {e}") from e


def text_lineage(origin: str, lineage: dict | None) -> tuple:
    """(round, captioner, filter, threshold) of one kept text of `origin`, from the run's lineage."""
    if not lineage:
        return None, None, None, None
    mode = lineage.get("mode", "capfilt")
    filters = "+".join(lineage.get("filter_sha256") or []) or None
    decided = mode != "caption_only"
    keep = (lineage.get("keep") or {}).get("captions", "threshold")
    by_threshold = decided and (origin == "web" or keep != "top_k")
    return (lineage.get("round"), lineage.get("captioner_sha256") if origin == "synthetic" else None,
            filters if decided else None, lineage.get("threshold") if by_threshold else None)


def as_shard(t: pa.Table, schema: pa.Schema, where: str, lineage: dict | None = None) -> pa.Table:
    """Staging rows that were kept, as `schema` (pipeline/schema.py shard_schema) holds them."""
    n_texts = pc.fill_null(pc.list_value_length(t["kept_texts"]), 0)
    bad = pc.or_(pc.or_(pc.equal(n_texts, 0), pc.is_null(t["image"])),
                 pc.or_(pc.not_equal(n_texts, pc.fill_null(pc.list_value_length(t["kept_origins"]), 0)),
                        pc.not_equal(n_texts, pc.fill_null(pc.list_value_length(t["kept_scores"]), 0))))
    if pc.any(bad).as_py():
        k = t.filter(bad)["key"][0].as_py()
        raise CapfiltError(f"{where}: kept row {k!r} lacks its image or kept texts, or its kept_texts, "
                           "kept_origins and kept_scores differ in length")
    staged = {p: s for s, p in PUBLISHED_NAMES.items()}
    columns = {n: t[staged.get(n, n)] for n in schema.names if n not in TEXT_LINEAGE}
    per_row = [[text_lineage(o, lineage) for o in origins] for origins in t["kept_origins"].to_pylist()]
    for i, name in enumerate(TEXT_LINEAGE):
        columns[name] = pa.array([[x[i] for x in row] for row in per_row], schema.field(name).type)
    return cast(pa.table({n: columns[n] for n in schema.names}), schema, where)
