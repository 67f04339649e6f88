"""The sinks of the CapFilt graph: staging Parquet in, the published dataset out.

The Ray Data graph writes one staging row per input row (any file names, under `OUT/_staging/`).
`finalize` turns them into the output of DESIGN.md: `shards/NNNNN.{parquet,tar}` (kept rows,
sorted by key), `rejected/NNNNN.parquet` (dropped and failed rows, no image bytes, with reasons),
`blip_json.json`, `README.md` and, last, `manifest.json`, the completion marker.

Memory stays bounded by one staging file plus one output shard, not by the run:
1. plan: read only `key`, `status` and `kept_origins` of every staging file, check the rows
   reconcile (unique keys, known statuses, safe tar names), and cut the sorted keys into shards;
2. spill: read each staging file once, in batches, and write its rows into one bucket per output
   shard under `OUT/_finalize_tmp/`;
3. write: per output shard, read its bucket, sort by key and write the Parquet file and the tar.
Every file is written to a hidden temporary name and renamed when complete, so a reader never sees
a partial file; a rerun removes the old manifest first (the output is incomplete until the new one
lands), clears leftovers of an interrupted run and rewrites the same bytes.
"""
from __future__ import annotations

import bisect
import io
import json
import logging
import tarfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.errors import CapfiltError
from pipeline import card, manifest as mf
from pipeline.outputs import HashSink, OutputRoot
from pipeline.safety import safe_key

log = logging.getLogger(__name__)

STATUSES = ("kept", "dropped", "failed")
ORIGINS = ("web", "synthetic")
_L = pa.list_
STAGING_SCHEMA = pa.schema([
    ("key", pa.string()), ("url", pa.string()), ("web_text", pa.string()), ("image", pa.binary()),
    ("width", pa.int32()), ("height", pa.int32()), ("source_shard", pa.string()),
    ("captions", _L(pa.string())), ("web_itm", pa.float32()), ("caption_itm", _L(pa.float32())),
    ("status", pa.string()), ("error", pa.string()),
    ("kept_texts", _L(pa.string())), ("kept_origins", _L(pa.string())), ("kept_scores", _L(pa.float32())),
    # lineage: the user's own key (the URL list's key column; null without one), the size as downloaded
    ("source_key", pa.string()), ("original_width", pa.int32()), ("original_height", pa.int32()),
])
LINEAGE = ("source_key", "original_width", "original_height")
_STAGING_NAME = {"texts": "kept_texts", "origins": "kept_origins", "scores": "kept_scores"}
SHARD_SCHEMA = pa.schema([STAGING_SCHEMA.field(_STAGING_NAME.get(n, n)).with_name(n) for n in (
    "key", "url", "image", "width", "height", "web_text", "captions", "web_itm", "caption_itm",
    "texts", "origins", "scores", "source_shard", *LINEAGE)])
REJECTED_SCHEMA = pa.schema([STAGING_SCHEMA.field(n) for n in (
    "key", "url", "web_text", "width", "height", "source_shard", "captions", "web_itm", "caption_itm",
    "status", "error", *LINEAGE)] + [pa.field("reason", pa.string())])
SPILL = "_finalize_tmp"
BATCH_ROWS = 256        # staging rows decoded at a time
ROW_GROUP_ROWS = 1000   # so readers of a shard can stream it instead of loading it whole
# The tar member stem of a key (pipeline/safety.py): everything outside [A-Za-z0-9_-] becomes `_`,
# since webdataset groups members by the text before the first dot and tar treats `/` as a folder;
# a very long key is cut and ends in its hash.
sample_key = safe_key


def image_ext(data: bytes) -> str:
    # webdataset's decoders (and open_clip) look for jpg/png; PIL sniffs the bytes anyway, so any
    # other format is safest under `jpg`.
    return "png" if data[:8] == b"\x89PNG\r\n\x1a\n" else "jpg"


def drop_reason(web_text: str | None, web_itm: float | None, caption_itm: list | None, threshold=None) -> str:
    t = f"{threshold:g}" if isinstance(threshold, (int, float)) else "the threshold"
    web = (f"web text ITM {web_itm:.2f} < {t}" if web_itm is not None and web_itm == web_itm  # NaN: not scored
           else "web text not scored" + ("" if web_text else " (empty)"))
    scored = [s for s in caption_itm or [] if s is not None and s == s]
    if not caption_itm:
        return f"{web} and no synthetic captions"
    return f"{web} and no synthetic caption >= {t}" + (f" (best {max(scored):.2f})" if scored else " (none scored)")


