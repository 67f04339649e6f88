"""The download stage: a URL list in, img2dataset's WebDataset shards out.

img2dataset does the fetching and resizing. Output, per shard: `{shard:05d}.tar` (KEY.jpg, KEY.txt,
KEY.json), `{shard:05d}.parquet` (one row per input row: status, error_message, sizes, sha256, our
columns) and `{shard:05d}_stats.json`, written last.

Keys: img2dataset names samples with its own key (shard index * 10^k + row), which is stable for
a given URL list and shard size and is what the tars and Ray's read_webdataset use; it is the
`key` of the data contract. A `key` column of the URL list (ours, e.g. the synthetic world's
`web_000123`) travels beside it as `source_key` in the parquet and in each KEY.json: img2dataset
writes its own `key` field, so ours has to change name to survive.
"""
from __future__ import annotations

import os

# albumentations (imported by img2dataset) asks the network for updates on import unless told not to.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import json
import logging
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from models.errors import CapfiltError

log = logging.getLogger(__name__)
SOURCE_KEY = "source_key"
# Columns img2dataset writes itself: a URL-list column of the same name would be overwritten.
_RESERVED = {"key", "status", "error_message", "width", "height", "original_width", "original_height", "sha256", "exif"}


@dataclass(frozen=True)
class DownloadStats:
    """Totals over the shards' `_stats.json` files."""
    count: int = 0
    successes: int = 0
    failed_to_download: int = 0
    failed_to_resize: int = 0
    shards: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # error message -> rows

    @property
    def failed(self) -> int:
        return self.failed_to_download + self.failed_to_resize


def read_stats(output_folder: str) -> DownloadStats:
    fs, root = fsspec.core.url_to_fs(output_folder)
    total: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    files = sorted(fs.glob(root.rstrip("/") + "/*_stats.json"))
    for f in files:
        with fs.open(f, "r") as fh:
            s = json.load(fh)
        total.update({k: s[k] for k in ("count", "successes", "failed_to_download", "failed_to_resize")})
        errors.update({k: v for k, v in s.get("status_dict", {}).items() if k != "success"})
    return DownloadStats(shards=len(files), errors=dict(errors), **total)


def read_url_list(path: str) -> pa.Table:
    """A URL list as a table (Parquet file or folder, or CSV/TSV), checked for what we need."""
    fs, p = fsspec.core.url_to_fs(str(path))
    if not fs.exists(p):
        raise CapfiltError(f"URL list {path} does not exist")
    try:
        if p.endswith((".csv", ".tsv")):
            with fs.open(p, "rb") as fh:
                delim = "\t" if p.endswith(".tsv") else ","
                table = pacsv.read_csv(fh, parse_options=pacsv.ParseOptions(delimiter=delim))
        else:
            table = pq.read_table(p, filesystem=fs)
    except (pa.ArrowInvalid, OSError) as err:
        raise CapfiltError(f"cannot read URL list {path} as Parquet or CSV: {err}") from err
    if "url" not in table.column_names:
        raise CapfiltError(f"URL list {path} has no 'url' column (columns: {', '.join(table.column_names) or 'none'})")
    if table.num_rows == 0:
        raise CapfiltError(f"URL list {path} has no rows")
    return table


def _stage(table: pa.Table, extra_columns: Sequence[str], folder: str) -> tuple[str, list[str]]:
    """Write the list img2dataset will read: url, caption, our key as source_key, extra columns."""
    missing = [c for c in extra_columns if c not in table.column_names]
    if missing:
        raise CapfiltError(f"URL list has no column(s) {', '.join(missing)} to keep")
    clash = sorted(set(extra_columns) & (_RESERVED | {SOURCE_KEY, "url", "caption"}))
    if clash:
        raise CapfiltError(f"cannot keep column(s) {', '.join(clash)}: img2dataset writes its own; rename them in the URL list")
    cols = {"url": table.column("url").cast(pa.string())}
    if "caption" in table.column_names:
        cols["caption"] = table.column("caption").cast(pa.string())
    if "key" in table.column_names:
        cols[SOURCE_KEY] = table.column("key").cast(pa.string())
    cols.update({c: table.column(c) for c in extra_columns})
    path = str(Path(folder) / "url_list.parquet")
    pq.write_table(pa.table(cols), path)
    keep = [c for c in cols if c not in ("url", "caption")]
    return path, keep


@contextmanager
def _signal_safe() -> Iterator[None]:
    # img2dataset installs a SIGINT handler, which Python allows only on the main thread; from any
    # other thread (an orchestrator's worker) skip it rather than fail.
    if threading.current_thread() is threading.main_thread():
        yield
        return
    import img2dataset  # noqa: F401 - loads the module below

    i2d_main = sys.modules["img2dataset.main"]  # the package's `main` attribute is a function of that name
    real = i2d_main.signal
    i2d_main.signal = SimpleNamespace(signal=lambda *a: None, SIGINT=signal.SIGINT)
    try:
        yield
    finally:
        i2d_main.signal = real


def download(url_list: str | Path, output_folder: str | Path, *, image_size: int = 64, resize_mode: str = "border",
             processes: int = 1, threads: int = 16, timeout: float = 10, retries: int = 0, shard_size: int = 10_000,
             encode_quality: int = 95, extra_columns: Sequence[str] = (), distributor: str = "multiprocessing") -> DownloadStats:
    """Download every URL of `url_list` into WebDataset shards under `output_folder` (local or fsspec URL).

    Incremental: shards that already have their `_stats.json` are skipped, so a killed download
    resumes by running it again with the same list and shard size. Every input row ends in the
    shards' parquet with a status (`success`, `failed_to_download`, `failed_to_resize`) and, on
    failure, the reason; the totals must add up to the rows in, or this raises.
    """
    table = read_url_list(str(url_list))
    if shard_size < 1 or processes < 1 or threads < 1 or timeout <= 0:
        raise CapfiltError("shard size, processes and threads must be >= 1 and the timeout > 0")
    from img2dataset import download as i2d_download  # heavy (cv2, albumentations, wandb): only when used

    out = str(output_folder)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="capfilt-urls-") as tmp, _signal_safe():
        staged, keep = _stage(table, extra_columns, tmp)
        i2d_download(
            url_list=staged, input_format="parquet", output_folder=out, output_format="webdataset",
            url_col="url", caption_col="caption" if "caption" in table.column_names else None,
            save_additional_columns=keep or None, image_size=image_size, resize_mode=resize_mode,
            encode_quality=encode_quality, processes_count=processes, thread_count=threads,
            timeout=timeout, retries=retries, number_sample_per_shard=shard_size, distributor=distributor,
            incremental_mode="incremental",
            enable_wandb=False,  # wandb would call home
            extract_exif=False,  # web EXIF can carry camera serials and GPS: not ours to ship
        )
    stats = read_stats(out)
    log.info("downloaded %d of %d rows into %d shard(s) at %s in %.1f s (%d failed)", stats.successes,
             table.num_rows, stats.shards, out, time.perf_counter() - t0, stats.failed)
    if stats.count != table.num_rows:
        raise CapfiltError(
            f"{out} accounts for {stats.count} of the URL list's {table.num_rows} rows: some shards failed, or the folder "
            "holds another list's shards. Run the same command again to resume, or use an empty output folder.")
    return stats
