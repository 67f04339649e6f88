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

import fsspec
import numpy as np
import pyarrow as pa

from models.errors import CapfiltError

log = logging.getLogger(__name__)

# what every stage after the source sees (DESIGN.md's web record); source_key travels when present
COLUMNS = ("key", "url", "web_text", "image", "source_shard", "error")


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


def attach_images(batch: dict) -> pa.Table:
    """img2dataset shard rows -> contract rows, each image read from its shard's tar.

    Run as Ray tasks: failed downloads keep their reason in `error`; a missing or unreadable tar
    member fails its row, not the block.
    """
    n = len(batch["key"])
    images = np.empty(n, dtype=object)
    errors = np.empty(n, dtype=object)
    shards = np.array([os.path.basename(p).rsplit(".", 1)[0] for p in batch["path"]], dtype=object)
    for shard_path in sorted(set(batch["path"])):
        rows = [i for i in range(n) if batch["path"][i] == shard_path]
        _fill(shard_path, rows, batch, images, errors)
    texts = batch.get("caption", [None] * n)
    columns = {  # explicit types: a block whose errors are all null must still be strings
        "key": pa.array([str(k) for k in batch["key"]], pa.string()),
        "url": pa.array([None if u is None else str(u) for u in batch["url"]], pa.string()),
        "web_text": pa.array(["" if t is None else str(t) for t in texts], pa.string()),
        "image": pa.array(list(images), pa.binary()),
        "source_shard": pa.array(list(shards), pa.string()),
        "error": pa.array(list(errors), pa.string()),
    }
    if "source_key" in batch:
        columns["source_key"] = pa.array([None if k is None else str(k) for k in batch["source_key"]], pa.string())
    return pa.table(columns)


def _fill(shard_path: str, rows: list[int], batch: dict, images: np.ndarray, errors: np.ndarray) -> None:
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
        with fsspec.open(tar_path, "rb") as fh, tarfile.open(fileobj=fh, mode="r:*") as tar:
            for member in tar:
                stem, _, ext = member.name.partition(".")
                if stem in wanted and ext in ("jpg", "jpeg", "png", "webp"):
                    images[wanted.pop(stem)] = tar.extractfile(member).read()
    except (OSError, tarfile.TarError) as err:
        for i in wanted.values():
            errors[i] = f"source: cannot read {os.path.basename(tar_path)}: {err}"
        return
    for i in wanted.values():
        errors[i] = f"source: image missing from {os.path.basename(tar_path)}"


def read_source(folder: str, rows_per_block: int = 256):
    """The contract rows of an img2dataset folder as a Ray dataset (file-based read: checkpointable).

    The shard Parquet files are small (no images), so Ray reads them as one block; cutting them
    into blocks of `rows_per_block` gives the actors parallel work and the job checkpoint its
    granularity (a block is the unit a resumed run skips).
    """
    import ray.data

    ds = ray.data.read_parquet(shard_parquets(folder), include_paths=True)
    ds = ds.repartition(target_num_rows_per_block=rows_per_block)
    return ds.map_batches(attach_images, batch_format="numpy", batch_size=None, zero_copy_batch=False)