def _begin(root: OutputRoot) -> None:
    """Mark the output incomplete and clear what an interrupted finalize left behind."""
    root.rm(root.path(mf.MANIFEST))
    root.rm(root.path(SPILL), recursive=True)
    for d in ("", "shards", "rejected"):
        for p in root.ls(d):
            if p.rpartition("/")[2].startswith(".") and p.endswith(".tmp"):
                root.rm(p)


def _fs(url: str, filesystem) -> tuple[fsspec.AbstractFileSystem, str]:
    if filesystem is not None:
        return filesystem, filesystem._strip_protocol(url).rstrip("/")
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path.rstrip("/")


def _cast(table: pa.Table, schema: pa.Schema, what: str) -> pa.Table:
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, KeyError) as e:
        raise CapfiltError(f"{what}: columns do not match the staging contract "
                           f"(pipeline/sinks.py STAGING_SCHEMA): {e}") from e


@dataclass
class _Plan:
    files: list[str]
    counts: dict
    bounds: dict[str, list[str]]  # kind -> first key of each output file
    rows: dict[str, list[int]]    # kind -> rows of each output file
    skip: dict[int, np.ndarray]   # staging file -> row numbers of duplicate copies to leave out


def _staging_files(fs, root: str, url: str) -> list[str]:
    if not fs.exists(root):
        raise CapfiltError(f"staging folder {url} does not exist: run the graph first, or check the path")
    # Like pyarrow datasets, skip _hidden and .hidden entries (Ray's temporary files, our own spill).
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet")
                   and not any(part.startswith(("_", ".")) for part in p[len(root):].strip("/").split("/")))
    if not files:
        raise CapfiltError(f"no staging Parquet files under {url}: the graph wrote nothing there")
    return files


def _cuts(keys: pa.Array, size: int) -> tuple[list[str], list[int]]:
    ordered = keys.take(pc.sort_indices(keys))
    starts = list(range(0, len(ordered), size))
    return ordered.take(pa.array(starts, pa.int64())).to_pylist(), [min(size, len(ordered) - s) for s in starts]


