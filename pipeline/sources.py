"""Sources: an img2dataset output folder (or a URL list, downloaded into one) as contract rows.

img2dataset writes, per shard, a Parquet of every input row (status and error included) beside
the tar of the images that downloaded. The graph reads those Parquet files, so failed downloads
stay in the data as `failed` rows, and fetches each image from its shard's tar (or, for
img2dataset's parquet output format, from the `jpg` column).
"""
from __future__ import annotations

import logging
import os
import tarfile
from collections import OrderedDict

import fsspec
import numpy as np
import pyarrow as pa

from models.errors import CapfiltError
from pipeline.safety import clean_text

log = logging.getLogger(__name__)

# what every stage after the source sees (DESIGN.md's web record)
COLUMNS = ("key", "url", "web_text", "image", "source_shard", "error", "source_key", "original_width", "original_height")


def detect_format(path: str) -> str:
    fs, root = fsspec.core.url_to_fs(path)
    if fs.isfile(root):
        if root.endswith((".parquet", ".csv", ".tsv")):
            return "urls"
        raise CapfiltError(f"input {path} is a file but not a URL list (.parquet, .csv or .tsv)")
    if fs.glob(root.rstrip("/") + "/*_stats.json"):
        return "img2dataset"
    raise CapfiltError(
        f"input {path} is neither a URL list nor an img2dataset output folder (no *_stats.json): "
        "download it with `capfilt download` or point input.path at the URL list"
    )


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


def text_or_none(value) -> str | None:
    return None if value is None or (isinstance(value, float) and value != value) else str(value)


def int_or_none(value) -> int | None:
    """An int column's cell as Ray hands it over: None, NaN (a null in a float array) or a number."""
    try:
        return None if value is None or value != value else int(value)
    except (TypeError, ValueError):
        return None


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
    tar_path = shard_path[: -len(".parquet")] + ".tar"
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


def read_source(folder: str, rows_per_block: int = 256):
    """The contract rows of an img2dataset folder as a Ray dataset (file-based read: checkpointable).

    The shard Parquet files are small (no images), so Ray reads them as one block; cutting them
    into blocks of `rows_per_block` gives the actors parallel work and the job checkpoint its
    granularity (a block is the unit a resumed run skips).
    """
    import ray.data

    from pipeline.storage import arrow_filesystem, filesystem, guard

    with guard("listing the input shards of", folder):
        files = shard_parquets(folder)
    # an object store is read through this process's fsspec filesystem (endpoint, retries,
    # timeouts: pipeline/storage.py), handed to the read tasks; a local folder as Ray resolves it
    remote = arrow_filesystem(folder)
    ctx = ray.data.DataContext.get_current()
    v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
    try:  # Ray 2.60's V2 Parquet reader samples and plans with extra actors: ~1.5 s more start-up
        ds = ray.data.read_parquet(files, include_paths=True, filesystem=remote)
    finally:
        ctx.use_datasource_v2 = v2
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    return ds.map_batches(attach_images, batch_format="numpy", batch_size=None, zero_copy_batch=False,
                          fn_kwargs={"filesystem": filesystem(folder)[0] if remote is not None else None})
