"""The sinks of the CapFilt graph: staging Parquet in, the published dataset out.

The Ray Data graph writes one staging row per input row (any file names, under `OUT/_staging/`).
`finalize` turns them into the output of DESIGN.md through the registered writers
(pipeline/writers: `shards/NNNNN.{parquet,tar}` of the kept rows sorted by key,
`rejected/NNNNN.parquet` of the dropped and failed rows with reasons, `blip_json.json`), then
writes `README.md` and, last, `manifest.json`, the completion marker.

Memory stays bounded by one staging file plus one output shard, not by the run:
1. plan: read only `key`, `status` and `kept_origins` of every staging file, check the rows
   reconcile (unique keys, known statuses, keys every writer can write), and cut the sorted keys
   into output files;
2. spill: read each staging file once, in batches, and write its rows into one bucket per output
   file under `OUT/_finalize_tmp/`;
3. write: per output file, read its bucket, sort by key and hand the rows to every writer.
Every file is written to a hidden temporary name and renamed when complete, so a reader never sees
a partial file; a rerun removes the old manifest first (the output is incomplete until the new one
lands), clears leftovers of an interrupted run and rewrites the same bytes.
"""
from __future__ import annotations

import bisect
import contextlib
import logging
import time
from collections import Counter, defaultdict
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from models.errors import CapfiltError
from pipeline import card, dedup as dd, manifest as mf, versions
from pipeline.outputs import OutputRoot
from pipeline.shard_rows import as_shard, cast
from pipeline.schema import DUPLICATE, FINGERPRINT, ORIGINS, STATUSES, Scoring, caption_column, web_column
from pipeline.writers.registry import WRITERS

log = logging.getLogger(__name__)

SPILL = "_finalize_tmp"
BATCH_ROWS = 256        # staging rows decoded at a time


def drop_reason(web_text: str | None, web_score: float | None, caption_scores: list | None, threshold=None,
                scorer: str = "itm") -> str:
    """Why a row that did not fail was dropped, in words: its scores against the threshold."""
    t = f"{threshold:g}" if isinstance(threshold, (int, float)) else "the threshold"
    web = (f"web text {scorer.upper()} {web_score:.2f} < {t}" if web_score is not None and web_score == web_score
           else "web text not scored" + ("" if web_text else " (empty)"))  # NaN: not scored
    scored = [s for s in caption_scores or [] if s is not None and s == s]
    if not caption_scores:
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