def _plan(fs, files: list[str], rows_per_shard: int, duplicates: str) -> _Plan:
    light = pa.schema([STAGING_SCHEMA.field(c) for c in ("key", "status", "kept_origins")])
    parts = []
    for i, f in enumerate(files):
        with fs.open(f, "rb") as fh:
            pfile = pq.ParquetFile(fh)
            missing = [c for c in STAGING_SCHEMA.names if c not in pfile.schema_arrow.names]
            if missing:
                raise CapfiltError(f"staging file {f} lacks column(s) {', '.join(missing)}: it was not "
                                   "written by the CapFilt graph, or by an older version of it")
            t = _cast(pfile.read(columns=light.names), light, f"staging file {f}")
        parts.append(t.append_column("file", pa.array(np.full(len(t), i, np.int32)))
                     .append_column("row", pa.array(np.arange(len(t)))))
    t = pa.concat_tables(parts).combine_chunks()
    t = t.append_column("pos", pa.array(np.arange(len(t))))  # file order, then row order
    no_key = t["key"].null_count + (pc.sum(pc.equal(t["key"], "")).as_py() or 0)
    if no_key:
        raise CapfiltError(f"staging has {no_key} row(s) with a null or empty key: every row needs one")
    status = pc.fill_null(t["status"], "")
    bad = t.filter(pc.invert(pc.is_in(status, value_set=pa.array(STATUSES))))
    if len(bad):
        raise CapfiltError(f"staging has {len(bad)} row(s) with a status outside {STATUSES}, e.g. key "
                           f"{bad['key'][0].as_py()!r} with {bad['status'][0].as_py()!r}")
    groups = t.group_by("key").aggregate([("pos", "count"), ("pos", "min")])
    dup = groups.filter(pc.greater(pc.field("pos_count"), 1))
    skip: dict[int, list[int]] = defaultdict(list)
    if len(dup) and duplicates == "error":
        k = dup["key"][0].as_py()
        where = sorted({files[j] for j in t.filter(pc.equal(t["key"], k))["file"].to_pylist()})
        raise CapfiltError(f"staging rows do not reconcile: {len(dup)} duplicate key(s), e.g. {k!r} "
                           f"(in {', '.join(where)}). A row was written twice (a retried or resumed write?): "
                           "rerun the graph into an empty staging folder, or finalize with duplicates='first'")
    if len(dup):  # duplicates="first": the copy in the first staging file (by path) wins, deterministically
        first = np.zeros(len(t), bool)
        first[groups["pos_min"].to_numpy()] = True
        losers = t.filter(pa.array(~first))
        for j, r in zip(losers["file"].to_pylist(), losers["row"].to_pylist()):
            skip[j].append(r)
        log.warning("finalize: %d duplicate staging row(s) of %d key(s) left out", len(losers), len(dup))
        t = t.filter(pa.array(first))
    status = t["status"]  # checked above: no nulls
    counts = {s: int(pc.sum(pc.equal(status, s)).as_py() or 0) for s in STATUSES}
    kept = t.filter(pc.equal(status, "kept"))
    rejected = t.filter(pc.not_equal(status, "kept"))
    origins = Counter(pc.list_flatten(kept["kept_origins"]).to_pylist())
    if set(origins) - set(ORIGINS):
        raise CapfiltError(f"staging kept_origins holds {sorted(set(origins) - set(ORIGINS))}: "
                           f"only {ORIGINS} are known")
    tar_names = defaultdict(list)
    for k in kept["key"].to_pylist():
        tar_names[sample_key(k)].append(k)
    clash = [v for v in tar_names.values() if len(v) > 1]
    if clash:
        raise CapfiltError(f"{len(clash)} kept key(s) collide once made safe for tar member names, e.g. "
                           f"{clash[0]} all become {sample_key(clash[0][0])!r}: make the keys differ in "
                           "[A-Za-z0-9_-], e.g. use img2dataset's numeric keys")
    kb, kr = _cuts(kept["key"], rows_per_shard)
    rb, rr = _cuts(rejected["key"], rows_per_shard)
    counts = {"rows_in": len(t), **counts, "texts_kept": {o: origins.get(o, 0) for o in ORIGINS},
              "duplicates_dropped": sum(map(len, skip.values()))}
    return _Plan(files, counts, {"shards": kb, "rejected": rb}, {"shards": kr, "rejected": rr},
                 {j: np.array(r) for j, r in skip.items()})


def _as_shard(t: pa.Table, where: str) -> pa.Table:
    n_texts = pc.fill_null(pc.list_value_length(t["kept_texts"]), 0)
    bad = pc.or_(pc.or_(pc.equal(n_texts, 0), pc.is_null(t["image"])),
                 pc.or_(pc.not_equal(n_texts, pc.fill_null(pc.list_value_length(t["kept_origins"]), 0)),
                        pc.not_equal(n_texts, pc.fill_null(pc.list_value_length(t["kept_scores"]), 0))))
    if pc.any(bad).as_py():
        k = t.filter(bad)["key"][0].as_py()
        raise CapfiltError(f"{where}: kept row {k!r} lacks its image or kept texts, or its kept_texts, "
                           "kept_origins and kept_scores differ in length")
    return _cast(pa.table({n: t[_STAGING_NAME.get(n, n)] for n in SHARD_SCHEMA.names}), SHARD_SCHEMA, where)


def _as_rejected(t: pa.Table, threshold, where: str) -> pa.Table:
    cols = t.select(["status", "error", "web_text", "web_itm", "caption_itm"]).to_pydict()
    reasons = [(e or "failed (no error recorded)") if s == "failed" else drop_reason(w, wi, ci, threshold)
               for s, e, w, wi, ci in zip(*cols.values())]
    return _cast(t.append_column("reason", pa.array(reasons, pa.string())), REJECTED_SCHEMA, where)


