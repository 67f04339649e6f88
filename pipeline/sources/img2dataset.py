"""The img2dataset output folder as a source (webdataset or parquet output format).

img2dataset writes, per shard, a Parquet of every input row (status and error included) beside
the tar of the images that downloaded, and `NNNNN_stats.json` last. The graph reads those Parquet
files, so failed downloads stay in the data as `failed` rows, and fetches each image from its
shard's tar (or, for img2dataset's parquet output format, from the `jpg` column).
"""
from __future__ import annotations

import functools
import logging
import os
import tarfile
from collections import OrderedDict

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.errors import CapfiltError
from pipeline.checksum import sha256
from pipeline.safety import clean_text
from pipeline.schema import int_or_none, text_or_none
from pipeline.sources.base import Source, register
from pipeline import storage

log = logging.getLogger(__name__)


@register
class Img2datasetFolder(Source):
    name = "img2dataset"
    looks_like = "an img2dataset output folder (with NNNNN_stats.json beside its shards)"

    def detect(self, path: str) -> bool:
        fs, root = fsspec.core.url_to_fs(path)
        return not fs.isfile(root) and bool(fs.glob(root.rstrip("/") + "/*_stats.json"))

    def describe(self, path: str) -> list[dict]:
        """Each shard with checksums: sha256 of its row file, size and fsspec checksum of its tar."""
        out = []
        for parquet in shard_parquets(path):
            entry = {"shard": os.path.basename(parquet)[: -len(".parquet")], "parquet": parquet, "sha256": sha256(parquet)}
            fs, tar = fsspec.core.url_to_fs(_tar_of(parquet))
            if fs.exists(tar):
                entry.update(tar_bytes=fs.size(tar), tar_checksum=str(fs.checksum(tar)))
            out.append(entry)
        return out

    def count(self, path: str) -> int:
        total = 0
        for f in shard_parquets(path):
            fs, p = fsspec.core.url_to_fs(f)
            with fs.open(p, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def read(self, path: str, rows_per_block: int):
        return read_source(path, rows_per_block)

    def pairs(self, path: str) -> list[tuple[str, int]]:
        return [(part, len(_usable_rows(part))) for part in shard_parquets(path)]

    def read_pairs(self, part: str, start: int, stop: int) -> list[tuple[str, bytes, str]]:
        rows = _usable_rows(part)[start:stop]
        images = dict(_read_members(_tar_of(part), {key for key, _ in rows}))
        return [(key, images[key], text) for key, text in rows if key in images]

    def images(self, described: list[dict], wanted: dict[str, set[str]]) -> dict[str, bytes]:
        tars = {str(e["shard"]): _tar_of(e["parquet"]) for e in described
                if isinstance(e.get("parquet"), str) and e["parquet"].endswith(".parquet") and e.get("shard") is not None}
        out = {}
        for shard, keys in wanted.items():
            if shard not in tars:
                continue
            try:
                out.update(_read_members(tars[shard], set(keys)))
            except (OSError, tarfile.TarError) as err:
                log.info("no images of rows of %s: %s", tars[shard], err)
        return out


def _tar_of(parquet: str) -> str:
    return parquet[: -len(".parquet")] + ".tar"


@functools.lru_cache(maxsize=64)
def _usable_rows(part: str) -> tuple[tuple[str, str], ...]:
    """(key, text) of the rows of a shard that downloaded and have a text (read once per process:
    every training piece of the shard, every epoch, slices the same list)."""
    fs, p = fsspec.core.url_to_fs(part)
    with fs.open(p, "rb") as fh:
        table = pq.read_table(fh, columns=["key", "caption", "status"])
    return tuple((str(r["key"]), r["caption"]) for r in table.to_pylist()
                 if r["status"] == "success" and (r["caption"] or "").strip())


def shard_parquets(folder: str) -> list[str]:
    """The per-shard Parquet files of an img2dataset folder, as full fsspec paths."""
    fs, root = fsspec.core.url_to_fs(folder)
    files = sorted(f for f in fs.glob(root.rstrip("/") + "/*.parquet") if os.path.basename(f)[:5].isdigit())
    if not files:
        raise CapfiltError(f"{folder} holds no img2dataset shard Parquet files")
    return [fs.unstrip_protocol(f) if "file" not in fs.protocol else f for f in files]


def attach_images(batch: dict, filesystem: fsspec.AbstractFileSystem | None = None) -> pa.Table:
    """img2dataset shard rows -> contract rows, each image read from its shard's tar.

    Run as Ray tasks: failed downloads keep their reason in `error`; a missing or unreadable tar
    member fails its row, not the block. `filesystem` is the one the shard Parquet files were read
    with (their `path` column then holds paths on it, without the URL scheme).
    """
    n = len(batch["key"])
    images = np.empty(n, dtype=object)
    errors = np.empty(n, dtype=object)
    shards = np.array([os.path.basename(p).rsplit(".", 1)[0] for p in batch["path"]], dtype=object)
    for shard_path in sorted(set(batch["path"])):
        rows = [i for i in range(n) if batch["path"][i] == shard_path]
        _fill(shard_path, rows, batch, images, errors, filesystem)
    texts = batch.get("caption", [None] * n)
    columns = {  # explicit types: a block whose errors are all null must still be strings
        "key": pa.array([str(k) for k in batch["key"]], pa.string()),
        "url": pa.array([None if u is None else str(u) for u in batch["url"]], pa.string()),
        "web_text": pa.array(["" if t is None else clean_text(str(t)) for t in texts], pa.string()),
        "image": pa.array(list(images), pa.binary()),
        "source_shard": pa.array(list(shards), pa.string()),
        "error": pa.array(list(errors), pa.string()),
    }
    # lineage (DESIGN.md): the user's own key of the row (the URL list's `key` column, which our
    # download keeps as source_key) and the image's size before img2dataset resized it
    columns["source_key"] = pa.array([text_or_none(k) for k in batch.get("source_key", [None] * n)], pa.string())
    for name in ("original_width", "original_height"):
        columns[name] = pa.array([int_or_none(v) for v in batch.get(name, [None] * n)], pa.int32())
    return pa.table(columns)


def _fill(shard_path: str, rows: list[int], batch: dict, images: np.ndarray, errors: np.ndarray,
          filesystem: fsspec.AbstractFileSystem | None = None) -> None:
    ok = []
    for i in rows:
        if batch["status"][i] == "success":
            ok.append(i)
        else:
            errors[i] = f"download: {batch['error_message'][i] or batch['status'][i]}"
    if not ok:
        return
    if "jpg" in batch:  # img2dataset's parquet output format carries the bytes
        for i in ok:
            images[i] = batch["jpg"][i]
        return
    tar_path = _tar_of(shard_path)
    wanted = {str(batch["key"][i]): i for i in ok}
    try:
        for stem, data in _read_members(tar_path, set(wanted), filesystem):
            images[wanted.pop(stem)] = data
    except (FileNotFoundError, tarfile.TarError) as err:  # the shard's own fault: its rows fail
        for i in wanted.values():
            errors[i] = f"source: cannot read {os.path.basename(tar_path)}: {err}"
        return
    # any other OSError is the store failing (its retries spent): the task fails and so does the run,
    # which a rerun resumes; failing the rows would publish a passing outage as bad data for good
    for i in wanted.values():
        errors[i] = f"source: image missing from {os.path.basename(tar_path)}"


IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
# tar path -> {stem: (data offset, size)}: a shard is cut into several blocks, and the read tasks
# run in long-lived worker processes; the first block scans the tar, the others seek
_TAR_INDEX: "OrderedDict[str, dict[str, tuple[int, int]]]" = OrderedDict()
_TAR_INDEX_ENTRIES = 64


def _read_members(tar_path: str, stems: set[str], filesystem: fsspec.AbstractFileSystem | None = None):
    """(stem, image bytes) for each of `stems` found in the tar (a path on `filesystem`, or a URL)."""
    index = _TAR_INDEX.get(tar_path)
    with (filesystem.open(tar_path, "rb") if filesystem is not None else fsspec.open(tar_path, "rb")) as fh:
        if index is None:
            index = {}
            with tarfile.open(fileobj=fh, mode="r:") as tar:  # img2dataset writes plain tars: seekable
                for member in tar:
                    stem, _, ext = member.name.partition(".")
                    if ext in IMAGE_EXTENSIONS and member.isfile():
                        index[stem] = (member.offset_data, member.size)
                        if stem in stems:
                            yield stem, tar.extractfile(member).read()
            _TAR_INDEX[tar_path] = index
            while len(_TAR_INDEX) > _TAR_INDEX_ENTRIES:
                _TAR_INDEX.popitem(last=False)
            return
        _TAR_INDEX.move_to_end(tar_path)
        for stem in sorted(stems & index.keys(), key=lambda s: index[s][0]):
            offset, size = index[stem]
            fh.seek(offset)
            data = fh.read(size)
            if len(data) != size:
                raise tarfile.ReadError(f"{stem} is cut short ({len(data)} of {size} bytes): the tar changed while being read")
            yield stem, data


def read_source(folder: str, rows_per_block: int):
    """The contract rows of an img2dataset folder as a Ray dataset (file-based read: checkpointable).

    The shard Parquet files are small (no images), so Ray reads them as one block; cutting them
    into blocks of `rows_per_block` gives the actors parallel work and the job checkpoint its
    granularity (a block is the unit a resumed run skips).
    """
    import ray.data

    with storage.guard("listing the input shards of", folder):
        files = shard_parquets(folder)
    # an object store is read through this process's fsspec filesystem (endpoint, retries,
    # timeouts: pipeline/storage.py), handed to the read tasks; a local folder as Ray resolves it
    remote = storage.arrow_filesystem(folder)
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:  # Ray 2.60's V2 Parquet reader samples and plans with extra actors: ~1.5 s more start-up
        ds = ray.data.read_parquet(files, include_paths=True, filesystem=remote)
    finally:
        ctx.use_datasource_v2 = v2
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    return ds.map_batches(attach_images, batch_format="numpy", batch_size=None, zero_copy_batch=False,
                          fn_kwargs={"filesystem": storage.filesystem(folder)[0] if remote is not None else None})