def _with_optional(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with the optional staging columns it lacks (the fingerprints: staging of a version
    before them, or made by hand) as nulls: such rows are never anyone's duplicate."""
    for name in FINGERPRINT:
        if name in schema.names and name not in table.column_names:
            table = table.append_column(schema.field(name), pa.nulls(len(table), schema.field(name).type))
    return table


@dataclass
class _Plan:
    files: list[str]
    counts: dict
    bounds: dict[str, list[str]]  # kind -> first key of each output file
    rows: dict[str, list[int]]    # kind -> rows of each output file
    skip: dict[int, np.ndarray]   # staging file -> row numbers of repeated copies to leave out
    copies: dict[int, dict[int, dd.Match]]  # staging file -> row number -> the image it copies
    diff: dict | None = None  # against the previous version (pipeline/versions.py)


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


def _plan(fs, files: list[str], rows_per_shard: int, duplicates: str, staging: pa.Schema, dedup=None,
          earlier=(), previous: tuple[str, set[str]] | None = None) -> _Plan:
    light = pa.schema([staging.field(c) for c in ("key", "status", "kept_origins", "width", "height",
                                                  "original_width", "original_height", *FINGERPRINT)])
    parts = []
    for i, f in enumerate(files):
        with fs.open(f, "rb") as fh:
            pfile = pq.ParquetFile(fh)
            missing = [c for c in staging.names if c not in pfile.schema_arrow.names and c not in FINGERPRINT]
            if missing:
                raise CapfiltError(f"staging file {f} lacks column(s) {', '.join(missing)}: it was not "
                                   "written by the CapFilt graph, or by an older version of it, or by a run "
                                   "with other scorers (filter.scorer, filter.compare)")
            present = [c for c in light.names if c in pfile.schema_arrow.names]
            t = cast(_with_optional(pfile.read(columns=present), light), light, f"staging file {f}")
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
    copies, is_copy = _copies(t, dedup, earlier)
    status = t["status"]  # checked above: no nulls
    counts = {s: int(pc.sum(pc.and_(pc.equal(status, s), pc.invert(is_copy))).as_py() or 0) for s in STATUSES}
    kept = t.filter(pc.and_(pc.equal(status, "kept"), pc.invert(is_copy)))
    rejected = t.filter(pc.or_(pc.not_equal(status, "kept"), is_copy))
    origins = Counter(pc.list_flatten(kept["kept_origins"]).to_pylist())
    if set(origins) - set(ORIGINS):
        raise CapfiltError(f"staging kept_origins holds {sorted(set(origins) - set(ORIGINS))}: "
                           f"only {ORIGINS} are known")
    kept_keys = kept["key"].to_pylist()
    for writer in WRITERS:  # keys every format can write, before anything is written
        writer.check(kept_keys)
    kb, kr = _cuts(kept["key"], rows_per_shard)
    rb, rr = _cuts(rejected["key"], rows_per_shard)
    within = sum(m.within is None for m in copies.values())
    counts = {"rows_in": len(t), **counts, "duplicates": len(copies), "texts_kept": {o: origins.get(o, 0) for o in ORIGINS},
              "duplicates_within_run": within, "duplicates_of_earlier_versions": len(copies) - within,
              "repeats_dropped": sum(map(len, skip.values()))}
    by_file: dict[int, dict[int, dd.Match]] = defaultdict(dict)
    for i, match in copies.items():
        by_file[t["file"][i].as_py()][t["row"][i].as_py()] = match
    diff = None
    if previous is not None:
        outcome = dict(zip(t["key"].to_pylist(), t["status"].to_pylist()))
        outcome.update({t["key"][i].as_py(): DUPLICATE for i in copies})
        diff = versions.diff(previous[1], outcome, previous[0])
    return _Plan(files, counts, {"shards": kb, "rejected": rb}, {"shards": kr, "rejected": rr},
                 {j: np.array(r) for j, r in skip.items()}, dict(by_file), diff)


def _copies(t: pa.Table, dedup, earlier) -> tuple[dict[int, dd.Match], pa.Array]:
    """The rows of `t` that copy another's image (pipeline/dedup.py), and a mask of them."""
    size = lambda w, h: pc.fill_null(pc.multiply(pc.cast(t[w], pa.int64()), pc.cast(t[h], pa.int64())), 0)  # noqa: E731
    pixels = pc.if_else(pc.is_null(t["original_width"]), size("width", "height"), size("original_width", "original_height"))
    rows = {c: t[c].to_pylist() for c in ("key", "status", *FINGERPRINT)}
    copies = dd.find({**rows, "pixels": pixels.to_pylist()}, dedup, earlier)
    mask = np.zeros(len(t), bool)
    mask[list(copies)] = True
    return copies, pa.array(mask)


def _as_rejected(t: pa.Table, scoring: Scoring, schema: pa.Schema, where: str, copies: list) -> pa.Table:
    """Dropped, failed and duplicate rows (`copies`: the dedup.Match of each row, None when it copies none)."""
    cols = t.select(["status", "error", "web_text", web_column(scoring.scorer), caption_column(scoring.scorer)]).to_pydict()
    reasons = [DUPLICATE if c else (e or "failed (no error recorded)") if s == "failed"
               else drop_reason(w, wi, ci, scoring.threshold, scoring.scorer)
               for c, s, e, w, wi, ci in zip(copies, *cols.values())]
    t = t.set_column(t.schema.get_field_index("status"), "status",
                     pa.array([DUPLICATE if c else s for c, s in zip(copies, cols["status"])], pa.string()))
    for name, part in (("duplicate_of", "of"), ("duplicate_in", "within"), ("duplicate_match", "how")):
        t = t.append_column(name, pa.array([getattr(c, part) if c else None for c in copies], pa.string()))
    return cast(t.append_column("reason", pa.array(reasons, pa.string())), schema, where)


def _spill(fs, plan: _Plan, out: OutputRoot, scoring: Scoring, lineage: dict | None = None):
    """Route every staging row to the bucket of its output file, one staging file at a time."""
    for i, f in enumerate(plan.files):
        buckets: dict[tuple[str, int], list[pa.Table]] = defaultdict(list)
        staging, copies = scoring.staging_schema(), plan.copies.get(i, {})
        with fs.open(f, "rb") as fh:
            row = 0
            pfile = pq.ParquetFile(fh)
            present = [c for c in staging.names if c in pfile.schema_arrow.names]
            for batch in pfile.iter_batches(batch_size=BATCH_ROWS, columns=present):
                t = _with_optional(pa.Table.from_batches([batch]), staging)
                numbers = np.arange(row, row + len(t))
                if i in plan.skip:
                    keep = ~np.isin(numbers, plan.skip[i])
                    t, numbers = t.filter(pa.array(keep)), numbers[keep]
                row += batch.num_rows
                copy = np.array([int(r) in copies for r in numbers], bool)
                is_kept = np.array([s == "kept" for s in t["status"].to_pylist()], bool) & ~copy
                for kind, rows in (("shards", t.filter(pa.array(is_kept))), ("rejected", t.filter(pa.array(~is_kept)))):
                    if not len(rows):
                        continue
                    rows = (as_shard(rows, scoring.shard_schema(), f, lineage) if kind == "shards"
                            else _as_rejected(rows, scoring, scoring.rejected_schema(), f,
                                              [copies.get(int(r)) for r in numbers[~is_kept]]))
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


class _Recorded(OutputRoot):
    """The output root, noting every file written through it (what a rerun must not prune)."""

    def __init__(self, root: OutputRoot):
        super().__init__(root.fs, root.root)
        self.written: set[str] = set()

    def atomic(self, rel: str):
        self.written.add(rel)
        return super().atomic(rel)


def _publish(root: _Recorded, plan: _Plan, scoring: Scoring) -> tuple[dict[str, list[dict]], dict]:
    """Every output file through every registered writer; (manifest entries per kind, exports)."""
    entries: dict[str, list[dict]] = {"shards": [], "rejected": []}
    writers = [cls(root, scoring) for cls in WRITERS]
    with contextlib.ExitStack() as stack:
        for w in writers:
            stack.enter_context(w)
        for kind in entries:
            for name, t in _buckets(root, plan, kind):
                entry = {"name": name, "rows": len(t)}
                fields = {}
                for w in writers:
                    if w.rows == kind:
                        fields.update(w.write(name, t))
                # paths first, then their hashes (the manifest's order before writers)
                entry.update({k: v for k, v in fields.items() if not k.endswith("sha256")})
                entry.update({k: v for k, v in fields.items() if k.endswith("sha256")})
                entries[kind].append({**entry, "complete": True} if kind == "shards" else entry)
    exports = {}
    for w in writers:
        exports.update(w.exports)
    return entries, exports


def finalize(staging: str, out: str, *, rows_per_shard: int, params: dict, inputs: list[dict], models: list[dict],
             timings: dict, scoring: Scoring = Scoring(), environment: dict | None = None,
             filesystem: fsspec.AbstractFileSystem | None = None,
             duplicates: str = "error", identity: dict | None = None, derived: dict | None = None,
             dedup=None, lineage: dict | None = None) -> dict:
    """Publish the staging rows under `out` (local path or fsspec URL); returns the manifest.

    `scoring` names the scorers whose columns the rows carry, the deciding one and its threshold
    (quoted in a dropped row's reason; recorded in the manifest). `filesystem`, when given, is used
    for both `staging` and `out`. `params`, `inputs`, `models`, `timings`, `identity` and `derived`
    go into the manifest as given, less credential-like fields. When every input has an integer
    `rows`, their sum must equal the staging rows. A key staged twice (a write repeated after a
    kill) is an error, unless `duplicates="first"`: then the copy in the first staging file by path
    is kept. `dedup` (the run's dedup section: exact, near, hash_size, max_distance, against) sends
    the copies of an image to rejected/ as duplicates (pipeline/dedup.py). `lineage` (round,
    previous, and what made the texts: models, scorer, threshold) goes into the manifest, with the
    diff against the `previous` version's output when one is named (pipeline/versions.py).
    """
    if not isinstance(rows_per_shard, int) or rows_per_shard < 1:
        raise CapfiltError(f"rows_per_shard must be a positive integer, got {rows_per_shard!r}")
    if duplicates not in ("error", "first"):
        raise CapfiltError(f"duplicates must be 'error' or 'first', got {duplicates!r}")
    start = time.perf_counter()
    sfs, sroot = _fs(staging, filesystem)
    root = _Recorded(OutputRoot(*_fs(out, filesystem)))
    files = _staging_files(sfs, sroot, staging)
    # read-only: a bad staging folder leaves `out` as it was
    earlier = dd.earlier_versions(list(dedup.against), dedup) if dedup is not None else []
    lineage = dict(lineage or {})
    previous = (lineage["previous"], versions.kept_keys(lineage["previous"])) if lineage.get("previous") else None
    plan = _plan(sfs, files, rows_per_shard, duplicates, scoring.staging_schema(), dedup, earlier, previous)
    counts = plan.counts
    declared = [i.get("rows") for i in inputs]
    if declared and all(isinstance(r, int) for r in declared) and sum(declared) != counts["rows_in"]:
        raise CapfiltError(f"rows do not reconcile: the inputs hold {sum(declared)} rows, staging has "
                           f"{counts['rows_in']}; some rows were lost or duplicated, rerun the graph")
    _begin(root)
    log.info("finalize: %d staging file(s), %s", len(files), counts)
    _spill(sfs, plan, root, scoring, lineage)
    entries, exports = _publish(root, plan, scoring)
    shards, rejected = entries["shards"], entries["rejected"]
    for folder in ("shards", "rejected"):  # files of an earlier run (e.g. with more shards) that this one did not write
        root.prune(folder, {rel.partition("/")[2] for rel in root.written if rel.startswith(folder + "/")})
    root.rm(root.path(SPILL), recursive=True)
    if not shards:
        log.warning("finalize: no row was kept; the dataset is empty")

    m = mf.build(inputs=inputs, models=models, params=params, scoring=scoring.record(), counts=counts, shards=shards,
                 rejected=rejected, exports=exports, timings=timings, environment=environment,
                 identity=identity, derived=derived,
                 lineage={**lineage, **({"diff": plan.diff} if plan.diff else {})} if lineage else None)
    text = card.render(m, schema=scoring.shard_schema(), rejected_schema=scoring.rejected_schema(),
                       rows_per_shard=rows_per_shard, scoring=scoring, seed=mf.find_param(m["params"], "seed"))
    with root.atomic("README.md") as sink:
        sink.write(text.encode())
    m["exports"]["card"] = {"path": "README.md", "sha256": sink.sha256}
    with root.atomic(mf.MANIFEST) as sink:  # last: its presence says the output is complete
        sink.write(mf.dumps(m))
    log.info("finalize: %d shard(s), %d kept, %d dropped, %d failed, %d duplicates in %.1f s", len(shards),
             counts["kept"], counts["dropped"], counts["failed"], counts["duplicates"], time.perf_counter() - start)
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
    full = (Scoring.from_record(m["scoring"]) if m.get("scoring") else Scoring()).shard_schema()
    schema = pa.schema([full.field(c) for c in columns]) if columns else full
    return pa.concat_tables(tables) if tables else schema.empty_table()