def _spill(fs, plan: _Plan, out: OutputRoot, threshold):
    """Route every staging row to the bucket of its output file, one staging file at a time."""
    for i, f in enumerate(plan.files):
        buckets: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        with fs.open(f, "rb") as fh:
            row = 0
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=BATCH_ROWS, columns=STAGING_SCHEMA.names):
                t = pa.Table.from_batches([batch])
                if i in plan.skip:
                    t = t.filter(pa.array(~np.isin(np.arange(row, row + len(t)), plan.skip[i])))
                row += batch.num_rows
                is_kept = pc.equal(t["status"], "kept")
                for kind, rows in (("shards", t.filter(is_kept)), ("rejected", t.filter(pc.invert(is_kept)))):
                    if not len(rows):
                        continue
                    rows = _as_shard(rows, f) if kind == "shards" else _as_rejected(rows, threshold, f)
                    bounds = plan.bounds[kind]
                    dest = np.array([bisect.bisect_right(bounds, k) - 1 for k in rows["key"].to_pylist()])
                    for d in np.unique(dest):
                        buckets[(kind, int(d))].append(rows.take(np.flatnonzero(dest == d)))
        for (kind, d), tables in sorted(buckets.items()):
            path = out.path(f"{SPILL}/{kind}/{d:05d}/{i:05d}.parquet")
            out.fs.makedirs(path.rpartition("/")[0], exist_ok=True)
            with out.fs.open(path, "wb") as fh:
                pq.write_table(pa.concat_tables(tables), fh, compression="none")


def _buckets(out: OutputRoot, plan: _Plan, kind: str):
    """(name, rows sorted by key) per output file, freeing each bucket once it is read."""
    for d, expected in enumerate(plan.rows[kind]):
        folder = out.path(f"{SPILL}/{kind}/{d:05d}")
        tables = []
        for p in sorted(out.fs.glob(folder + "/*.parquet")):
            with out.fs.open(p, "rb") as fh:
                tables.append(pq.read_table(fh))
        t = pa.concat_tables(tables).sort_by("key") if tables else None
        if t is None or len(t) != expected:
            raise CapfiltError(f"{kind} file {d:05d} got {0 if t is None else len(t)} rows, planned {expected}: "
                               "the staging files changed while finalize ran; run it again")
        out.rm(folder, recursive=True)
        yield f"{d:05d}", t


def _write_tar(t: pa.Table, sink: HashSink):
    # Fixed member metadata (mtime 0, uid 0, no names) so the same rows give the same bytes.
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for batch in t.to_batches(max_chunksize=BATCH_ROWS):
            for r in batch.to_pylist():
                meta = {"key": r["key"], "url": r["url"], "web_text": r["web_text"],
                        "source_shard": r["source_shard"], "width": r["width"], "height": r["height"],
                        **{n: r[n] for n in LINEAGE},
                        "texts": [{"text": x, "origin": o, "itm": None if s is None else round(s, 4)}
                                  for x, o, s in zip(r["texts"], r["origins"], r["scores"])]}
                stem = sample_key(r["key"])
                for ext, data in ((image_ext(r["image"]), r["image"]), ("txt", r["texts"][0].encode()),
                                  ("json", json.dumps(meta, ensure_ascii=False).encode())):
                    info = tarfile.TarInfo(f"{stem}.{ext}")
                    info.size, info.mode = len(data), 0o444
                    tar.addfile(info, io.BytesIO(data))


def finalize(staging: str, out: str, *, rows_per_shard: int = 10000, params: dict, inputs: list[dict],
             models: list[dict], timings: dict, environment: dict | None = None,
             filesystem: fsspec.AbstractFileSystem | None = None,
             duplicates: str = "error", identity: dict | None = None, derived: dict | None = None) -> dict:
    """Publish the staging rows under `out` (local path or fsspec URL); returns the manifest.

    `filesystem`, when given, is used for both `staging` and `out`. `params`, `inputs`, `models`,
    `timings`, `identity` and `derived` go into the manifest as given, less credential-like fields. A dropped row's reason
    quotes the `threshold` (or `tau`) found in `params`. When every input has an integer `rows`,
    their sum must equal the staging rows. A key staged twice (a write repeated after a kill) is an
    error, unless `duplicates="first"`: then the copy in the first staging file by path is kept.
    """
    if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise CapfiltError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
    if duplicates not in ("error", "first"):
        raise CapfiltError(f"duplicates must be 'error' or 'first', got {duplicates!r}")
    start = time.perf_counter()
    sfs, sroot = _fs(staging, filesystem)
    root = OutputRoot(*_fs(out, filesystem))
    files = _staging_files(sfs, sroot, staging)
    plan = _plan(sfs, files, rows_per_shard, duplicates)  # read-only: a bad staging folder leaves `out` as it was
    counts = plan.counts
    declared = [i.get("rows") for i in inputs]
    if declared and all(isinstance(r, int) for r in declared) and sum(declared) != counts["rows_in"]:
        raise CapfiltError(f"rows do not reconcile: the inputs hold {sum(declared)} rows, staging has "
                           f"{counts['rows_in']}; some rows were lost or duplicated, rerun the graph")
    _begin(root)
    log.info("finalize: %d staging file(s), %s", len(files), counts)
    threshold = mf.find_param(params, "threshold", "tau")
    _spill(sfs, plan, root, threshold)

    shards, n_blip = [], 0
    with root.atomic("blip_json.json") as blip:
        blip.write(b"[")
        for name, t in _buckets(root, plan, "shards"):
            with root.atomic(f"shards/{name}.parquet") as pq_sink:
                pq.write_table(t, pq_sink, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            with root.atomic(f"shards/{name}.tar") as tar_sink:
                _write_tar(t, tar_sink)
            shards.append({"name": name, "rows": len(t), "parquet": f"shards/{name}.parquet",
                           "tar": f"shards/{name}.tar", "parquet_sha256": pq_sink.sha256,
                           "tar_sha256": tar_sink.sha256, "complete": True})
            for url, texts in zip(t["url"].to_pylist(), t["texts"].to_pylist()):
                for text in texts:
                    entry = json.dumps({"url": url, "caption": text}, ensure_ascii=False)
                    blip.write(((",\n" if n_blip else "\n") + entry).encode())
                    n_blip += 1
        blip.write(b"\n]\n")
    rejected = []
    for name, t in _buckets(root, plan, "rejected"):
        with root.atomic(f"rejected/{name}.parquet") as sink:
            pq.write_table(t, sink, compression="zstd", row_group_size=ROW_GROUP_ROWS * 10)
        rejected.append({"name": name, "rows": len(t), "parquet": f"rejected/{name}.parquet", "sha256": sink.sha256})
    root.prune("shards", {f"{s['name']}.{x}" for s in shards for x in ("parquet", "tar")})
    root.prune("rejected", {f"{r['name']}.parquet" for r in rejected})
    root.rm(root.path(SPILL), recursive=True)
    if not shards:
        log.warning("finalize: no row was kept; the dataset is empty")

    exports = {"blip_json": {"path": "blip_json.json", "entries": n_blip, "sha256": blip.sha256}}
    m = mf.build(inputs=inputs, models=models, params=params, counts=counts, shards=shards,
                 rejected=rejected, exports=exports, timings=timings, environment=environment,
                 identity=identity, derived=derived)
    text = card.render(m, schema=SHARD_SCHEMA, rejected_schema=REJECTED_SCHEMA, rows_per_shard=rows_per_shard,
                       threshold=threshold, seed=mf.find_param(m["params"], "seed"))
    with root.atomic("README.md") as sink:
        sink.write(text.encode())
    m["exports"]["card"] = {"path": "README.md", "sha256": sink.sha256}
    with root.atomic(mf.MANIFEST) as sink:  # last: its presence says the output is complete
        sink.write(mf.dumps(m))
    log.info("finalize: %d shard(s), %d kept, %d dropped, %d failed in %.1f s", len(shards), counts["kept"],
             counts["dropped"], counts["failed"], time.perf_counter() - start)
    return m


def read_shards(out: str, *, columns: list[str] | None = None,
                filesystem: fsspec.AbstractFileSystem | None = None) -> pa.Table:
    """The kept rows of the complete shards listed in `out`'s manifest (all in memory: for tests and
    small runs; pass `columns` to leave the image bytes out)."""
    m = mf.read(out, filesystem)
    fs, root = _fs(out, filesystem)
    tables = []
    for s in m["shards"]:
        if s.get("complete"):
            with fs.open(f"{root}/{s['parquet']}", "rb") as fh:
                tables.append(pq.read_table(fh, columns=columns))
    schema = pa.schema([SHARD_SCHEMA.field(c) for c in columns]) if columns else SHARD_SCHEMA
    return pa.concat_tables(tables) if tables else schema.empty_table()
